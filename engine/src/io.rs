//! Atomic file writes: a temporary file beside the target, fsynced, then
//! renamed over it, so a reader sees the old file or the whole new one.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use crate::{Error, Result};

/// Buffer size of [`AtomicFile`]'s writer.
const BUFFER: usize = 1 << 20;

/// A file being written that appears at its path only on [`AtomicFile::commit`].
/// Dropped without committing, it leaves nothing behind.
pub struct AtomicFile {
    target: PathBuf,
    out: BufWriter<NamedTempFile>,
}

impl AtomicFile {
    /// Starts writing a new version of `target` (its folder must exist).
    pub fn create(target: impl AsRef<Path>) -> Result<Self> {
        let target = target.as_ref().to_path_buf();
        let dir = parent_dir(&target);
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut builder = tempfile::Builder::new();
        let prefix = format!(".{name}.");
        builder.prefix(&prefix).suffix(".tmp");
        // A replaced file keeps its mode; a new one gets the usual 0666 less
        // the umask (tempfile's own default, 0600, would hide it from others).
        match std::fs::metadata(&target) {
            Ok(m) => {
                builder.permissions(m.permissions());
            }
            #[cfg(unix)]
            Err(_) => {
                use std::os::unix::fs::PermissionsExt;
                builder.permissions(std::fs::Permissions::from_mode(0o666));
            }
            #[cfg(not(unix))]
            Err(_) => {}
        }
        let tmp = builder
            .tempfile_in(dir)
            .map_err(|e| Error::io(&target, e))?;
        Ok(AtomicFile {
            target,
            out: BufWriter::with_capacity(BUFFER, tmp),
        })
    }

    /// The path the file will have.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Appends bytes.
    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all(bytes)
            .map_err(|e| Error::io(&self.target, e))
    }

    /// Flushes, fsyncs, renames into place and fsyncs the folder.
    pub fn commit(self) -> Result<()> {
        let target = self.target;
        let tmp = self
            .out
            .into_inner()
            .map_err(|e| Error::io(&target, e.into_error()))?;
        tmp.as_file()
            .sync_all()
            .map_err(|e| Error::io(&target, e))?;
        tmp.persist(&target)
            .map_err(|e| Error::io(&target, e.error))?;
        sync_dir(parent_dir(&target)).map_err(|e| Error::io(&target, e))
    }
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(path)?;
    f.write_all(bytes)?;
    f.commit()
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes a rename in `dir` durable. Folders cannot be fsynced on Windows,
/// where the rename is already durable once it returns.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    if cfg!(unix) {
        File::open(dir)?.sync_all()
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appears_only_on_commit_and_drop_cleans_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("x.bin");
        std::fs::write(&target, b"old").expect("write");
        let mut f = AtomicFile::create(&target).expect("create");
        f.write_all(b"new contents").expect("write");
        assert_eq!(std::fs::read(&target).expect("read"), b"old");
        f.commit().expect("commit");
        assert_eq!(std::fs::read(&target).expect("read"), b"new contents");

        let mut g = AtomicFile::create(&target).expect("create");
        g.write_all(b"abandoned").expect("write");
        drop(g);
        assert_eq!(std::fs::read(&target).expect("read"), b"new contents");
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("ls").count(),
            1,
            "temp file removed"
        );
    }

    #[cfg(unix)]
    #[test]
    fn new_files_follow_the_umask_and_replaced_files_keep_their_mode() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        let dir = tempfile::tempdir().expect("tempdir");
        let fresh = dir.path().join("fresh");
        write_atomic(&fresh, b"x").expect("write");
        // What File::create gives under this process's umask.
        let plain = dir.path().join("plain");
        std::fs::File::create(&plain).expect("create");
        assert_eq!(mode(&fresh), mode(&plain));

        let kept = dir.path().join("kept");
        std::fs::write(&kept, b"old").expect("write");
        std::fs::set_permissions(&kept, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        write_atomic(&kept, b"new").expect("write");
        assert_eq!(mode(&kept), 0o640);
    }
}

//! The object store: content-addressed objects in Git LFS's local layout,
//! `<lfs dir>/objects/ab/cd/abcd…` named by the SHA-256 of their bytes, so
//! that git-lfs (and any LFS server) can move them.
//!
//! Objects are written to `<lfs dir>/tmp` and renamed into place, so a
//! reader (or a process killed mid-write) never sees part of one. Every
//! object is verified against its name: hashed when we write it, and hashed
//! on its first read otherwise (one git-lfs fetched, say). Each verified
//! object is recorded in [`Verified`]'s log with its file's identity, and a
//! later read of the same, untouched file skips the hash (see
//! docs/transport.md, "Verification").

use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::verified::Verified;

/// An object id: lowercase hex SHA-256 of the object's bytes.
pub type Oid = String;

/// What can go wrong with an object.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object is not in the local store.
    #[error("object {oid} is missing (not in {})", path.display())]
    Missing {
        /// The object.
        oid: Oid,
        /// Where it should be.
        path: PathBuf,
    },
    /// The object's bytes do not hash to its name.
    #[error("object {oid} is corrupt: its bytes hash to {actual} ({})", path.display())]
    Corrupt {
        /// The object.
        oid: Oid,
        /// What its bytes hash to.
        actual: Oid,
        /// Its file.
        path: PathBuf,
    },
    /// The object has the wrong size.
    #[error("object {oid} has {actual} bytes where the manifest says {expected} ({})", path.display())]
    WrongSize {
        /// The object.
        oid: Oid,
        /// Size recorded in the manifest.
        expected: u64,
        /// Size on disk.
        actual: u64,
        /// Its file.
        path: PathBuf,
    },
    /// A name that is not a SHA-256 (a hostile or damaged manifest).
    #[error("`{0}` is not an object id (64 lowercase hex digits)")]
    BadOid(String),
    /// An operating-system error.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |error| StoreError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> Oid {
    hex(&Sha256::digest(bytes))
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Whether `oid` looks like a SHA-256 object id.
pub fn is_oid(oid: &str) -> bool {
    oid.len() == 64
        && oid
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Where objects go: the receiving side of cleaning a checkpoint.
pub trait ObjectSink: Sync {
    /// Stores `bytes`, whose SHA-256 is `oid`, unless already present.
    /// Returns whether new bytes were written.
    fn put(&self, oid: &str, bytes: &[u8]) -> Result<bool, StoreError>;

    /// Hashes `bytes` and stores them unless already present; returns their
    /// id and whether new bytes were written. A store may write while it
    /// hashes.
    fn hash_and_put(&self, bytes: &[u8]) -> Result<(Oid, bool), StoreError> {
        let oid = sha256_hex(bytes);
        let new = self.put(&oid, bytes)?;
        Ok((oid, new))
    }
}

/// Objects from this size up are written to a temporary file while they
/// are hashed (two cores at once), then renamed to their name or dropped
/// if the store had them.
const WRITE_WHILE_HASHING: usize = 1 << 20;

/// A sink that stores nothing: computing a manifest without side effects
/// (`git theta status`).
pub struct DryRun;

impl ObjectSink for DryRun {
    fn put(&self, _oid: &str, _bytes: &[u8]) -> Result<bool, StoreError> {
        Ok(false)
    }
}

/// A Git LFS local object store.
#[derive(Clone, Debug)]
pub struct Store {
    lfs_dir: PathBuf,
    verify: bool,
    /// Objects already verified (`None`: hash on every read).
    verified: Option<Arc<Verified>>,
}

impl Store {
    /// The store rooted at an LFS storage folder (usually `.git/lfs`).
    /// Objects verified once are not hashed again while their file is
    /// unchanged, unless `THETA_VERIFY_OBJECTS=always`.
    pub fn new(lfs_dir: impl Into<PathBuf>) -> Store {
        let lfs_dir = lfs_dir.into();
        let always = std::env::var("THETA_VERIFY_OBJECTS").is_ok_and(|v| v == "always");
        let verified = (!always).then(|| Arc::new(Verified::new(&lfs_dir)));
        Store {
            lfs_dir,
            verify: true,
            verified,
        }
    }

    /// The same store, hashing every object on every read (no record).
    pub fn always_hashing(mut self) -> Store {
        self.verified = None;
        self
    }

    /// The same store, with [`Store::get`] checking sizes but not hashes:
    /// for read-only reports (`git theta diff` with `THETA_DIFF_VERIFY=0`)
    /// that trade the integrity check for speed. Never used to rebuild files.
    pub fn without_hash_check(mut self) -> Store {
        self.verify = false;
        self
    }

    /// The LFS storage folder.
    pub fn lfs_dir(&self) -> &Path {
        &self.lfs_dir
    }

    /// Where object `oid` lives (whether or not it exists).
    pub fn path(&self, oid: &str) -> Result<PathBuf, StoreError> {
        if !is_oid(oid) {
            return Err(StoreError::BadOid(oid.to_owned()));
        }
        Ok(self
            .lfs_dir
            .join("objects")
            .join(&oid[0..2])
            .join(&oid[2..4])
            .join(oid))
    }

    /// Whether object `oid` is present (not verified).
    pub fn contains(&self, oid: &str) -> bool {
        self.path(oid).map(|p| p.is_file()).unwrap_or(false)
    }

    /// Reads object `oid`, checking its size and (unless
    /// [`Store::without_hash_check`]) its hash.
    pub fn get(&self, oid: &str, size: u64) -> Result<Vec<u8>, StoreError> {
        let path = self.path(oid)?;
        let mut file = fs::File::open(&path).map_err(|e| missing_or_io(oid, &path, e))?;
        let meta = file.metadata().map_err(io(&path))?;
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        std::io::Read::read_to_end(&mut file, &mut bytes).map_err(io(&path))?;
        self.check(oid, size, &path, &meta, &bytes)?;
        Ok(bytes)
    }

    /// Maps object `oid` into memory, checking its size and (unless
    /// [`Store::without_hash_check`]) its hash: reading without copying,
    /// for readers that only look at the bytes (`git theta diff`).
    pub fn map(&self, oid: &str, size: u64) -> Result<memmap2::Mmap, StoreError> {
        let path = self.path(oid)?;
        let file = fs::File::open(&path).map_err(|e| missing_or_io(oid, &path, e))?;
        // SAFETY: objects are immutable once renamed into place (they are
        // named by their hash and never written again); a store damaged
        // underneath us is caught by the checks below.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io(&path))?;
        let meta = file.metadata().map_err(io(&path))?;
        self.check(oid, size, &path, &meta, &map)?;
        Ok(map)
    }

    /// Checks an object's size and, unless disabled or recorded as verified
    /// with the same file identity (`meta`, of the open file), its hash.
    fn check(
        &self,
        oid: &str,
        size: u64,
        path: &Path,
        meta: &fs::Metadata,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        if bytes.len() as u64 != size {
            return Err(StoreError::WrongSize {
                oid: oid.to_owned(),
                expected: size,
                actual: bytes.len() as u64,
                path: path.to_path_buf(),
            });
        }
        if !self.verify
            || self
                .verified
                .as_ref()
                .is_some_and(|v| v.contains(oid, meta))
        {
            return Ok(());
        }
        let actual = sha256_hex(bytes);
        if actual != oid {
            return Err(StoreError::Corrupt {
                oid: oid.to_owned(),
                actual,
                path: path.to_path_buf(),
            });
        }
        if let Some(v) = &self.verified {
            v.record(oid, meta);
        }
        Ok(())
    }
}

/// An error opening object `oid`: missing, or another I/O error.
fn missing_or_io(oid: &str, path: &Path, error: std::io::Error) -> StoreError {
    if error.kind() == ErrorKind::NotFound {
        StoreError::Missing {
            oid: oid.to_owned(),
            path: path.to_path_buf(),
        }
    } else {
        io(path)(error)
    }
}

impl Store {
    /// A temporary file in `<lfs dir>/tmp` holding `bytes`.
    fn write_tmp(&self, bytes: &[u8]) -> Result<tempfile::NamedTempFile, StoreError> {
        let tmp_dir = self.lfs_dir.join("tmp");
        fs::create_dir_all(&tmp_dir).map_err(io(&tmp_dir))?;
        let mut tmp = tempfile::Builder::new()
            .prefix("theta-")
            .tempfile_in(&tmp_dir)
            .map_err(io(&tmp_dir))?;
        tmp.write_all(bytes).map_err(io(tmp.path()))?;
        Ok(tmp)
    }

    /// Renames a temporary file holding object `oid` into place and records
    /// it as verified.
    fn publish(
        &self,
        oid: &str,
        path: &Path,
        tmp: tempfile::NamedTempFile,
    ) -> Result<(), StoreError> {
        let dir = path.parent().unwrap_or(&self.lfs_dir);
        fs::create_dir_all(dir).map_err(io(dir))?;
        // Like git-lfs, objects are renamed into place without an fsync:
        // a killed process leaves the old state or the whole object.
        let file = tmp.persist(path).map_err(|e| io(path)(e.error))?;
        if let Some(v) = &self.verified {
            // `oid` is the hash of the bytes the file now holds; its
            // identity is read after the rename (which changes its ctime).
            if let Ok(meta) = file.metadata() {
                v.record(oid, &meta);
            }
        }
        Ok(())
    }
}

impl ObjectSink for Store {
    fn put(&self, oid: &str, bytes: &[u8]) -> Result<bool, StoreError> {
        let path = self.path(oid)?;
        if path.is_file() {
            return Ok(false);
        }
        let tmp = self.write_tmp(bytes)?;
        self.publish(oid, &path, tmp)?;
        Ok(true)
    }

    fn hash_and_put(&self, bytes: &[u8]) -> Result<(Oid, bool), StoreError> {
        if bytes.len() < WRITE_WHILE_HASHING {
            let oid = sha256_hex(bytes);
            let new = self.put(&oid, bytes)?;
            return Ok((oid, new));
        }
        let (oid, tmp) = rayon::join(|| sha256_hex(bytes), || self.write_tmp(bytes));
        let path = self.path(&oid)?;
        if path.is_file() {
            // Already stored: the temporary file is removed when dropped.
            return Ok((oid, false));
        }
        self.publish(&oid, &path, tmp?)?;
        Ok((oid, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn verified_objects_are_not_hashed_again_until_their_file_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path().join("lfs"));
        let data = b"some tensor bytes";
        let oid = sha256_hex(data);
        // An object that arrived by another way (git-lfs): hashed on its
        // first read, then recorded.
        let path = store.path(&oid).expect("path");
        std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
        std::fs::write(&path, b"some tensor bytez").expect("corrupt copy");
        assert!(matches!(
            store.get(&oid, data.len() as u64),
            Err(StoreError::Corrupt { .. })
        ));
        std::fs::remove_file(&path).expect("rm");
        std::fs::write(&path, data).expect("good copy");
        assert_eq!(store.get(&oid, data.len() as u64).expect("get"), data);
        let log = dir.path().join("lfs/theta/verified");
        let text = std::fs::read_to_string(&log).expect("log written");
        assert!(text.starts_with(&oid), "{text}");
        // Another process's store trusts the record: flipping a byte
        // without touching the file's identity is not seen (the documented
        // limit) ...
        let meta = std::fs::metadata(&path).expect("stat");
        let mut bytes = data.to_vec();
        bytes[0] ^= 1;
        std::fs::write(&path, &bytes).expect("flip");
        let f = std::fs::File::options()
            .write(true)
            .open(&path)
            .expect("open");
        f.set_modified(meta.modified().expect("mtime"))
            .expect("keep mtime");
        let fresh = Store::new(dir.path().join("lfs"));
        // ... unless the change time moved (it does on a write, unless the
        // write fell within the same clock tick):
        let now = std::fs::metadata(&path).expect("stat");
        let same = {
            use std::os::unix::fs::MetadataExt;
            (now.ctime(), now.ctime_nsec()) == (meta.ctime(), meta.ctime_nsec())
        };
        assert_eq!(fresh.get(&oid, data.len() as u64).is_ok(), same);
        // A store that always hashes sees it.
        assert!(matches!(
            fresh.always_hashing().get(&oid, data.len() as u64),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn put_get_and_detects_missing_and_corrupt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path().join("lfs"));
        let data = b"hello tensors";
        let oid = sha256_hex(data);
        assert!(store.put(&oid, data).expect("put"));
        assert!(!store.put(&oid, data).expect("put again"), "stored once");
        assert_eq!(store.get(&oid, data.len() as u64).expect("get"), data);
        let path = store.path(&oid).expect("path");
        assert!(path.ends_with(format!("objects/{}/{}/{oid}", &oid[..2], &oid[2..4])));

        assert_eq!(&store.map(&oid, data.len() as u64).expect("map")[..], data);

        // Rewritten in place: a new modification time, so the record of
        // the write no longer applies and the hash is checked again.
        std::fs::write(&path, b"hello tensorz").expect("corrupt it");
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(std::time::SystemTime::UNIX_EPOCH))
            .expect("touch");
        assert!(matches!(
            store.map(&oid, data.len() as u64),
            Err(StoreError::Corrupt { .. })
        ));
        let unchecked = store.clone().without_hash_check();
        assert_eq!(
            &unchecked.map(&oid, data.len() as u64).expect("map")[..],
            b"hello tensorz",
            "sizes only"
        );
        assert!(matches!(
            unchecked.map(&oid, 3),
            Err(StoreError::WrongSize { .. })
        ));
        assert!(matches!(
            store.get(&oid, data.len() as u64),
            Err(StoreError::Corrupt { .. })
        ));
        std::fs::remove_file(&path).expect("rm");
        assert!(matches!(
            store.get(&oid, data.len() as u64),
            Err(StoreError::Missing { .. })
        ));
        assert!(matches!(
            store.get("../../etc/passwd", 1),
            Err(StoreError::BadOid(_))
        ));
    }
}

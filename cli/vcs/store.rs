//! The object store: content-addressed objects in Git LFS's local layout,
//! `<lfs dir>/objects/ab/cd/abcd…` named by the SHA-256 of their bytes, so
//! that git-lfs (and any LFS server) can move them.
//!
//! Objects are written to `<lfs dir>/tmp` and renamed into place, so a
//! reader (or a process killed mid-write) never sees part of one; they are
//! verified against their name whenever they are read.

use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

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
pub trait ObjectSink {
    /// Stores `bytes`, whose SHA-256 is `oid`, unless already present.
    /// Returns whether new bytes were written.
    fn put(&self, oid: &str, bytes: &[u8]) -> Result<bool, StoreError>;
}

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
}

impl Store {
    /// The store rooted at an LFS storage folder (usually `.git/lfs`).
    pub fn new(lfs_dir: impl Into<PathBuf>) -> Store {
        Store {
            lfs_dir: lfs_dir.into(),
            verify: true,
        }
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
        let bytes = fs::read(&path).map_err(|e| missing_or_io(oid, &path, e))?;
        self.check(oid, size, &path, &bytes)?;
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
        self.check(oid, size, &path, &map)?;
        Ok(map)
    }

    /// Checks an object's size and, unless disabled, its hash.
    fn check(&self, oid: &str, size: u64, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        if bytes.len() as u64 != size {
            return Err(StoreError::WrongSize {
                oid: oid.to_owned(),
                expected: size,
                actual: bytes.len() as u64,
                path: path.to_path_buf(),
            });
        }
        if self.verify {
            let actual = sha256_hex(bytes);
            if actual != oid {
                return Err(StoreError::Corrupt {
                    oid: oid.to_owned(),
                    actual,
                    path: path.to_path_buf(),
                });
            }
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

impl ObjectSink for Store {
    fn put(&self, oid: &str, bytes: &[u8]) -> Result<bool, StoreError> {
        let path = self.path(oid)?;
        if path.is_file() {
            return Ok(false);
        }
        let tmp_dir = self.lfs_dir.join("tmp");
        fs::create_dir_all(&tmp_dir).map_err(io(&tmp_dir))?;
        let dir = path.parent().unwrap_or(&self.lfs_dir);
        fs::create_dir_all(dir).map_err(io(dir))?;
        let mut tmp = tempfile::Builder::new()
            .prefix("theta-")
            .tempfile_in(&tmp_dir)
            .map_err(io(&tmp_dir))?;
        tmp.write_all(bytes).map_err(io(tmp.path()))?;
        // Like git-lfs, objects are renamed into place without an fsync:
        // a killed process leaves the old state or the whole object.
        tmp.persist(&path).map_err(|e| io(&path)(e.error))?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

        std::fs::write(&path, b"hello tensorz").expect("corrupt it");
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

//! The record of verified objects: which objects of a store have been
//! checked against their SHA-256, and the identity their file had then, so
//! that reading the same, untouched file again can skip the hash.
//!
//! An object is recorded when we write it (its name is the hash of the bytes
//! we wrote) or when a read has hashed it. The identity is the file's
//! device, inode, size, modification and change times: replacing the file,
//! truncating it, or writing to it changes at least one of them, and the
//! record then no longer applies, so the next read hashes the object again.
//! What the identity cannot see is a change that keeps all five (bits
//! flipped by the disk, or an in-place rewrite within one tick of the
//! filesystem's clock); `THETA_VERIFY_OBJECTS=always` hashes on every read,
//! and `git lfs fsck` checks a whole store.
//!
//! The record is an append-only text log, `<lfs dir>/theta/verified`, one
//! line per object: `OID SIZE DEV INO MTIME_NS CTIME_NS`. Each line is one
//! `write` on a file opened for appending, so processes appending at once
//! do not interleave; a torn or unreadable line is ignored (its object is
//! just hashed again). The log is rewritten without stale lines when it has
//! grown to more than twice its live entries. Failing to read or write it
//! is never an error: it only costs hashing.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Lines past which a log with more than twice as many lines as objects is
/// rewritten.
const COMPACT_AFTER: usize = 4096;

/// What identifies one state of an object's file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    size: u64,
    dev: u64,
    ino: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Stamp {
    #[cfg(unix)]
    fn of(meta: &fs::Metadata) -> Option<Stamp> {
        use std::os::unix::fs::MetadataExt;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Some(Stamp {
            size: meta.len(),
            dev: meta.dev(),
            ino: meta.ino(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        })
    }

    /// Elsewhere there is no inode or change time to go by: always hash.
    #[cfg(not(unix))]
    fn of(_meta: &fs::Metadata) -> Option<Stamp> {
        None
    }

    fn line(&self, oid: &str) -> String {
        format!(
            "{oid} {} {} {} {} {}\n",
            self.size, self.dev, self.ino, self.mtime_ns, self.ctime_ns
        )
    }

    fn parse(line: &str) -> Option<(&str, Stamp)> {
        let mut f = line.split(' ');
        let oid = f.next().filter(|o| super::store::is_oid(o))?;
        let stamp = Stamp {
            size: f.next()?.parse().ok()?,
            dev: f.next()?.parse().ok()?,
            ino: f.next()?.parse().ok()?,
            mtime_ns: f.next()?.parse().ok()?,
            ctime_ns: f.next()?.parse().ok()?,
        };
        f.next().is_none().then_some((oid, stamp))
    }
}

/// The verified objects of one store, loaded on first use.
#[derive(Debug)]
pub struct Verified {
    log: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// `None` until the log is read.
    known: Option<HashMap<String, Stamp>>,
    /// The log, open for appending.
    appender: Option<File>,
    /// Writing failed once (a read-only store): stop trying.
    read_only: bool,
}

impl Verified {
    /// The record of the store at `lfs_dir`.
    pub fn new(lfs_dir: &Path) -> Verified {
        Verified {
            log: lfs_dir.join("theta").join("verified"),
            state: Mutex::new(State::default()),
        }
    }

    /// Whether `oid` was verified while its file looked exactly as `meta`
    /// (the metadata of the open file) says.
    pub fn contains(&self, oid: &str, meta: &fs::Metadata) -> bool {
        let Some(stamp) = Stamp::of(meta) else {
            return false;
        };
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        state.known(&self.log).get(oid) == Some(&stamp)
    }

    /// Records that `oid` hashes to its name while its file looks as `meta`
    /// says.
    pub fn record(&self, oid: &str, meta: &fs::Metadata) {
        let Some(stamp) = Stamp::of(meta) else {
            return;
        };
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if state.known(&self.log).get(oid) == Some(&stamp) {
            return;
        }
        state
            .known
            .get_or_insert_with(HashMap::new)
            .insert(oid.to_owned(), stamp);
        if state.read_only {
            return;
        }
        if state.appender.is_none() {
            state.appender = self
                .log
                .parent()
                .and_then(|dir| fs::create_dir_all(dir).ok())
                .and_then(|()| {
                    OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&self.log)
                        .ok()
                });
        }
        let line = stamp.line(oid);
        let written = state
            .appender
            .as_mut()
            .is_some_and(|f| f.write_all(line.as_bytes()).is_ok());
        if !written {
            state.read_only = true;
            state.appender = None;
        }
    }
}

impl State {
    fn known(&mut self, log: &Path) -> &HashMap<String, Stamp> {
        self.known.get_or_insert_with(|| load(log))
    }
}

/// Reads the log (an absent or unreadable one is empty), compacting it when
/// it has mostly stale lines.
fn load(log: &Path) -> HashMap<String, Stamp> {
    let Ok(text) = fs::read(log) else {
        return HashMap::new();
    };
    let text = String::from_utf8_lossy(&text);
    let mut known = HashMap::new();
    let mut lines = 0;
    // Only whole lines: the last one may be a torn append.
    for line in text
        .split_inclusive('\n')
        .filter_map(|l| l.strip_suffix('\n'))
    {
        lines += 1;
        if let Some((oid, stamp)) = Stamp::parse(line) {
            known.insert(oid.to_owned(), stamp);
        }
    }
    if lines > COMPACT_AFTER && lines > 2 * known.len() {
        compact(log, &known);
    }
    known
}

/// Rewrites the log with one line per object (temp file and rename; a
/// record appended meanwhile by another process may be lost, which only
/// costs a hash).
fn compact(log: &Path, known: &HashMap<String, Stamp>) {
    let Some(dir) = log.parent() else {
        return;
    };
    let Ok(mut tmp) = tempfile::Builder::new()
        .prefix("verified-")
        .tempfile_in(dir)
    else {
        return;
    };
    let mut text = String::new();
    for (oid, stamp) in known {
        text.push_str(&stamp.line(oid));
    }
    if tmp.write_all(text.as_bytes()).is_ok() {
        let _ = tmp.persist(log);
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn meta(path: &Path) -> fs::Metadata {
        fs::metadata(path).expect("stat")
    }

    #[test]
    fn a_record_holds_while_the_file_is_untouched_and_survives_processes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("obj");
        fs::write(&file, b"bytes").expect("write");
        let oid = "a".repeat(64);
        let v = Verified::new(dir.path());
        assert!(!v.contains(&oid, &meta(&file)));
        v.record(&oid, &meta(&file));
        assert!(v.contains(&oid, &meta(&file)));
        assert!(!v.contains(&"b".repeat(64), &meta(&file)), "another object");
        // A new reader (another process) reads the log.
        assert!(Verified::new(dir.path()).contains(&oid, &meta(&file)));

        // Rewritten in place with another modification time: not trusted.
        fs::write(&file, b"bytez").expect("rewrite");
        let f = File::options().write(true).open(&file).expect("open");
        f.set_modified(std::time::SystemTime::UNIX_EPOCH)
            .expect("set mtime");
        assert!(!v.contains(&oid, &meta(&file)));
        assert!(!Verified::new(dir.path()).contains(&oid, &meta(&file)));
        // Replaced by another file (another inode): not trusted.
        let other = dir.path().join("other");
        fs::write(&other, b"bytes").expect("write");
        v.record(&oid, &meta(&file));
        fs::rename(&other, &file).expect("replace");
        assert!(!v.contains(&oid, &meta(&file)));
    }

    #[test]
    fn torn_and_foreign_lines_are_ignored_and_stale_logs_compacted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("obj");
        fs::write(&file, b"bytes").expect("write");
        let stamp = Stamp::of(&meta(&file)).expect("stamp");
        let oid = "c".repeat(64);
        let log = dir.path().join("theta").join("verified");
        fs::create_dir_all(log.parent().expect("dir")).expect("mkdir");
        let mut text = String::new();
        // Many stale lines for another object, garbage, then ours, then a
        // torn line.
        for i in 0..COMPACT_AFTER {
            let mut s = stamp;
            s.ino = i as u64 + 1_000_000;
            text.push_str(&s.line(&"d".repeat(64)));
        }
        text.push_str("not a record\n../../etc 1 2 3 4 5\n");
        text.push_str(&stamp.line(&oid));
        text.push_str(&stamp.line(&"e".repeat(64))[..40]);
        fs::write(&log, text).expect("log");
        let v = Verified::new(dir.path());
        assert!(v.contains(&oid, &meta(&file)));
        assert!(!v.contains(&"e".repeat(64), &meta(&file)), "torn line");
        let lines = fs::read_to_string(&log).expect("log").lines().count();
        assert_eq!(lines, 2, "compacted to one line per object");
        assert!(Verified::new(dir.path()).contains(&oid, &meta(&file)));
    }

    #[test]
    fn a_read_only_store_costs_only_hashing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("obj");
        fs::write(&file, b"bytes").expect("write");
        // `theta` is a file, so the log cannot be created.
        fs::write(dir.path().join("theta"), b"").expect("block");
        let v = Verified::new(dir.path());
        v.record(&"a".repeat(64), &meta(&file));
        assert!(v.contains(&"a".repeat(64), &meta(&file)), "kept in memory");
        assert!(!Verified::new(dir.path()).contains(&"a".repeat(64), &meta(&file)));
    }
}

//! Moving objects between repositories through git-lfs.
//!
//! - Push: the pre-push hook collects the manifests of tracked files in the
//!   commits being pushed and hands their object ids to
//!   `git lfs push --object-id REMOTE --stdin` in one batch; git-lfs asks the
//!   server which it lacks and uploads only those.
//! - Fetch: git-lfs has no command that fetches given object ids, so
//!   [`LfsFetcher`] runs `git lfs filter-process` and speaks git's filter
//!   protocol to it as git would, giving it an LFS pointer text per missing
//!   object and offering the `delay` capability so that git-lfs downloads
//!   them together in one batch; it stores each object in the local store
//!   (the content it sends back is discarded).
//!
//! See `docs/transport.md`.

use std::collections::BTreeSet;
use std::io::{BufReader, BufWriter, Read, Write};
use std::process::{Command, Stdio};

use super::git;
use super::manifest::{Manifest, ObjectRef, looks_like_manifest};
use super::pktline::{PktReader, read_text, write_data, write_flush, write_text};
use super::smudge::Fetcher;
use super::store::Store;

/// Manifests of git-theta-tracked files among the blobs reachable from
/// `tips` but not from `exclude` (revision arguments, e.g. `--remotes=origin`).
pub fn manifests_between(
    tips: &[String],
    exclude: &[String],
) -> Result<Vec<Manifest>, git::GitError> {
    let mut args = vec!["rev-list".to_owned(), "--objects".to_owned()];
    args.extend(tips.iter().cloned());
    if !exclude.is_empty() {
        args.push("--not".to_owned());
        args.extend(exclude.iter().cloned());
    }
    let listing = git::run(&args)?;
    let listing = String::from_utf8_lossy(&listing);
    let mut candidates = Vec::new();
    for line in listing.lines() {
        if let Some((sha, path)) = line.split_once(' ')
            && !path.is_empty()
        {
            candidates.push((sha.to_owned(), path.to_owned()));
        }
    }
    if candidates.is_empty() {
        return Ok(vec![]);
    }
    let mut paths = Vec::new();
    for (_, p) in &candidates {
        paths.extend_from_slice(p.as_bytes());
        paths.push(0);
    }
    let attrs = git::run_with_input(&["check-attr", "--stdin", "-z", "filter"], Some(paths))?;
    let fields: Vec<&[u8]> = attrs.split(|&b| b == 0).collect();
    let tracked: BTreeSet<&[u8]> = fields
        .chunks_exact(3)
        .filter(|f| f[2] == b"theta")
        .map(|f| f[0])
        .collect();
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for (sha, path) in &candidates {
        if !tracked.contains(path.as_bytes()) || !seen.insert(sha.clone()) {
            continue;
        }
        let blob = git::output(&["cat-file", "blob", sha], None)?;
        if blob.success
            && looks_like_manifest(&blob.stdout)
            && let Ok(m) = Manifest::parse(&blob.stdout)
        {
            out.push(m);
        }
    }
    Ok(out)
}

/// The distinct objects of `manifests`.
pub fn objects_of(manifests: &[Manifest]) -> Vec<ObjectRef> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for m in manifests {
        for (_, o) in m.objects() {
            if seen.insert(o.oid.clone()) {
                out.push(o.clone());
            }
        }
    }
    out
}

/// The pre-push work: `stdin` is what git gives a pre-push hook.
pub fn pre_push(remote: &str, stdin: &str, store: &Store) -> anyhow::Result<()> {
    let zero = |s: &str| s.bytes().all(|b| b == b'0');
    let mut tips = Vec::new();
    let mut exclude = vec![format!("--remotes={remote}")];
    for line in stdin.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 4 || zero(f[1]) {
            continue; // malformed, or a deletion
        }
        tips.push(f[1].to_owned());
        if !zero(f[3]) && git::output(&["cat-file", "-e", f[3]], None)?.success {
            exclude.push(f[3].to_owned());
        }
    }
    if tips.is_empty() {
        return Ok(());
    }
    let manifests = manifests_between(&tips, &exclude)?;
    let objects = objects_of(&manifests);
    let (present, missing): (Vec<_>, Vec<_>) =
        objects.into_iter().partition(|o| store.contains(&o.oid));
    if !missing.is_empty() {
        eprintln!(
            "git-theta: warning: {} objects of the pushed commits are not in the local store and are not pushed",
            missing.len()
        );
    }
    if present.is_empty() {
        return Ok(());
    }
    let bytes: u64 = present.iter().map(|o| o.size).sum();
    eprintln!(
        "git-theta: pushing {} objects ({}) through git-lfs, which uploads those {remote} lacks",
        present.len(),
        crate::format::bytes(bytes)
    );
    let list: String = present.iter().map(|o| format!("{}\n", o.oid)).collect();
    let status = Command::new("git")
        .args(["lfs", "push", "--object-id", remote, "--stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .and_then(|mut child| {
            if let Some(mut pipe) = child.stdin.take() {
                pipe.write_all(list.as_bytes())?;
            }
            child.wait()
        })
        .map_err(|e| anyhow::anyhow!("cannot run `git lfs push` (is git-lfs installed?): {e}"))?;
    if !status.success() {
        anyhow::bail!("`git lfs push --object-id {remote}` failed ({status})");
    }
    Ok(())
}

/// Fetches objects through `git lfs filter-process`.
pub struct LfsFetcher;

fn pointer(o: &ObjectRef) -> String {
    format!(
        "version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize {}\n",
        o.oid, o.size
    )
}

fn protocol_error(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::other(msg.into())
}

fn read_status(r: &mut impl std::io::BufRead) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    while let Some(l) = read_text(r)? {
        out.push(l);
    }
    Ok(out)
}

impl LfsFetcher {
    fn run(objects: &[ObjectRef]) -> std::io::Result<()> {
        let mut child = Command::new("git")
            .args(["lfs", "filter-process"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let (Some(cin), Some(cout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(protocol_error("no pipes to git-lfs"));
        };
        let mut w = BufWriter::new(cin);
        let mut r = BufReader::new(cout);
        write_text(&mut w, "git-filter-client")?;
        write_text(&mut w, "version=2")?;
        write_flush(&mut w)?;
        w.flush()?;
        read_status(&mut r)?; // git-filter-server, version=2
        write_text(&mut w, "capability=clean")?;
        write_text(&mut w, "capability=smudge")?;
        write_text(&mut w, "capability=delay")?;
        write_flush(&mut w)?;
        w.flush()?;
        let caps = read_status(&mut r)?;
        let delay = caps.iter().any(|c| c == "capability=delay");
        let mut delayed = Vec::new();
        for (i, o) in objects.iter().enumerate() {
            let path = format!("theta-object-{i}");
            write_text(&mut w, "command=smudge")?;
            write_text(&mut w, &format!("pathname={path}"))?;
            if delay {
                write_text(&mut w, "can-delay=1")?;
            }
            write_flush(&mut w)?;
            write_data(&mut w, pointer(o).as_bytes())?;
            write_flush(&mut w)?;
            w.flush()?;
            let status = read_status(&mut r)?;
            if status.iter().any(|s| s == "status=delayed") {
                delayed.push(path);
                continue;
            }
            Self::finish_response(&mut r, &status, &o.oid)?;
        }
        while !delayed.is_empty() {
            write_text(&mut w, "command=list_available_blobs")?;
            write_flush(&mut w)?;
            w.flush()?;
            let available: Vec<String> = read_status(&mut r)?
                .into_iter()
                .filter_map(|l| l.strip_prefix("pathname=").map(str::to_owned))
                .collect();
            read_status(&mut r)?; // status=success
            if available.is_empty() {
                return Err(protocol_error("git-lfs stopped delivering delayed objects"));
            }
            for path in available {
                write_text(&mut w, "command=smudge")?;
                write_text(&mut w, &format!("pathname={path}"))?;
                write_flush(&mut w)?;
                write_flush(&mut w)?;
                w.flush()?;
                let status = read_status(&mut r)?;
                Self::finish_response(&mut r, &status, &path)?;
                delayed.retain(|p| *p != path);
            }
        }
        drop(w);
        child.wait()?;
        Ok(())
    }

    /// Reads (and discards) a response's content and final status.
    fn finish_response(
        r: &mut impl std::io::BufRead,
        status: &[String],
        what: &str,
    ) -> std::io::Result<()> {
        if !status.iter().any(|s| s == "status=success") {
            return Err(protocol_error(format!(
                "git-lfs could not fetch {what}: {status:?}"
            )));
        }
        std::io::copy(&mut PktReader::new(r), &mut std::io::sink())?;
        let last = read_status(r)?;
        if last
            .iter()
            .any(|s| s == "status=error" || s == "status=abort")
        {
            return Err(protocol_error(format!("git-lfs could not fetch {what}")));
        }
        Ok(())
    }
}

impl Fetcher for LfsFetcher {
    fn fetch(&mut self, objects: &[ObjectRef]) -> Result<(), String> {
        if objects.is_empty() {
            return Ok(());
        }
        let bytes: u64 = objects.iter().map(|o| o.size).sum();
        eprintln!(
            "git-theta: fetching {} objects ({}) through git-lfs",
            objects.len(),
            crate::format::bytes(bytes)
        );
        LfsFetcher::run(objects).map_err(|e| e.to_string())
    }
}

/// Reads all of stdin as text.
pub fn read_stdin() -> std::io::Result<String> {
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s)?;
    Ok(s)
}

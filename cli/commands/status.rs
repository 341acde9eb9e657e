//! `git theta status`: for each tracked checkpoint, which tensors differ
//! between HEAD and the index (staged) and between the index and the working
//! tree (not staged). Only object ids are compared; the working tree is
//! hashed without storing anything.

use std::fs::File;
use std::io::BufReader;

use crate::commands::filter::{clean_options, options_for};
use crate::commands::track::tracked_files;
use crate::vcs::clean::clean;
use crate::vcs::compare::{Change, compare};
use crate::vcs::git;
use crate::vcs::manifest::{Manifest, looks_like_manifest};
use crate::vcs::store::DryRun;

/// A version of a file: absent, not a manifest, or a manifest.
enum Version {
    Absent,
    Plain,
    Manifest(Box<Manifest>),
}

fn blob(spec: &str) -> anyhow::Result<Version> {
    let out = git::output(&["cat-file", "blob", spec], None)?;
    if !out.success {
        return Ok(Version::Absent);
    }
    if !looks_like_manifest(&out.stdout) {
        return Ok(Version::Plain);
    }
    Ok(Version::Manifest(Box::new(Manifest::parse(&out.stdout)?)))
}

fn worktree(path: &str, options: &crate::vcs::clean::CleanOptions) -> anyhow::Result<Version> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Version::Absent),
        Err(e) => return Err(anyhow::anyhow!("{path}: {e}")),
    };
    let mut manifest = Vec::new();
    clean(
        &mut BufReader::with_capacity(1 << 20, file),
        &mut manifest,
        &DryRun,
        options,
    )
    .map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
    Ok(Version::Manifest(Box::new(Manifest::parse(&manifest)?)))
}

/// What changed between two versions, or `None` when nothing did.
fn describe(old: &Version, new: &Version) -> Option<Result<Vec<Change>, &'static str>> {
    match (old, new) {
        (Version::Absent, Version::Absent) => None,
        (Version::Absent, _) => Some(Err("new file")),
        (_, Version::Absent) => Some(Err("deleted")),
        (Version::Manifest(a), Version::Manifest(b)) => {
            let changes = compare(a, b);
            (!changes.is_empty()).then_some(Ok(changes))
        }
        _ => Some(Err("changed (not stored by git-theta on one side)")),
    }
}

fn print_section(title: &str, what: Option<Result<Vec<Change>, &'static str>>) {
    match what {
        None => {}
        Some(Err(msg)) => println!("  {title}: {msg}"),
        Some(Ok(changes)) => {
            println!("  {title}: {} tensor(s)", changes.len());
            for c in changes {
                println!("    {:<9} {}", c.kind.label(), c.name);
            }
        }
    }
}

/// Runs `status`.
pub fn run() -> anyhow::Result<()> {
    let top = git::toplevel()?;
    std::env::set_current_dir(&top)?;
    let options = clean_options()?;
    let mut any = false;
    for path in tracked_files()? {
        let head = blob(&format!("HEAD:{path}"))?;
        let index = blob(&format!(":{path}"))?;
        let work = worktree(&path, &options_for(&options, &path))?;
        let staged = describe(&head, &index);
        let unstaged = describe(&index, &work);
        if staged.is_none() && unstaged.is_none() {
            continue;
        }
        any = true;
        println!("{path}");
        print_section("staged (HEAD → index)", staged);
        print_section("not staged (index → working tree)", unstaged);
    }
    if !any {
        println!("tracked checkpoints: nothing changed");
    }
    Ok(())
}

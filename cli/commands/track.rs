//! `git theta track` / `untrack` / `ls-files`: which files git-theta handles,
//! kept in the repository's top-level `.gitattributes`.

use std::path::Path;

use anyhow::Context;

use crate::vcs::git;

/// The attributes a tracked pattern gets.
pub const ATTRIBUTES: &str = "filter=theta diff=theta merge=theta";

/// Arguments of `track` and `untrack`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Patterns as in .gitattributes, relative to the repository's top
    /// (e.g. '*.safetensors', 'models/**'). Quote them so the shell does
    /// not expand them. `track` without patterns lists the tracked ones.
    pub patterns: Vec<String>,
}

/// A pattern as written in .gitattributes (spaces are not allowed there).
fn escape(pattern: &str) -> String {
    pattern.replace(' ', "[[:space:]]")
}

/// Whether `line` tracks a pattern with git-theta; returns the pattern.
fn tracked_pattern(line: &str) -> Option<&str> {
    let mut fields = line.split_whitespace();
    let pattern = fields.next()?;
    if pattern.starts_with('#') {
        return None;
    }
    fields.any(|f| f == "filter=theta").then_some(pattern)
}

fn read_attributes(path: &Path) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn write_attributes(path: &Path, text: &str) -> anyhow::Result<()> {
    theta_engine::io::write_atomic(path, text.as_bytes())?;
    Ok(())
}

/// Runs `track`.
pub fn run_track(args: &Args) -> anyhow::Result<()> {
    let path = git::toplevel()?.join(".gitattributes");
    let mut text = read_attributes(&path)?;
    let existing: Vec<String> = text
        .lines()
        .filter_map(tracked_pattern)
        .map(str::to_owned)
        .collect();
    if args.patterns.is_empty() {
        println!("Listing tracked patterns");
        for p in &existing {
            println!("    {p} (.gitattributes)");
        }
        return Ok(());
    }
    let mut changed = false;
    for p in &args.patterns {
        let p = escape(p);
        if existing.contains(&p) {
            println!("\"{p}\" already tracked");
            continue;
        }
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!("{p} {ATTRIBUTES}\n"));
        println!("Tracking \"{p}\"");
        changed = true;
    }
    if changed {
        write_attributes(&path, &text)?;
        eprintln!(
            "hint: files already committed are converted when next added; \
             `git add --renormalize .` converts them now."
        );
    }
    Ok(())
}

/// Runs `untrack`.
pub fn run_untrack(args: &Args) -> anyhow::Result<()> {
    let path = git::toplevel()?.join(".gitattributes");
    let text = read_attributes(&path)?;
    let wanted: Vec<String> = args.patterns.iter().map(|p| escape(p)).collect();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        match tracked_pattern(line) {
            Some(p) if wanted.iter().any(|w| w == p) => println!("Untracking \"{p}\""),
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    if out != text {
        write_attributes(&path, &out)?;
    }
    Ok(())
}

/// The files in the index that git-theta handles, in index order.
pub fn tracked_files() -> anyhow::Result<Vec<String>> {
    theta_filtered(git::run(&["ls-files", "-z"])?)
}

/// Of the NUL-separated `paths`, those whose `filter` attribute is `theta`.
pub fn theta_filtered(paths: Vec<u8>) -> anyhow::Result<Vec<String>> {
    if paths.is_empty() {
        return Ok(vec![]);
    }
    let attrs = git::run_with_input(&["check-attr", "--stdin", "-z", "filter"], Some(paths))?;
    let fields: Vec<&[u8]> = attrs.split(|&b| b == 0).collect();
    Ok(fields
        .chunks_exact(3)
        .filter(|f| f[2] == b"theta")
        .map(|f| String::from_utf8_lossy(f[0]).into_owned())
        .collect())
}

/// Runs `ls-files`.
pub fn run_ls_files() -> anyhow::Result<()> {
    for f in tracked_files()? {
        println!("{f}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_tracking_lines() {
        assert_eq!(
            tracked_pattern("*.safetensors filter=theta diff=theta merge=theta"),
            Some("*.safetensors")
        );
        assert_eq!(tracked_pattern("*.bin filter=lfs diff=lfs"), None);
        assert_eq!(tracked_pattern("# *.x filter=theta"), None);
        assert_eq!(
            escape("my model.safetensors"),
            "my[[:space:]]model.safetensors"
        );
    }
}

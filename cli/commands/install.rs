//! `git theta install` / `uninstall`: the git configuration that makes git
//! run git-theta for tracked files.

use anyhow::Context;

use crate::vcs::{git, hooks};

/// Where the configuration goes.
#[derive(Debug, clap::Args)]
#[group(multiple = false)]
pub struct Scope {
    /// This repository only (.git/config).
    #[arg(long)]
    pub local: bool,
    /// The current user (~/.gitconfig); the default.
    #[arg(long)]
    pub global: bool,
    /// Every user of this machine (needs write access to the system config).
    #[arg(long)]
    pub system: bool,
}

impl Scope {
    fn flag(&self) -> &'static str {
        if self.local {
            "--local"
        } else if self.system {
            "--system"
        } else {
            "--global"
        }
    }
}

/// The configuration: key and value. The filter stores checkpoints; the
/// merge driver (`merge=theta`) merges them tensor by tensor; the diff driver
/// (`diff=theta`) makes `git diff` report tensor changes (`command`), and
/// `git log -p` / `git show` a line per tensor (`textconv`; they run the
/// command with `--ext-diff`).
pub const SETTINGS: &[(&str, &str)] = &[
    ("filter.theta.process", "git-theta filter-process"),
    ("filter.theta.clean", "git-theta clean %f"),
    ("filter.theta.smudge", "git-theta smudge %f"),
    ("filter.theta.required", "true"),
    (
        "merge.theta.name",
        "git-theta: per-tensor merge of checkpoints",
    ),
    ("merge.theta.driver", "git-theta merge-driver %O %A %B %P"),
    ("diff.theta.command", "git-theta diff-driver"),
    ("diff.theta.textconv", "git-theta textconv"),
];

/// Runs `install`.
pub fn run_install(scope: &Scope) -> anyhow::Result<()> {
    let flag = scope.flag();
    for (key, value) in SETTINGS {
        git::run(&["config", flag, key, value])
            .with_context(|| format!("cannot set {key} ({flag})"))?;
    }
    println!("git-theta: filter configured ({flag}).");
    let in_repo = scope.local || git::output(&["rev-parse", "--git-dir"], None)?.success;
    if in_repo && hooks::ensure_pre_push()? {
        println!("git-theta: pre-push hook installed.");
    }
    match git::output(&["lfs", "version"], None) {
        Ok(out) if out.success => {}
        _ => eprintln!(
            "git-theta: warning: git-lfs is not installed. git-theta keeps tensors in Git LFS's \
             storage and needs git-lfs to push and fetch them. Install it from \
             https://git-lfs.com (e.g. `apt install git-lfs` or `brew install git-lfs`), \
             then run `git lfs install`."
        ),
    }
    Ok(())
}

/// Runs `uninstall`. Settings already absent are not an error.
pub fn run_uninstall(scope: &Scope) -> anyhow::Result<()> {
    let flag = scope.flag();
    for (key, _) in SETTINGS {
        let out = git::output(&["config", flag, "--unset-all", key], None)?;
        // 5: the key was not set.
        if !out.success && out.code != Some(5) {
            anyhow::bail!("cannot unset {key} ({flag}): {}", out.stderr);
        }
    }
    if scope.local || git::output(&["rev-parse", "--git-dir"], None)?.success {
        hooks::remove_pre_push()?;
    }
    println!("git-theta: filter configuration removed ({flag}).");
    Ok(())
}

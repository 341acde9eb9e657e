//! git-theta's command line: the commands people run (`inspect`, `example`,
//! `install`, `track`, `status`, ...) and the git plumbing (the filter
//! process, the pre-push hook); [`vcs`] holds the formats and protocols.
//! The tensor work is `theta_engine`'s; this crate parses arguments, prints,
//! and maps errors to exit codes.
//!
//! stdout carries the command's output (and, for drivers, the protocol);
//! every log line and error goes to stderr.

pub mod commands;
pub mod format;
pub mod vcs;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Version control for machine-learning models.
#[derive(Debug, Parser)]
#[command(name = "git-theta", bin_name = "git theta", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List a checkpoint's tensors, dtypes, shapes and sizes (headers only).
    Inspect(commands::inspect::Args),
    /// Write a small, deterministic example model to try git-theta on.
    Example(commands::example::Args),
    /// Merge models as mergekit does (a mergekit YAML config, or --method ...).
    Merge(commands::merge::Args),
    /// Configure git to run git-theta for tracked files (and check git-lfs).
    Install(commands::install::Scope),
    /// Remove the configuration `install` added.
    Uninstall(commands::install::Scope),
    /// Track file patterns with git-theta (.gitattributes); no pattern: list them.
    Track(commands::track::Args),
    /// Stop tracking file patterns.
    Untrack(commands::track::Args),
    /// List the files in the index that git-theta tracks.
    LsFiles,
    /// Show which tensors of tracked checkpoints are staged or modified.
    Status,
    /// Resolve conflicted checkpoints after `git merge` with a strategy, or
    /// write their base/ours/theirs versions out for manual work.
    Mergetool(commands::merge_driver::ToolArgs),
    /// Show how far each tensor moved between versions (as `git diff`).
    Diff(commands::diff::Args),
    /// Show the compute device (GPU adapter, limits) commands will use.
    Doctor(commands::doctor::Args),
    /// Stages files like `git add`, choosing how changed tensors are stored
    /// (`--update`), or side-loading a PEFT LoRA/IA3 adapter (`--update-data`).
    Add(commands::update::AddArgs),
    /// Rewrites update chains in the index as dense snapshots (commit to keep).
    Compact(commands::update::CompactArgs),
    /// Writes a checkpoint plus a PEFT LoRA or IA3 adapter, exactly as
    /// `git theta add --update-data` and checkout compute it.
    ApplyLora(commands::apply_lora::Args),
    /// Long-running filter process git talks to (plumbing).
    #[command(hide = true)]
    FilterProcess,
    /// Single-shot clean: checkpoint on stdin, manifest on stdout (plumbing).
    #[command(hide = true)]
    Clean(commands::filter::PathArgs),
    /// The pre-push hook: push the pushed commits' objects through git-lfs (plumbing).
    #[command(hide = true)]
    PrePush(commands::filter::PrePushArgs),
    /// Single-shot smudge: manifest on stdin, checkpoint on stdout (plumbing).
    #[command(hide = true)]
    Smudge(commands::filter::PathArgs),
    /// The merge driver git runs as `git-theta merge-driver %O %A %B %P` (plumbing).
    #[command(hide = true)]
    MergeDriver(commands::merge_driver::DriverArgs),
    /// git's external diff command for tracked checkpoints (plumbing).
    #[command(hide = true)]
    DiffDriver(commands::diff::DriverArgs),
    /// git's textconv for tracked checkpoints: a line per tensor (plumbing).
    #[command(hide = true)]
    Textconv(commands::diff::TextconvArgs),
}

/// Runs the command line given by `args` and returns the process exit code.
pub fn main_with_args<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let result = match cli.command {
        Command::Inspect(args) => commands::inspect::run(&args),
        Command::Example(args) => commands::example::run(&args),
        Command::Merge(args) => commands::merge::run(&args),
        Command::Install(scope) => commands::install::run_install(&scope),
        Command::Uninstall(scope) => commands::install::run_uninstall(&scope),
        Command::Track(args) => commands::track::run_track(&args),
        Command::Untrack(args) => commands::track::run_untrack(&args),
        Command::LsFiles => commands::track::run_ls_files(),
        Command::Status => commands::status::run(),
        Command::Diff(args) => commands::diff::run(&args),
        Command::DiffDriver(args) => commands::diff::run_driver(&args),
        Command::Textconv(args) => commands::diff::run_textconv(&args),
        Command::FilterProcess => commands::filter::run_process(),
        Command::Clean(args) => commands::filter::run_clean(&args),
        Command::Smudge(args) => commands::filter::run_smudge(&args),
        Command::PrePush(args) => commands::filter::run_pre_push(&args),
        Command::Doctor(args) => commands::doctor::run(&args),
        Command::Mergetool(args) => commands::merge_driver::run_tool(&args),
        Command::MergeDriver(args) => commands::merge_driver::run_driver(&args),
        Command::Add(args) => commands::update::run_add(&args),
        Command::Compact(args) => commands::update::run_compact(&args),
        Command::ApplyLora(args) => commands::apply_lora::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("git-theta: error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

/// A reader of our output went away (`git theta inspect x | head`): not an error.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

//! Running `git` (and `git lfs`): git-theta shells out to the git on PATH,
//! as git-lfs does, rather than linking a git library.

use std::ffi::OsStr;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// A git command that could not run or failed.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// The program could not be started.
    #[error("cannot run `{command}`: {error}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        error: std::io::Error,
    },
    /// It exited unsuccessfully.
    #[error("`{command}` failed ({status}){}", if stderr.is_empty() { String::new() } else { format!(": {stderr}") })]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr, trimmed.
        stderr: String,
    },
}

fn describe<S: AsRef<OsStr>>(args: &[S]) -> String {
    let mut s = String::from("git");
    for a in args {
        s.push(' ');
        s.push_str(&a.as_ref().to_string_lossy());
    }
    s
}

/// Output of a finished git command.
pub struct Output {
    /// Whether it exited with status 0.
    pub success: bool,
    /// Its exit code, if any.
    pub code: Option<i32>,
    /// Its stdout.
    pub stdout: Vec<u8>,
    /// Its stderr.
    pub stderr: String,
}

/// Runs `git args...` with `stdin` as input, whatever its exit status.
pub fn output<S: AsRef<OsStr>>(args: &[S], stdin: Option<Vec<u8>>) -> Result<Output, GitError> {
    let mut cmd = Command::new("git");
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let spawn_err = |error| GitError::Spawn {
        command: describe(args),
        error,
    };
    let mut child = cmd.spawn().map_err(spawn_err)?;
    let writer = match (stdin, child.stdin.take()) {
        (Some(data), Some(mut pipe)) => Some(std::thread::spawn(move || {
            let _ = pipe.write_all(&data);
        })),
        _ => None,
    };
    let out = child.wait_with_output().map_err(spawn_err)?;
    if let Some(w) = writer {
        let _ = w.join();
    }
    Ok(Output {
        success: out.status.success(),
        code: out.status.code(),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
}

/// Runs `git args...`, failing unless it succeeds; returns its stdout.
pub fn run<S: AsRef<OsStr>>(args: &[S]) -> Result<Vec<u8>, GitError> {
    run_with_input(args, None)
}

/// [`run`] with bytes on stdin.
pub fn run_with_input<S: AsRef<OsStr>>(
    args: &[S],
    stdin: Option<Vec<u8>>,
) -> Result<Vec<u8>, GitError> {
    let out = output(args, stdin)?;
    if out.success {
        Ok(out.stdout)
    } else {
        Err(GitError::Failed {
            command: describe(args),
            status: status_of(out.code),
            stderr: out.stderr,
        })
    }
}

fn status_of(code: Option<i32>) -> std::process::ExitStatus {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        std::process::ExitStatus::from_raw(code.unwrap_or(1) << 8)
    }
    #[cfg(not(unix))]
    {
        let _ = code;
        std::process::ExitStatus::default()
    }
}

/// Runs `git args...` and returns its stdout as trimmed text.
pub fn text<S: AsRef<OsStr>>(args: &[S]) -> Result<String, GitError> {
    run(args).map(|o| String::from_utf8_lossy(&o).trim().to_owned())
}

/// `git config --get KEY`, `None` when unset.
pub fn config_get(key: &str) -> Result<Option<String>, GitError> {
    let out = output(&["config", "--get", key], None)?;
    if out.success {
        Ok(Some(String::from_utf8_lossy(&out.stdout).trim().to_owned()))
    } else if out.code == Some(1) {
        Ok(None)
    } else {
        Err(GitError::Failed {
            command: format!("git config --get {key}"),
            status: status_of(out.code),
            stderr: out.stderr,
        })
    }
}

/// The repository's common git folder (shared by its worktrees), absolute.
pub fn common_dir() -> Result<PathBuf, GitError> {
    let dir = PathBuf::from(text(&["rev-parse", "--git-common-dir"])?);
    Ok(if dir.is_absolute() {
        dir
    } else {
        std::env::current_dir().map(|c| c.join(&dir)).unwrap_or(dir)
    })
}

/// Git LFS's storage folder for this repository: `lfs.storage` if set
/// (relative to the git folder), else `<common dir>/lfs`, as `git lfs env`
/// reports it.
pub fn lfs_dir() -> Result<PathBuf, GitError> {
    let common = common_dir()?;
    Ok(match config_get("lfs.storage")? {
        Some(s) if !s.is_empty() => common.join(s),
        _ => common.join("lfs"),
    })
}

/// The top of the working tree.
pub fn toplevel() -> Result<PathBuf, GitError> {
    text(&["rev-parse", "--show-toplevel"]).map(PathBuf::from)
}

//! The pre-push hook that sends objects through git-lfs, installed so that
//! it chains with a hook already there (git-lfs's, or the user's) rather
//! than replacing it: the previous hook is kept as `pre-push.pre-theta` and
//! run by `git theta pre-push` with the same arguments and input.

use std::path::PathBuf;

use super::git;

/// A line that marks the hook as git-theta's.
pub const MARKER: &str = "# git-theta pre-push hook";

/// Suffix of the chained, previously installed hook.
pub const CHAINED_SUFFIX: &str = ".pre-theta";

/// The hook script.
pub fn script() -> String {
    format!(
        "#!/bin/sh\n{MARKER}: pushes the objects of tracked checkpoints through git-lfs,\n\
         # then runs the hook that was here before (pre-push{CHAINED_SUFFIX}), if any.\n\
         command -v git-theta >/dev/null 2>&1 || {{ echo >&2 \"This repository uses git-theta, \
         which is not on your PATH (see https://github.com/git-theta/git-theta); \
         remove .git/hooks/pre-push to push without it.\"; exit 2; }}\n\
         GIT_THETA_HOOK=\"$0\" exec git-theta pre-push \"$@\"\n"
    )
}

/// The hooks folder (`core.hooksPath` if set).
pub fn hooks_dir() -> Result<PathBuf, git::GitError> {
    let p = PathBuf::from(git::text(&["rev-parse", "--git-path", "hooks"])?);
    Ok(if p.is_absolute() {
        p
    } else {
        std::env::current_dir().map(|c| c.join(&p)).unwrap_or(p)
    })
}

/// Installs the pre-push hook if it is not there; returns whether it wrote.
pub fn ensure_pre_push() -> anyhow::Result<bool> {
    let dir = hooks_dir()?;
    let hook = dir.join("pre-push");
    match std::fs::read_to_string(&hook) {
        Ok(text) if text.contains(MARKER) => return Ok(false),
        Ok(_) => {
            let chained = dir.join(format!("pre-push{CHAINED_SUFFIX}"));
            if chained.exists() {
                anyhow::bail!(
                    "{} exists and is not git-theta's, and {} is taken: merge them by hand",
                    hook.display(),
                    chained.display()
                );
            }
            std::fs::rename(&hook, &chained)?;
        }
        Err(_) => std::fs::create_dir_all(&dir)?,
    }
    theta_engine::io::write_atomic(&hook, script().as_bytes())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(true)
}

/// Removes git-theta's hook and puts the chained one back.
pub fn remove_pre_push() -> anyhow::Result<()> {
    let dir = hooks_dir()?;
    let hook = dir.join("pre-push");
    if std::fs::read_to_string(&hook).is_ok_and(|t| t.contains(MARKER)) {
        std::fs::remove_file(&hook)?;
        let chained = dir.join(format!("pre-push{CHAINED_SUFFIX}"));
        if chained.exists() {
            std::fs::rename(chained, hook)?;
        }
    }
    Ok(())
}

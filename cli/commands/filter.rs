//! The filter plumbing git runs: `filter-process` (the long-running filter
//! that `git theta install` configures), and single-shot `clean`/`smudge`.

use std::cell::Cell;
use std::io::{self, BufReader, BufWriter, Read, Write};

use anyhow::Context;

use crate::commands::example::parse_size;
use crate::vcs::clean::{self, CleanOptions};
use crate::vcs::filter::{self, FilterHandler};
use crate::vcs::git;
use crate::vcs::smudge::{self, Fetcher, NoFetch};
use crate::vcs::store::{ObjectSink, Store, StoreError};

/// Arguments of the single-shot `clean` and `smudge`.
#[derive(Debug, clap::Args)]
pub struct PathArgs {
    /// The file's path in the working tree (for messages).
    pub path: Option<String>,
}

/// Clean options from git config (`theta.chunkSize`).
pub fn clean_options() -> anyhow::Result<CleanOptions> {
    let mut options = CleanOptions::default();
    if let Some(s) = git::config_get("theta.chunkSize")? {
        options.chunk_size =
            parse_size(&s).map_err(|e| anyhow::anyhow!("git config theta.chunkSize: {e}"))?;
    }
    Ok(options)
}

/// Clean and smudge with this repository's store and settings.
pub struct ThetaFilter {
    store: Store,
    options: CleanOptions,
    fetcher: Box<dyn Fetcher>,
}

impl ThetaFilter {
    /// The filter for the repository in the current folder.
    pub fn for_current_repo() -> anyhow::Result<ThetaFilter> {
        let store = Store::new(git::lfs_dir().context("git-theta runs inside a git repository")?);
        let mut options = CleanOptions::default();
        if let Some(s) = git::config_get("theta.chunkSize")? {
            options.chunk_size =
                parse_size(&s).map_err(|e| anyhow::anyhow!("git config theta.chunkSize: {e}"))?;
        }
        Ok(ThetaFilter {
            store,
            options,
            fetcher: Box::new(NoFetch),
        })
    }
}

impl FilterHandler for ThetaFilter {
    fn clean(
        &mut self,
        path: &str,
        input: &mut dyn Read,
        out: &mut dyn Write,
    ) -> Result<(), String> {
        let summary = match fault_abort_after() {
            Some(n) => {
                let sink = AbortAfter {
                    inner: &self.store,
                    left: Cell::new(n),
                };
                clean::clean(input, out, &sink, &self.options)
            }
            None => clean::clean(input, out, &self.store, &self.options),
        }
        .map_err(|e| e.to_string())?;
        if std::env::var_os("GIT_THETA_TRACE").is_some() {
            eprintln!(
                "git-theta: clean {path}: {} objects, {} new ({} bytes)",
                summary.objects, summary.new_objects, summary.new_bytes
            );
        }
        Ok(())
    }

    fn smudge(
        &mut self,
        _path: &str,
        input: &mut dyn Read,
        out: &mut dyn Write,
    ) -> Result<(), String> {
        smudge::smudge(input, out, &self.store, self.fetcher.as_mut()).map_err(|e| e.to_string())
    }
}

/// Fault injection for tests: `GIT_THETA_FAULT_ABORT_AFTER_OBJECTS=N` makes
/// clean abort the process, as a kill would, once it has written N objects.
fn fault_abort_after() -> Option<u64> {
    std::env::var("GIT_THETA_FAULT_ABORT_AFTER_OBJECTS")
        .ok()?
        .parse()
        .ok()
}

struct AbortAfter<'a> {
    inner: &'a Store,
    left: Cell<u64>,
}

impl ObjectSink for AbortAfter<'_> {
    fn put(&self, oid: &str, bytes: &[u8]) -> Result<bool, StoreError> {
        let new = self.inner.put(oid, bytes)?;
        if new {
            self.left.set(self.left.get().saturating_sub(1));
            if self.left.get() == 0 {
                eprintln!("git-theta: aborting on purpose (GIT_THETA_FAULT_ABORT_AFTER_OBJECTS)");
                std::process::abort();
            }
        }
        Ok(new)
    }
}

/// Runs `filter-process`: serves git on stdin/stdout until it hangs up.
pub fn run_process() -> anyhow::Result<()> {
    let mut handler = ThetaFilter::for_current_repo()?;
    let stdin = io::stdin().lock();
    let stdout = io::stdout().lock();
    filter::serve(
        BufReader::with_capacity(1 << 20, stdin),
        BufWriter::with_capacity(1 << 20, stdout),
        &mut handler,
    )?;
    Ok(())
}

/// Runs single-shot `clean`: file on stdin, manifest on stdout.
pub fn run_clean(args: &PathArgs) -> anyhow::Result<()> {
    let mut handler = ThetaFilter::for_current_repo()?;
    let mut out = BufWriter::new(io::stdout().lock());
    let path = args.path.as_deref().unwrap_or("<stdin>");
    handler
        .clean(path, &mut BufReader::new(io::stdin().lock()), &mut out)
        .map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
    out.flush()?;
    Ok(())
}

/// Runs single-shot `smudge`: manifest on stdin, file on stdout.
pub fn run_smudge(args: &PathArgs) -> anyhow::Result<()> {
    let mut handler = ThetaFilter::for_current_repo()?;
    let mut out = BufWriter::new(io::stdout().lock());
    let path = args.path.as_deref().unwrap_or("<stdin>");
    handler
        .smudge(path, &mut BufReader::new(io::stdin().lock()), &mut out)
        .map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
    out.flush()?;
    Ok(())
}

//! The filter plumbing git runs: `filter-process` (the long-running filter
//! that `git theta install` configures), and single-shot `clean`/`smudge`.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;

use crate::commands::example::parse_size;
use crate::vcs::choose::Forced;
use crate::vcs::clean::{self, CleanOptions};
use crate::vcs::filter::{self, FilterHandler};
use crate::vcs::git;
use crate::vcs::manifest::{Manifest, looks_like_manifest};
use crate::vcs::smudge::{self, Fetcher};
use crate::vcs::store::{ObjectSink, Store, StoreError};
use crate::vcs::transport::LfsFetcher;
use crate::vcs::{hooks, transport};

/// Arguments of the single-shot `clean` and `smudge`.
#[derive(Debug, clap::Args)]
pub struct PathArgs {
    /// The file's path in the working tree (for messages).
    pub path: Option<String>,
}

/// Clean options from git config (`theta.chunkSize`, `theta.maxChain`,
/// `theta.updateTolerance`) and from `git theta add`'s environment
/// ([`UPDATE_ENV`]).
pub fn clean_options() -> anyhow::Result<CleanOptions> {
    let mut options = CleanOptions::default();
    if let Some(s) = git::config_get("theta.chunkSize")? {
        options.chunk_size =
            parse_size(&s).map_err(|e| anyhow::anyhow!("git config theta.chunkSize: {e}"))?;
    }
    // Previous versions are read from the store to choose updates.
    options.updates.store = git::lfs_dir().ok().map(Store::new);
    if let Some(s) = git::config_get("theta.maxChain")? {
        options.updates.max_chain = s.trim().parse().map_err(|_| {
            anyhow::anyhow!("git config theta.maxChain: `{s}` is not a whole number")
        })?;
    }
    if let Some(s) = git::config_get("theta.updateTolerance")? {
        let tol: f64 = s.trim().parse().map_err(|_| {
            anyhow::anyhow!("git config theta.updateTolerance: `{s}` is not a number")
        })?;
        if !(tol >= 0.0 && tol.is_finite()) {
            anyhow::bail!("git config theta.updateTolerance: `{s}` must be a finite number ≥ 0");
        }
        options.updates.tolerance = (tol > 0.0).then_some(tol);
    }
    match std::env::var(UPDATE_ENV).ok().as_deref() {
        None | Some("" | "auto") => {}
        Some("dense") => options.updates.forced = Some(Forced::Dense),
        Some("sparse") => options.updates.forced = Some(Forced::Sparse),
        // Factored kinds come with their data (GIT_THETA_UPDATE_DATA), read
        // per file against its previous manifest.
        Some("low-rank" | "ia3") => {}
        Some(other) => anyhow::bail!(
            "{UPDATE_ENV}={other}: not an update kind (auto, dense, sparse, low-rank, ia3)"
        ),
    }
    Ok(options)
}

/// The environment variable through which `git theta add --update KIND`
/// passes its choice to the clean filter that `git add` runs.
pub const UPDATE_ENV: &str = "GIT_THETA_UPDATE";
/// The environment variable naming `--update-data` (an adapter folder or
/// file) for the clean filter.
pub const UPDATE_DATA_ENV: &str = "GIT_THETA_UPDATE_DATA";

/// `options`, reusing the chunking of the manifest the index holds for
/// `path`, if any.
pub fn options_for(options: &CleanOptions, path: &str) -> CleanOptions {
    let staged = git::output(&["cat-file", "blob", &format!(":{path}")], None);
    match staged {
        Ok(out) if out.success && looks_like_manifest(&out.stdout) => {
            match Manifest::parse(&out.stdout) {
                Ok(m) => options.clone().with_previous(&m),
                Err(_) => options.clone(),
            }
        }
        _ => options.clone(),
    }
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
        let options = clean_options()?;
        Ok(ThetaFilter {
            store,
            options,
            fetcher: Box::new(LfsFetcher),
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
        let mut options = options_for(&self.options, path);
        if let Some(dir) = std::env::var_os(UPDATE_DATA_ENV) {
            let adapter = crate::vcs::peft::Adapter::open(std::path::Path::new(&dir))
                .map_err(|e| format!("{e:#}"))?;
            options.updates.factored = crate::commands::apply_lora::updates_for(
                &adapter,
                options.updates.previous.values(),
            )
            .map_err(|e| format!("{e:#}"))?;
        }
        let summary = match fault_abort_after() {
            Some(n) => {
                let sink = AbortAfter {
                    inner: &self.store,
                    left: AtomicU64::new(n),
                };
                clean::clean(input, out, &sink, &options)
            }
            None => clean::clean(input, out, &self.store, &options),
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
    left: AtomicU64,
}

impl ObjectSink for AbortAfter<'_> {
    fn put(&self, oid: &str, bytes: &[u8]) -> Result<bool, StoreError> {
        let new = self.inner.put(oid, bytes)?;
        if new {
            let before = self
                .left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    Some(n.saturating_sub(1))
                });
            if before.is_ok_and(|n| n <= 1) {
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
    // Like git-lfs, make sure every repository the filter runs in (a fresh
    // clone included) has the hook that pushes objects.
    if let Err(e) = hooks::ensure_pre_push() {
        eprintln!("git-theta: warning: pre-push hook not installed: {e}");
    }
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

/// Arguments of the `pre-push` hook command.
#[derive(Debug, clap::Args)]
pub struct PrePushArgs {
    /// The remote's name.
    pub remote: String,
    /// The remote's URL.
    pub url: Option<String>,
}

/// Runs `pre-push`: pushes the objects of the pushed commits' manifests,
/// then runs the previously installed hook, if any.
pub fn run_pre_push(args: &PrePushArgs) -> anyhow::Result<()> {
    let stdin = transport::read_stdin()?;
    let store = Store::new(git::lfs_dir()?);
    transport::pre_push(&args.remote, &stdin, &store)?;
    if let Some(hook) = std::env::var_os("GIT_THETA_HOOK") {
        let mut chained = std::path::PathBuf::from(hook).into_os_string();
        chained.push(hooks::CHAINED_SUFFIX);
        let chained = std::path::PathBuf::from(chained);
        if chained.is_file() {
            let mut cmd = std::process::Command::new(&chained);
            cmd.arg(&args.remote);
            if let Some(url) = &args.url {
                cmd.arg(url);
            }
            let mut child = cmd
                .stdin(std::process::Stdio::piped())
                .spawn()
                .with_context(|| format!("cannot run {}", chained.display()))?;
            if let Some(mut pipe) = child.stdin.take() {
                // The chained hook may not read its input.
                let _ = pipe.write_all(stdin.as_bytes());
            }
            let status = child.wait()?;
            if !status.success() {
                anyhow::bail!("{} failed ({status})", chained.display());
            }
        }
    }
    Ok(())
}

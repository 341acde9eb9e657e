//! `git theta add` (git add with a chosen update kind or a side-loaded
//! adapter) and `git theta compact` (update chains rewritten as dense
//! snapshots).

use std::path::PathBuf;

use anyhow::Context;

use crate::commands::filter::{UPDATE_DATA_ENV, UPDATE_ENV};
use crate::commands::track::tracked_files;
use crate::vcs::git;
use crate::vcs::manifest::{DENSE, Manifest, ObjectRef, TensorEntry, looks_like_manifest};
use crate::vcs::smudge::Chain;
use crate::vcs::store::{ObjectSink, Store, sha256_hex};

/// An update kind on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// The cheapest exact representation, tensor by tensor (the default).
    Auto,
    /// Whole tensors.
    Dense,
    /// Changed elements only, even where whole tensors would be smaller.
    Sparse,
    /// Factors from `--update-data` (a PEFT LoRA adapter).
    LowRank,
    /// Scale vectors from `--update-data` (a PEFT IA3 adapter).
    Ia3,
}

impl Kind {
    fn env(self) -> &'static str {
        match self {
            Kind::Auto => "auto",
            Kind::Dense => "dense",
            Kind::Sparse => "sparse",
            Kind::LowRank => "low-rank",
            Kind::Ia3 => "ia3",
        }
    }
}

/// Arguments of `git theta add`.
#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// Files to add (as `git add` takes them).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// How changed tensors are stored relative to their previous version.
    #[arg(long, value_enum, default_value = "auto")]
    pub update: Kind,
    /// A PEFT adapter folder (LoRA or IA3) whose update the file gets: the
    /// file is rewritten as the staged version plus the adapter, and the
    /// adapter's factors are stored as the update.
    #[arg(long, value_name = "ADAPTER")]
    pub update_data: Option<PathBuf>,
}

/// Runs `git theta add`.
pub fn run_add(args: &AddArgs) -> anyhow::Result<()> {
    let mut kind = args.update;
    if let Some(dir) = &args.update_data {
        let [path] = &args.paths[..] else {
            anyhow::bail!("--update-data applies to one checkpoint at a time");
        };
        let adapter = crate::vcs::peft::Adapter::open(dir)?;
        kind = match (kind, adapter.kind()) {
            (Kind::Auto, k) => k,
            (k, a) if k == a => k,
            (k, a) => anyhow::bail!(
                "--update {} does not match the adapter in {} ({})",
                k.env(),
                dir.display(),
                a.env()
            ),
        };
        crate::commands::apply_lora::side_load(path, &adapter)?;
    } else if matches!(kind, Kind::LowRank | Kind::Ia3) {
        anyhow::bail!(
            "--update {} needs --update-data ADAPTER (low-rank and IA3 updates are not derived from the file: they would not be exact)",
            kind.env()
        );
    }
    let mut cmd = std::process::Command::new("git");
    cmd.arg("add").arg("--").args(&args.paths);
    cmd.env(UPDATE_ENV, kind.env());
    match &args.update_data {
        Some(dir) => cmd.env(UPDATE_DATA_ENV, std::path::absolute(dir)?),
        None => cmd.env_remove(UPDATE_DATA_ENV),
    };
    let status = cmd.status().context("cannot run git add")?;
    if !status.success() {
        anyhow::bail!("git add failed ({status})");
    }
    Ok(())
}

/// Arguments of `git theta compact`.
#[derive(Debug, clap::Args)]
pub struct CompactArgs {
    /// Tracked files to compact (default: every tracked file).
    pub paths: Vec<String>,
    /// Rewrite chains of more than this many updates (0: every chain).
    #[arg(long, default_value_t = 0)]
    pub longer_than: usize,
}

/// Runs `git theta compact`: for each file, the staged manifest with every
/// long chain replaced by a dense snapshot of the same bytes, staged in its
/// place. The working tree is untouched (its bytes do not change).
pub fn run_compact(args: &CompactArgs) -> anyhow::Result<()> {
    let store = Store::new(git::lfs_dir()?);
    let paths = if args.paths.is_empty() {
        tracked_files()?
    } else {
        args.paths.clone()
    };
    for path in paths {
        let spec = format!(":{path}");
        let out = git::output(&["cat-file", "blob", &spec], None)?;
        if !out.success {
            anyhow::bail!("{path}: not in the index");
        }
        if !looks_like_manifest(&out.stdout) {
            continue;
        }
        let mut manifest = Manifest::parse(&out.stdout).with_context(|| path.clone())?;
        let mut rewritten = 0;
        for t in &mut manifest.tensors {
            if t.chain_len() > args.longer_than && !t.base.is_empty() {
                *t = snapshot(t, &store).with_context(|| path.clone())?;
                rewritten += 1;
            }
        }
        if rewritten == 0 {
            continue;
        }
        let bytes = manifest.to_bytes();
        let oid = git::run_with_input(
            &["hash-object", "-w", "--no-filters", "--stdin"],
            Some(bytes),
        )?;
        let oid = String::from_utf8_lossy(&oid).trim().to_owned();
        let mode = git::text(&["ls-files", "-s", "--", &path])?;
        let mode = mode
            .split_whitespace()
            .next()
            .unwrap_or("100644")
            .to_owned();
        git::run(&[
            "update-index",
            "--cacheinfo",
            &format!("{mode},{oid},{path}"),
        ])?;
        eprintln!("git-theta: {path}: {rewritten} chains compacted (staged; commit to keep)");
    }
    Ok(())
}

/// `t` as a dense entry of the same bytes, its objects stored.
pub fn snapshot(t: &TensorEntry, store: &Store) -> anyhow::Result<TensorEntry> {
    let mut chain = Chain::new(t, store)?;
    let mut objects = Vec::with_capacity(chain.lengths.len());
    for i in 0..chain.lengths.len() {
        let raw = chain.chunk(i)?;
        let stored = crate::vcs::codec::by_name(&t.encoding)
            .context("unknown encoding")?
            .encode(&raw);
        let oid = sha256_hex(&stored);
        store.put(&oid, &stored)?;
        objects.push(ObjectRef {
            oid,
            size: stored.len() as u64,
        });
    }
    Ok(TensorEntry {
        update: DENSE.to_owned(),
        objects,
        base: vec![],
        ..t.clone()
    })
}

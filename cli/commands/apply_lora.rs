//! `git theta apply-lora BASE ADAPTER -o OUT`, and the side-loading half of
//! `git theta add --update-data`: a checkpoint plus a PEFT adapter's update,
//! computed by the one procedure checkout uses ([`Factored::apply`], CPU), so
//! that the file written is byte for byte the file checkout rebuilds.

use std::path::{Path, PathBuf};

use anyhow::Context;
use theta_engine::io::AtomicFile;
use theta_engine::safetensors::SafetensorsFile;

use crate::vcs::choose::Factored;
use crate::vcs::git;
use crate::vcs::manifest::{Manifest, TensorEntry, looks_like_manifest};
use crate::vcs::peft::{Adapter, BaseTensor};
use crate::vcs::smudge::Chain;
use crate::vcs::store::Store;
use crate::vcs::update::Target;

/// Arguments of `apply-lora`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The base checkpoint (.safetensors).
    pub base: PathBuf,
    /// The PEFT adapter folder (LoRA or IA3).
    pub adapter: PathBuf,
    /// Where to write the merged checkpoint.
    #[arg(short, long)]
    pub output: PathBuf,
}

fn target<'a>(name: &'a str, dtype: &str, shape: &'a [u64]) -> anyhow::Result<Target<'a>> {
    Ok(Target {
        name,
        dtype: dtype
            .parse()
            .map_err(|_| anyhow::anyhow!("tensor `{name}`: unknown dtype `{dtype}`"))?,
        shape,
    })
}

/// Runs `apply-lora`: one tensor in memory at a time.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let base = SafetensorsFile::open(&args.base)?;
    let adapter = Adapter::open(&args.adapter)?;
    let tensors: Vec<BaseTensor<'_>> = base
        .tensors()
        .iter()
        .map(|t| BaseTensor {
            name: &t.name,
            shape: &t.shape,
        })
        .collect();
    let updates = adapter.updates(&tensors)?;
    let mut out = AtomicFile::create(&args.output)?;
    out.write_all(&(base.header_bytes().len() as u64).to_le_bytes())?;
    out.write_all(base.header_bytes())?;
    for i in 0..base.tensors().len() {
        let view = base.view(i);
        match updates.get(&view.info.name) {
            Some(f) => {
                let mut bytes = view.data.to_vec();
                let t = target(&view.info.name, view.info.dtype.name(), &view.info.shape)?;
                f.apply(&t, 0, &mut bytes)
                    .map_err(|m| anyhow::anyhow!("tensor `{}`: {m}", view.info.name))?;
                out.write_all(&bytes)?;
            }
            None => out.write_all(view.data)?,
        }
    }
    out.commit()?;
    eprintln!(
        "git-theta: {}: {} tensors updated from {}",
        args.output.display(),
        updates.len(),
        args.adapter.display()
    );
    Ok(())
}

/// The staged manifest of `path`.
pub fn staged_manifest(path: &str) -> anyhow::Result<Manifest> {
    let out = git::output(&["cat-file", "blob", &format!(":{path}")], None)?;
    if !out.success || !looks_like_manifest(&out.stdout) {
        anyhow::bail!(
            "{path}: no staged git-theta version to update (add and commit the base model first)"
        );
    }
    Ok(Manifest::parse(&out.stdout)?)
}

/// The updates `adapter` makes to `tensors` (a manifest's entries).
pub fn updates_for<'a>(
    adapter: &Adapter,
    tensors: impl IntoIterator<Item = &'a TensorEntry>,
) -> anyhow::Result<std::collections::HashMap<String, Factored>> {
    let tensors: Vec<BaseTensor<'_>> = tensors
        .into_iter()
        .map(|t| BaseTensor {
            name: &t.name,
            shape: &t.shape,
        })
        .collect();
    adapter.updates(&tensors)
}

/// Rewrites the working-tree `path` as its staged version plus `adapter`.
pub fn side_load(path: &Path, adapter: &Adapter) -> anyhow::Result<()> {
    let rel = path.to_string_lossy().into_owned();
    let rel = if path.is_absolute() {
        rel
    } else {
        format!("./{rel}")
    };
    let manifest = staged_manifest(&rel)?;
    let diff = git::output(&["diff", "--quiet", "--", &rel], None)?;
    if !diff.success {
        anyhow::bail!(
            "{rel}: the file differs from its staged version; the adapter applies to the staged version, so stage or restore the file first"
        );
    }
    let updates = updates_for(adapter, &manifest.tensors)?;
    let store = Store::new(git::lfs_dir()?);
    let header = manifest
        .head
        .header
        .as_ref()
        .context("the staged manifest has no safetensors header")?;
    let header = store.get(&header.oid, header.size)?;
    let mut out = AtomicFile::create(path)?;
    out.write_all(&(header.len() as u64).to_le_bytes())?;
    out.write_all(&header)?;
    for t in &manifest.tensors {
        let mut chain = Chain::new(t, &store)?;
        let f = updates.get(&t.name);
        for i in 0..chain.lengths.len() {
            let Some(f) = f else {
                // Unchanged: written straight from the mapped object.
                out.write_all(&chain.piece(i)?)?;
                continue;
            };
            let mut bytes = chain.chunk(i)?;
            let tg = target(&t.name, &t.dtype, &t.shape)?;
            let row0 = t.chunk_rows.unwrap_or(0) * i as u64;
            f.apply(&tg, row0, &mut bytes)
                .map_err(|m| anyhow::anyhow!("tensor `{}`: {m}", t.name))?;
            out.write_all(&bytes)?;
        }
    }
    out.commit()?;
    eprintln!(
        "git-theta: {rel}: {} tensors updated from the adapter",
        updates.len()
    );
    Ok(())
}

//! `git theta inspect PATH`: a checkpoint's tensors and totals, read from
//! headers alone, so it answers at once on multi-gigabyte files.
//!
//! `--json` prints the report documented in `docs/inspect-json.md`.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::PathBuf;

use anyhow::Context;
use serde::Serialize;
use theta_engine::checkpoint::{self, Checkpoint};

use crate::format;

/// Arguments of `inspect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A .safetensors file, a sharded model's index file, or a model folder.
    pub path: PathBuf,
    /// Print a JSON report for scripts (schema: docs/inspect-json.md).
    #[arg(long)]
    pub json: bool,
}

/// Version of the JSON report's schema.
pub const SCHEMA: &str = "git-theta.inspect/1";

/// The report `inspect --json` prints.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Always [`SCHEMA`].
    pub schema: &'static str,
    /// The path inspected.
    pub path: String,
    /// `safetensors` or `safetensors-sharded`.
    pub format: &'static str,
    /// Model-level metadata.
    pub metadata: BTreeMap<String, String>,
    /// The files of the checkpoint.
    pub files: Vec<FileReport>,
    /// Every tensor, in storage order.
    pub tensors: Vec<TensorReport>,
    /// Sums over all tensors.
    pub totals: Totals,
}

/// One file of the checkpoint.
#[derive(Debug, Serialize)]
pub struct FileReport {
    /// Its path.
    pub path: String,
    /// Its size.
    pub bytes: u64,
    /// Size of its JSON header.
    pub header_bytes: u64,
    /// Tensors it holds.
    pub tensors: usize,
    /// Its `__metadata__`.
    pub metadata: BTreeMap<String, String>,
}

/// One tensor.
#[derive(Debug, Serialize)]
pub struct TensorReport {
    /// Name.
    pub name: String,
    /// safetensors dtype name.
    pub dtype: &'static str,
    /// Dimensions.
    pub shape: Vec<u64>,
    /// Elements.
    pub parameters: u64,
    /// Bytes of data.
    pub bytes: u64,
}

/// Sums, overall and per dtype.
#[derive(Debug, Default, Serialize)]
pub struct Totals {
    /// Number of tensors.
    pub tensors: u64,
    /// Number of elements.
    pub parameters: u64,
    /// Bytes of tensor data.
    pub bytes: u64,
    /// The same sums per dtype.
    pub by_dtype: BTreeMap<&'static str, Sums>,
}

/// Sums for one dtype.
#[derive(Debug, Default, Serialize)]
pub struct Sums {
    /// Number of tensors.
    pub tensors: u64,
    /// Number of elements.
    pub parameters: u64,
    /// Bytes of tensor data.
    pub bytes: u64,
}

/// Builds the report for an opened checkpoint.
pub fn report(ckpt: &dyn Checkpoint) -> Report {
    let mut totals = Totals::default();
    let tensors: Vec<TensorReport> = ckpt
        .tensors()
        .iter()
        .map(|t| {
            let (parameters, bytes) = (t.numel(), t.nbytes());
            let sums = totals.by_dtype.entry(t.dtype.name()).or_default();
            sums.tensors += 1;
            sums.parameters += parameters;
            sums.bytes += bytes;
            totals.tensors += 1;
            totals.parameters += parameters;
            totals.bytes += bytes;
            TensorReport {
                name: t.name.clone(),
                dtype: t.dtype.name(),
                shape: t.shape.clone(),
                parameters,
                bytes,
            }
        })
        .collect();
    Report {
        schema: SCHEMA,
        path: ckpt.path().display().to_string(),
        format: ckpt.format(),
        metadata: ckpt.metadata().into_iter().collect(),
        files: ckpt
            .files()
            .into_iter()
            .map(|f| FileReport {
                path: f.path.display().to_string(),
                bytes: f.bytes,
                header_bytes: f.header_bytes,
                tensors: f.tensors,
                metadata: f.metadata.into_iter().collect(),
            })
            .collect(),
        tensors,
        totals,
    }
}

/// Runs `inspect`.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let ckpt = checkpoint::open(&args.path)
        .with_context(|| format!("cannot inspect {}", args.path.display()))?;
    let report = report(ckpt.as_ref());
    let mut out = io::BufWriter::new(io::stdout().lock());
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        write_table(&mut out, &report)?;
    }
    out.flush()?;
    Ok(())
}

/// The human-readable report.
pub fn write_table(out: &mut impl Write, r: &Report) -> io::Result<()> {
    let files = r.files.len();
    let file_bytes: u64 = r.files.iter().map(|f| f.bytes).sum();
    writeln!(
        out,
        "{}: {} ({} file{}, {})",
        r.path,
        r.format,
        files,
        if files == 1 { "" } else { "s" },
        format::bytes(file_bytes)
    )?;
    writeln!(out)?;
    let shapes: Vec<String> = r.tensors.iter().map(|t| format::shape(&t.shape)).collect();
    let name_w = r
        .tensors
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(0)
        .max(4);
    let shape_w = shapes.iter().map(String::len).max().unwrap_or(0).max(5);
    let params: Vec<String> = r.tensors.iter().map(|t| t.parameters.to_string()).collect();
    let param_w = params.iter().map(String::len).max().unwrap_or(0).max(10);
    writeln!(
        out,
        "{:<name_w$}  {:<7}  {:<shape_w$}  {:>param_w$}  {:>10}",
        "NAME", "DTYPE", "SHAPE", "PARAMETERS", "BYTES"
    )?;
    for ((t, shape), p) in r.tensors.iter().zip(&shapes).zip(&params) {
        writeln!(
            out,
            "{:<name_w$}  {:<7}  {:<shape_w$}  {:>param_w$}  {:>10}",
            t.name,
            t.dtype,
            shape,
            p,
            format::bytes(t.bytes)
        )?;
    }
    writeln!(out)?;
    let t = &r.totals;
    writeln!(
        out,
        "total: {} tensors, {} parameters ({}), {}",
        t.tensors,
        t.parameters,
        format::count(t.parameters),
        format::bytes(t.bytes)
    )?;
    for (dtype, s) in &t.by_dtype {
        writeln!(
            out,
            "  {dtype:<7} {} tensors, {} parameters ({}), {}",
            s.tensors,
            s.parameters,
            format::count(s.parameters),
            format::bytes(s.bytes)
        )?;
    }
    if !r.metadata.is_empty() {
        writeln!(out, "metadata:")?;
        for (k, v) in &r.metadata {
            writeln!(out, "  {k} = {v}")?;
        }
    }
    if r.files.len() > 1 {
        writeln!(out, "files:")?;
        for f in &r.files {
            writeln!(
                out,
                "  {}  {} tensors, {}",
                f.path,
                f.tensors,
                format::bytes(f.bytes)
            )?;
        }
    }
    Ok(())
}

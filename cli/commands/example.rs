//! `git theta example DIR`: writes a deterministic Llama-shaped model (and
//! its `config.json`) to try git-theta on without downloading anything.

use std::path::PathBuf;

use anyhow::Context;
use theta_engine::safetensors::{ShardPlan, ShardedWriter};
use theta_engine::synth::{self, LlamaShape};
use theta_engine::{DType, parse_user_dtype};

use crate::format;

/// Arguments of `example`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folder to write the model into (created if missing).
    pub dir: PathBuf,
    /// Approximate number of parameters (e.g. 5M, 1B); default: a 4.5M-parameter model.
    #[arg(long, value_parser = parse_count)]
    pub params: Option<u64>,
    /// Element type: bf16, f16, f32 or f64.
    #[arg(long, default_value = "bf16", value_parser = parse_dtype)]
    pub dtype: DType,
    /// Seed of the weights; different seeds give different models of the same shape.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Split into shards of at most this size (e.g. 2GB, 500MB), with an index.
    #[arg(long, value_parser = parse_size)]
    pub shard_size: Option<u64>,
    /// Make a small fine-tune of the model: change (by about 5%) only the
    /// tensors whose names contain PATTERN (repeatable, e.g. --tune layers.3.).
    #[arg(long, value_name = "PATTERN")]
    pub tune: Vec<String>,
    /// Seed of the --tune changes; different seeds give different fine-tunes.
    #[arg(long, default_value_t = 1, requires = "tune")]
    pub tune_seed: u64,
}

fn parse_dtype(s: &str) -> Result<DType, String> {
    parse_user_dtype(s)
        .map_err(|e| e.to_string())
        .and_then(|d| {
            if d.is_float() {
                Ok(d)
            } else {
                Err(format!("{d} is not a floating-point dtype"))
            }
        })
}

/// Parses `1B`, `500M`, `7e9`, `1000`.
pub fn parse_count(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1e3),
        Some((i, 'm' | 'M')) => (&s[..i], 1e6),
        Some((i, 'b' | 'B' | 'g' | 'G')) => (&s[..i], 1e9),
        _ => (s, 1.0),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a count like 500M or 1B"))?;
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("`{s}` must be positive"));
    }
    Ok((v * mult) as u64)
}

/// Parses sizes like `2GB`, `500MB`, `64MiB`, `1000000`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => {
            return Err(format!(
                "unknown size unit in `{s}` (use B, KB, MB, GB, KiB, MiB or GiB)"
            ));
        }
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a size like 2GB"))?;
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("`{s}` must be positive"));
    }
    Ok((v * mult) as u64)
}

/// Elements generated at a time: bounds memory whatever the tensor size.
const CHUNK_ELEMS: u64 = 1 << 22;

/// Runs `example`.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let shape = args
        .params
        .map_or(LlamaShape::TINY, LlamaShape::with_params);
    let tensors = shape.tensors(args.dtype);
    let metadata = vec![("format".to_owned(), "pt".to_owned())];
    let plan = ShardPlan::new(
        "model",
        &tensors,
        &metadata,
        args.shard_size.unwrap_or(u64::MAX),
    )?;
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let tune = (!args.tune.is_empty()).then(|| synth::Tune {
        patterns: args.tune.clone(),
        seed: args.tune_seed,
    });
    if let Some(t) = &tune
        && !tensors.iter().any(|x| t.touches(&x.name))
    {
        anyhow::bail!(
            "--tune {}: no tensor name contains it",
            t.patterns.join(", ")
        );
    }
    let mut writer = ShardedWriter::create(&args.dir, plan.clone())?;
    for t in plan.tensors() {
        let n = t.numel();
        let mut start = 0;
        while start < n {
            let count = (n - start).min(CHUNK_ELEMS);
            let bytes =
                synth::tuned_tensor_bytes(args.seed, tune.as_ref(), t, start, count as usize)?;
            writer.write_part(&t.name, &bytes)?;
            start += count;
        }
    }
    let written = writer.finish()?;
    theta_engine::io::write_atomic(
        args.dir.join("config.json"),
        shape.config_json(args.dtype).as_bytes(),
    )?;
    let shards = written
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .count();
    let params = shape.params();
    eprintln!(
        "wrote a Llama-shaped example model: {params} parameters ({}), {} tensors, {} in {} under {}",
        format::count(params),
        tensors.len(),
        format::bytes(params * args.dtype.size() as u64),
        if shards == 1 {
            "1 file".to_owned()
        } else {
            format!("{shards} shards with an index")
        },
        args.dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counts_and_sizes() {
        assert_eq!(parse_count("1B"), Ok(1_000_000_000));
        assert_eq!(parse_count("4.5M"), Ok(4_500_000));
        assert!(parse_count("x").is_err());
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert!(parse_size("3 parsecs").is_err());
    }
}

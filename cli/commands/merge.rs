//! `git theta merge`: mergekit-compatible merges, streamed tensor by tensor.
//!
//! ```text
//! git theta merge CONFIG.yml OUT_DIR
//! git theta merge --method ties --base BASE A:0.6 B:0.4 --density 0.5 -o OUT_DIR
//! ```
//!
//! The short form is turned into the same YAML a config file would hold, so
//! both take one path and the model card shows the configuration used.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use theta_engine::checkpoint::{self, Checkpoint};
use theta_engine::merge::{self, MergeConfig, OutputOptions, TensorMerge};

use crate::commands::example::parse_size;
use crate::format;

/// Arguments of `merge`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  git theta merge config.yml merged/\n  git theta merge --method ties --base base/ a/:0.6 b/:0.4 --density 0.5 -o merged/"
)]
pub struct Args {
    /// CONFIG.yml OUT_DIR; or, with --method, the models as MODEL[:WEIGHT].
    #[arg(value_name = "ARGS", required = true)]
    pub inputs: Vec<String>,
    /// Merge method (short form): linear, task_arithmetic, ties, slerp, passthrough, ...
    #[arg(long)]
    pub method: Option<String>,
    /// Base model (short form).
    #[arg(long)]
    pub base: Option<String>,
    /// Density for every model (short form; TIES, DARE, breadcrumbs, DELLA).
    #[arg(long)]
    pub density: Option<f64>,
    /// Further top-level parameters (short form), e.g. --param lambda=0.8 --param t=0.3.
    #[arg(long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    /// Output folder (short form).
    #[arg(short = 'o', long = "out")]
    pub out: Option<PathBuf>,
    /// Element type to write (bfloat16, float16, float32); default: the config's, else the inputs'.
    #[arg(long)]
    pub dtype: Option<String>,
    /// Largest output shard (e.g. 5GB, 500MB).
    #[arg(long, default_value = "5GB", value_parser = parse_size)]
    pub out_shard_size: u64,
    /// Check the configuration against the models and print the plan, writing nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Seed of the random draws of DARE and DELLA (same seed, same output).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where the arithmetic runs.
    #[command(flatten)]
    pub device: crate::commands::doctor::DeviceArgs,
}

/// Files copied from the base (else first) model's folder beside the merged weights.
const COPIED: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
];

/// Runs `merge`.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let (yaml, source, out_dir) = config_text(args)?;
    let mut config = MergeConfig::from_yaml(&yaml, &source)?;
    if let Some(d) = &args.dtype {
        config.out_dtype = Some(d.clone());
    }
    let names: Vec<String> = config
        .referenced_models()
        .iter()
        .map(|s| s.to_string())
        .collect();
    let opened: Vec<(String, Box<dyn Checkpoint>)> = names
        .iter()
        .map(|n| {
            Ok((
                n.clone(),
                checkpoint::open(n).with_context(|| format!("cannot open model {n}"))?,
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    let models: Vec<(&str, &dyn Checkpoint)> = opened
        .iter()
        .map(|(n, c)| (n.as_str(), c.as_ref()))
        .collect();
    let plan =
        merge::plan(&config, &models).map_err(|e| anyhow::anyhow!("{}: {e}", source.display()))?;
    for w in &plan.warnings {
        eprintln!("git-theta: warning: {w}");
    }
    let total: u64 = plan.tensors.iter().map(|t| t.output.nbytes()).sum();
    if args.dry_run {
        println!(
            "{}: {} merge of {} models into {} tensors ({}); nothing written",
            source.display(),
            plan.method.name,
            plan.models.len(),
            plan.tensors.len(),
            format::bytes(total)
        );
        return Ok(());
    }
    let merger = merger_for(plan.method, args)?;
    let out = OutputOptions {
        dir: out_dir.clone(),
        max_shard_bytes: args.out_shard_size,
        metadata: vec![("format".into(), "pt".into())],
    };
    let bar = progress_bar(total);
    let started = std::time::Instant::now();
    let files = merge::run(&plan, &models, merger.as_ref(), &out, &mut |n| bar.inc(n))?;
    bar.finish_and_clear();

    let donor = plan
        .base
        .or(Some(0))
        .map(|i| model_folder(models[i].1.path()));
    if let Some(donor) = donor {
        for name in COPIED {
            let from = donor.join(name);
            if from.is_file() {
                let mut bytes = std::fs::read(&from)
                    .with_context(|| format!("cannot read {}", from.display()))?;
                if *name == "config.json" {
                    bytes = with_layer_count(&bytes, merged_layers(&plan))
                        .with_context(|| format!("cannot update {}", from.display()))?;
                }
                theta_engine::io::write_atomic(out_dir.join(name), &bytes)?;
            }
        }
    }
    theta_engine::io::write_atomic(
        out_dir.join("README.md"),
        model_card(&config, &yaml, args.seed).as_bytes(),
    )?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "merged {} models with {} into {} ({} in {} file{}, {:.1} s, {}/s)",
        plan.models.len(),
        plan.method.name,
        out_dir.display(),
        format::bytes(total),
        files.len(),
        if files.len() == 1 { "" } else { "s" },
        secs,
        format::bytes((total as f64 / secs.max(1e-9)) as u64)
    );
    Ok(())
}

/// The per-tensor arithmetic of a method (passthrough copies and needs no device).
fn merger_for(
    method: &'static merge::MethodSpec,
    args: &Args,
) -> anyhow::Result<Box<dyn TensorMerge>> {
    if method.name == "passthrough" {
        return Ok(Box::new(merge::Passthrough));
    }
    let device = args.device.device()?;
    match merge::DeviceMerge::new(method, device, args.seed) {
        Some(m) => Ok(Box::new(m)),
        None => bail!(
            "merge method `{}` has no arithmetic in this build",
            method.name
        ),
    }
}

/// Layers of the merged model.
fn merged_layers(plan: &merge::MergePlan) -> Option<u64> {
    plan.tensors
        .iter()
        .filter_map(|t| merge::layer_index(&t.output.name))
        .max()
        .map(|m| m + 1)
}

/// A Hugging Face config with `num_hidden_layers` set to the merged model's
/// (slices can add or drop layers); unchanged when it already agrees.
fn with_layer_count(config: &[u8], layers: Option<u64>) -> anyhow::Result<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(config)?;
    let (Some(layers), Some(obj)) = (layers, v.as_object_mut()) else {
        return Ok(config.to_vec());
    };
    if obj
        .get("num_hidden_layers")
        .and_then(serde_json::Value::as_u64)
        == Some(layers)
    {
        return Ok(config.to_vec());
    }
    obj.insert("num_hidden_layers".into(), layers.into());
    let mut out = serde_json::to_vec_pretty(&v)?;
    out.push(b'\n');
    Ok(out)
}

/// The configuration's YAML, a name for it in messages, and the output folder.
fn config_text(args: &Args) -> anyhow::Result<(String, PathBuf, PathBuf)> {
    let Some(method) = &args.method else {
        let [config, out] = args.inputs.as_slice() else {
            bail!("give CONFIG.yml and OUT_DIR, or --method with models and -o OUT_DIR");
        };
        if args.out.is_some()
            || args.base.is_some()
            || args.density.is_some()
            || !args.params.is_empty()
        {
            bail!(
                "--base, --density, --param and -o belong to the short form (with --method); a config file says it all"
            );
        }
        let text =
            std::fs::read_to_string(config).with_context(|| format!("cannot read {config}"))?;
        return Ok((text, PathBuf::from(config), PathBuf::from(out)));
    };
    let out = args
        .out
        .clone()
        .context("the short form needs -o OUT_DIR")?;
    let mut y = String::from("models:\n");
    for m in &args.inputs {
        let (path, weight) = split_weight(m)?;
        let _ = writeln!(y, "  - model: {}", yaml_str(path));
        let mut params = Vec::new();
        if let Some(w) = weight {
            params.push(format!("weight: {w}"));
        }
        if let Some(d) = args.density {
            params.push(format!("density: {d}"));
        }
        if !params.is_empty() {
            let _ = writeln!(y, "    parameters: {{{}}}", params.join(", "));
        }
    }
    if let Some(b) = &args.base {
        let _ = writeln!(y, "base_model: {}", yaml_str(b));
    }
    let _ = writeln!(y, "merge_method: {}", yaml_str(method));
    if !args.params.is_empty() {
        y.push_str("parameters:\n");
        for p in &args.params {
            let (k, v) = p
                .split_once('=')
                .with_context(|| format!("--param {p}: expected NAME=VALUE"))?;
            let _ = writeln!(y, "  {}: {}", k.trim(), v.trim());
        }
    }
    Ok((y, PathBuf::from("<command line>"), out))
}

/// `path:0.5` → (`path`, Some(0.5)); a colon not followed by a number is part of the path.
fn split_weight(arg: &str) -> anyhow::Result<(&str, Option<f64>)> {
    if let Some((path, w)) = arg.rsplit_once(':')
        && let Ok(w) = w.parse::<f64>()
    {
        if !w.is_finite() {
            bail!("{arg}: weight must be a finite number");
        }
        return Ok((path, Some(w)));
    }
    Ok((arg, None))
}

/// A YAML double-quoted scalar.
fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}

fn model_folder(path: &Path) -> PathBuf {
    if path.is_dir() {
        return path.to_path_buf();
    }
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn progress_bar(total: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} merging [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// A Hugging Face model card naming the method, its parameters and inputs.
fn model_card(config: &MergeConfig, yaml: &str, seed: u64) -> String {
    let mut card = String::from("---\nlibrary_name: transformers\ntags:\n- merge\n- git-theta\n");
    if let Some(b) = &config.base_model {
        let _ = writeln!(card, "base_model: {}", yaml_str(b));
    }
    card.push_str("---\n\n# Merged model\n\n");
    let _ = writeln!(
        card,
        "This model was merged with [git-theta](https://github.com/git-theta/git-theta) using the **{}** method.\n",
        config.merge_method
    );
    card.push_str("## Models merged\n\n");
    for m in config.referenced_models() {
        let role = if config.base_model.as_deref() == Some(m) {
            " (base)"
        } else {
            ""
        };
        let _ = writeln!(card, "- `{m}`{role}");
    }
    card.push_str("\n## Configuration\n\n```yaml\n");
    card.push_str(yaml.trim_end());
    card.push_str("\n```\n");
    if config.merge_method.starts_with("dare") || config.merge_method.starts_with("della") {
        let _ = writeln!(
            card,
            "\nRandom draws: git-theta's generator with `--seed {seed}` (the same seed gives the same model on the same device)."
        );
    }
    card
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_split_only_on_numbers() {
        assert_eq!(split_weight("a/b:0.5").expect("ok"), ("a/b", Some(0.5)));
        assert_eq!(
            split_weight("C:/models/x").expect("ok"),
            ("C:/models/x", None)
        );
        assert_eq!(split_weight("plain").expect("ok"), ("plain", None));
    }
}

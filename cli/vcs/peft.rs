//! Reading PEFT adapters (LoRA and IA3 folders as `save_pretrained` writes
//! them: `adapter_config.json` + `adapter_model.safetensors`) into updates
//! of a base checkpoint's tensors.
//!
//! LoRA: `base_model.model.<module>.lora_A.weight` `[r, in]` and
//! `…lora_B.weight` `[out, r]` update `<module>.weight` by `s·B·A`, where
//! `s = alpha / r` (`alpha / √r` with `use_rslora`); `r` and `alpha` come from
//! `rank_pattern` / `alpha_pattern` when a key matches the module, else from
//! `r` / `lora_alpha`. With `fan_in_fan_out` (GPT-2's Conv1D, weights stored
//! `[in, out]`) and for embeddings (`lora_embedding_A`/`_B`) the update is
//! transposed. IA3: `…<module>.ia3_l.weight` scales the weight's rows
//! (`[out, 1]`) or, for `feedforward_modules`, its columns (`[1, in]`).
//!
//! Pattern keys match a module when they equal it or a dot-separated suffix
//! of it; PEFT treats them as regular expressions, which this reader does
//! not (a key with regex syntax other than `.` is refused, never guessed).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;
use theta_engine::safetensors::SafetensorsFile;

use super::choose::Factored;
use super::lowrank::{Axis, Factors};
use crate::commands::update::Kind;

/// `adapter_config.json`, the fields used.
#[derive(Debug, Deserialize)]
struct Config {
    peft_type: String,
    #[serde(default)]
    r: Option<f64>,
    #[serde(default)]
    lora_alpha: Option<f64>,
    #[serde(default)]
    rank_pattern: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    alpha_pattern: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    feedforward_modules: Option<serde_json::Value>,
}

/// An adapter folder, opened.
pub struct Adapter {
    dir: PathBuf,
    config: Config,
    file: SafetensorsFile,
}

/// A base tensor an adapter may update: its name and shape.
pub struct BaseTensor<'a> {
    /// Name in the checkpoint.
    pub name: &'a str,
    /// Shape.
    pub shape: &'a [u64],
}

const PREFIX: &str = "base_model.model.";

fn matches(key: &str, module: &str) -> bool {
    module == key || module.ends_with(&format!(".{key}"))
}

/// The value of the first pattern key matching `module`.
fn pattern(
    map: &serde_json::Map<String, serde_json::Value>,
    module: &str,
    what: &str,
) -> anyhow::Result<Option<f64>> {
    for (key, v) in map {
        if key.chars().any(|c| "^$*+?()[]{}|\\".contains(c)) {
            bail!(
                "{what} key `{key}` is a regular expression, which git-theta does not evaluate; use module names"
            );
        }
        if matches(key, module) {
            let v = v
                .as_f64()
                .with_context(|| format!("{what} `{key}`: not a number"))?;
            return Ok(Some(v));
        }
    }
    Ok(None)
}

impl Adapter {
    /// Opens `dir` (or an `adapter_model.safetensors` whose folder has the config).
    pub fn open(dir: &Path) -> anyhow::Result<Adapter> {
        let dir = if dir.is_file() {
            dir.parent().unwrap_or(Path::new(".")).to_path_buf()
        } else {
            dir.to_path_buf()
        };
        let cfg_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&cfg_path)
            .with_context(|| format!("{}: not a PEFT adapter folder", cfg_path.display()))?;
        let config: Config = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a PEFT adapter config", cfg_path.display()))?;
        if config.use_dora {
            bail!(
                "{}: DoRA adapters (use_dora) are not supported",
                cfg_path.display()
            );
        }
        let weights = dir.join("adapter_model.safetensors");
        let file = SafetensorsFile::open(&weights)
            .with_context(|| format!("{}: cannot read the adapter weights", weights.display()))?;
        let adapter = Adapter { dir, config, file };
        adapter.kind_checked()?;
        Ok(adapter)
    }

    fn kind_checked(&self) -> anyhow::Result<Kind> {
        match self.config.peft_type.as_str() {
            "LORA" => Ok(Kind::LowRank),
            "IA3" => Ok(Kind::Ia3),
            other => bail!(
                "{}: PEFT type `{other}` is not supported (LORA and IA3 are)",
                self.dir.display()
            ),
        }
    }

    /// The update kind the adapter makes.
    pub fn kind(&self) -> Kind {
        self.kind_checked().unwrap_or(Kind::LowRank)
    }

    fn f32s(&self, name: &str) -> anyhow::Result<(Vec<u64>, Vec<f32>)> {
        let view = self.file.tensor(name)?;
        let values = view
            .to_f32()
            .with_context(|| format!("{}: tensor `{name}`", self.dir.display()))?;
        Ok((view.info.shape.clone(), values))
    }

    /// The update of each base tensor the adapter touches, by name.
    pub fn updates(&self, base: &[BaseTensor<'_>]) -> anyhow::Result<HashMap<String, Factored>> {
        let by_name: HashMap<&str, &[u64]> = base.iter().map(|b| (b.name, b.shape)).collect();
        let resolve = |module: &str, key: &str| -> anyhow::Result<(String, Vec<u64>)> {
            let mut m = module;
            loop {
                let name = format!("{m}.weight");
                if let Some(shape) = by_name.get(name.as_str()) {
                    return Ok((name, shape.to_vec()));
                }
                match m.split_once('.') {
                    Some((_, rest)) => m = rest,
                    None => bail!(
                        "{}: `{key}` updates `{module}.weight`, which the checkpoint does not have",
                        self.dir.display()
                    ),
                }
            }
        };
        let mut out = HashMap::new();
        let ia3 = self.kind() == Kind::Ia3;
        for info in self.file.tensors() {
            let key = info.name.as_str();
            let inner = key.strip_prefix(PREFIX).unwrap_or(key);
            let ctx = |m: &str| format!("{}: `{key}`: {m}", self.dir.display());
            if ia3 {
                let Some(module) = inner
                    .strip_suffix(".ia3_l.weight")
                    .or_else(|| inner.strip_suffix(".ia3_l"))
                else {
                    bail!(ctx("not an IA3 vector (`…ia3_l.weight`)"));
                };
                let (name, shape) = resolve(module, key)?;
                let (vshape, v) = self.f32s(key)?;
                let feedforward = self.is_feedforward(module);
                let (rows, cols) = (
                    shape.first().copied().unwrap_or(1),
                    shape.iter().skip(1).product::<u64>(),
                );
                // The vector as PEFT stores it, for a weight [out, in].
                let (axis, len) = match (vshape.as_slice(), feedforward) {
                    ([n, 1], false) => (Axis::Rows, *n),
                    ([1, n], true) => (Axis::Cols, *n),
                    (s, f) => bail!(ctx(&format!(
                        "shape {s:?} does not fit a {} module",
                        if f {
                            "feed-forward ([1, in])"
                        } else {
                            "non-feed-forward ([out, 1])"
                        }
                    ))),
                };
                // fan_in_fan_out weights are [in, out]: the other axis.
                let axis = match (axis, self.config.fan_in_fan_out) {
                    (a, false) => a,
                    (Axis::Rows, true) => Axis::Cols,
                    (Axis::Cols, true) => Axis::Rows,
                };
                let want = if axis == Axis::Rows { rows } else { cols };
                if len != want {
                    bail!(ctx(&format!(
                        "{len} factors for `{name}` of shape {shape:?}"
                    )));
                }
                out.insert(name, Factored::Ia3(axis, v));
                continue;
            }
            let (module, embedding) = if let Some(m) = inner.strip_suffix(".lora_A.weight") {
                (m, false)
            } else if let Some(m) = inner.strip_suffix(".lora_embedding_A") {
                (m, true)
            } else if inner.ends_with(".lora_B.weight") || inner.ends_with(".lora_embedding_B") {
                continue;
            } else {
                bail!(ctx(
                    "not a LoRA factor (lora_A/lora_B; biases, DoRA magnitudes and other extras are not supported)"
                ));
            };
            let b_key = if embedding {
                key.replace(".lora_embedding_A", ".lora_embedding_B")
            } else {
                key.replace(".lora_A.weight", ".lora_B.weight")
            };
            if self.file.get(&b_key).is_none() {
                bail!(ctx(&format!("no matching `{b_key}`")));
            }
            let (name, shape) = resolve(module, key)?;
            let (ashape, a) = self.f32s(key)?;
            let (bshape, b) = self.f32s(&b_key)?;
            let r = *ashape.first().context(ctx("a scalar factor"))?;
            let a_cols: u64 = ashape.iter().skip(1).product();
            let b_rows = *bshape.first().context(ctx("a scalar factor"))?;
            if bshape.iter().skip(1).product::<u64>() != r || r == 0 {
                bail!(ctx(&format!(
                    "lora_A {ashape:?} and lora_B {bshape:?} do not share a rank"
                )));
            }
            let r_cfg = pattern(&self.config.rank_pattern, module, "rank_pattern")?
                .or(self.config.r)
                .unwrap_or(r as f64);
            if r_cfg != r as f64 {
                bail!(ctx(&format!("rank {r} where the config says {r_cfg}")));
            }
            let alpha = pattern(&self.config.alpha_pattern, module, "alpha_pattern")?
                .or(self.config.lora_alpha)
                .unwrap_or(r_cfg);
            let scale = if self.config.use_rslora {
                alpha / r_cfg.sqrt()
            } else {
                alpha / r_cfg
            } as f32;
            // ΔW = B·A as [out, in]; transposed weights get Aᵀ·Bᵀ.
            let transposed = embedding || self.config.fan_in_fan_out;
            let (f_b, f_a, rows, cols) = if transposed {
                (
                    transpose(&a, r, a_cols),
                    transpose(&b, b_rows, r),
                    a_cols,
                    b_rows,
                )
            } else {
                (b, a, b_rows, a_cols)
            };
            let (w_rows, w_cols) = (
                shape.first().copied().unwrap_or(1),
                shape.iter().skip(1).product::<u64>(),
            );
            if (rows, cols) != (w_rows, w_cols) {
                bail!(ctx(&format!(
                    "makes a [{rows} × {cols}] update for `{name}` of shape {shape:?}"
                )));
            }
            out.insert(
                name,
                Factored::LowRank(Factors {
                    rank: r as u32,
                    scale,
                    b: f_b,
                    a: f_a,
                }),
            );
        }
        if out.is_empty() {
            bail!(
                "{}: the adapter has no LoRA or IA3 tensors",
                self.dir.display()
            );
        }
        Ok(out)
    }

    fn is_feedforward(&self, module: &str) -> bool {
        match &self.config.feedforward_modules {
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .filter_map(|v| v.as_str())
                .any(|k| matches(k, module)),
            Some(serde_json::Value::String(k)) => matches(k, module),
            _ => false,
        }
    }
}

/// `m` (`rows × cols`, row-major) transposed.
fn transpose(m: &[f32], rows: u64, cols: u64) -> Vec<f32> {
    let (rows, cols) = (rows as usize, cols as usize);
    let mut out = vec![0f32; m.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = m[r * cols + c];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use theta_engine::safetensors::HeaderPlan;
    use theta_engine::{DType, TensorInfo};

    fn adapter(
        config: &str,
        tensors: &[(&str, Vec<u64>)],
    ) -> (tempfile::TempDir, anyhow::Result<Adapter>) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("adapter_config.json"), config).expect("config");
        let infos: Vec<TensorInfo> = tensors
            .iter()
            .map(|(n, s)| TensorInfo::new(*n, DType::F32, s.clone()))
            .collect();
        let plan = HeaderPlan::new(&infos, &vec![]).expect("plan");
        let mut out = (plan.header_bytes().len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(plan.header_bytes());
        for info in plan.tensors() {
            let n: u64 = info.shape.iter().product();
            for i in 0..n {
                out.extend_from_slice(&(i as f32).to_le_bytes());
            }
        }
        std::fs::write(dir.path().join("adapter_model.safetensors"), out).expect("weights");
        let a = Adapter::open(dir.path());
        (dir, a)
    }

    const A: &str = "base_model.model.h.0.attn.c_attn.lora_A.weight";
    const B: &str = "base_model.model.h.0.attn.c_attn.lora_B.weight";

    #[test]
    fn fan_in_fan_out_transposes_and_rslora_scales_by_the_root() {
        let cfg =
            r#"{"peft_type":"LORA","r":4,"lora_alpha":8,"fan_in_fan_out":true,"use_rslora":true}"#;
        let (_d, a) = adapter(cfg, &[(A, vec![4, 6]), (B, vec![3, 4])]);
        let a = a.expect("open");
        // GPT-2's Conv1D: the weight is [in, out] = [6, 3].
        let shape = [6u64, 3];
        let base = [BaseTensor {
            name: "h.0.attn.c_attn.weight",
            shape: &shape,
        }];
        let u = a.updates(&base).expect("updates");
        let Some(Factored::LowRank(f)) = u.get("h.0.attn.c_attn.weight") else {
            panic!("no low-rank update: {:?}", u.keys().collect::<Vec<_>>());
        };
        assert_eq!(f.scale, 4.0, "alpha / sqrt(r)");
        // B' = Aᵀ: [6 × 4]; its row 1 is A's column 1: 1, 7, 13, 19.
        assert_eq!(&f.b[4..8], &[1.0, 7.0, 13.0, 19.0]);
        // A' = Bᵀ: [4 × 3].
        assert_eq!(&f.a[..3], &[0.0, 4.0, 8.0]);
        // Not transposed, the shapes do not fit.
        let shape = [3u64, 6];
        let base = [BaseTensor {
            name: "h.0.attn.c_attn.weight",
            shape: &shape,
        }];
        let err = a.updates(&base).expect_err("shape").to_string();
        assert!(err.contains(A) && err.contains("[6 × 3]"), "{err}");
    }

    #[test]
    fn bad_adapters_are_named_errors() {
        let shape = [3u64, 6];
        let base = [BaseTensor {
            name: "h.0.attn.c_attn.weight",
            shape: &shape,
        }];
        let cfg = r#"{"peft_type":"LORA","r":2,"lora_alpha":8}"#;
        let (_d, a) = adapter(cfg, &[(A, vec![4, 6]), (B, vec![3, 4])]);
        let err = a
            .expect("open")
            .updates(&base)
            .expect_err("rank")
            .to_string();
        assert!(err.contains("rank 4 where the config says 2"), "{err}");
        let cfg =
            r#"{"peft_type":"LORA","r":4,"lora_alpha":8,"alpha_pattern":{"h\\.[0-9]+\\.attn":2}}"#;
        let (_d, a) = adapter(cfg, &[(A, vec![4, 6]), (B, vec![3, 4])]);
        let err = a
            .expect("open")
            .updates(&base)
            .expect_err("regex")
            .to_string();
        assert!(err.contains("regular expression"), "{err}");
        let (_d, a) = adapter(
            r#"{"peft_type":"LORA","r":4,"use_dora":true}"#,
            &[(A, vec![4, 6])],
        );
        assert!(a.err().expect("dora").to_string().contains("DoRA"));
        let (_d, a) = adapter(r#"{"peft_type":"PREFIX_TUNING"}"#, &[(A, vec![4, 6])]);
        assert!(a.err().expect("type").to_string().contains("PREFIX_TUNING"));
        let (_d, a) = adapter(r#"{"peft_type":"LORA","r":4}"#, &[(A, vec![4, 6])]);
        let err = a
            .expect("open")
            .updates(&base)
            .expect_err("no B")
            .to_string();
        assert!(err.contains("no matching"), "{err}");
        let cfg = r#"{"peft_type":"LORA","r":4}"#;
        let (_d, a) = adapter(cfg, &[(A, vec![4, 6]), (B, vec![3, 4])]);
        let other = [BaseTensor {
            name: "wte.weight",
            shape: &shape,
        }];
        let err = a
            .expect("open")
            .updates(&other)
            .expect_err("missing")
            .to_string();
        assert!(err.contains("h.0.attn.c_attn.weight"), "{err}");
    }
}

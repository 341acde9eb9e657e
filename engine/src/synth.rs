//! Deterministic synthetic models: Llama-shaped checkpoints of any size,
//! for the example, tests and benchmarks. Values come from a counter-based
//! generator keyed by (seed, tensor name, element index), so any tensor or
//! any part of one can be produced on its own, in parallel, identically.

use rayon::prelude::*;

use std::path::{Path, PathBuf};

use crate::convert;
use crate::safetensors::{ShardPlan, ShardedWriter};
use crate::tensor::TensorInfo;
use crate::{DType, Result};

/// The dimensions of a Llama-style decoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LlamaShape {
    /// Vocabulary size.
    pub vocab: u64,
    /// Hidden (model) width.
    pub hidden: u64,
    /// MLP width.
    pub intermediate: u64,
    /// Number of decoder layers.
    pub layers: u64,
    /// Attention heads.
    pub heads: u64,
    /// Key/value heads (grouped-query attention).
    pub kv_heads: u64,
}

impl LlamaShape {
    /// A tiny model (about 4.5M parameters) for examples and tests.
    pub const TINY: LlamaShape = LlamaShape {
        vocab: 4096,
        hidden: 256,
        intermediate: 688,
        layers: 4,
        heads: 8,
        kv_heads: 4,
    };

    /// A minimal model (3 layers of width 8) for tests.
    pub const MICRO: LlamaShape = LlamaShape {
        vocab: 32,
        hidden: 8,
        intermediate: 16,
        layers: 3,
        heads: 2,
        kv_heads: 2,
    };

    /// Llama-2-7B's dimensions.
    pub const LLAMA_7B: LlamaShape = LlamaShape {
        vocab: 32000,
        hidden: 4096,
        intermediate: 11008,
        layers: 32,
        heads: 32,
        kv_heads: 32,
    };

    /// The shape with about `params` parameters: Llama-7B's proportions,
    /// scaled in width and depth.
    pub fn with_params(params: u64) -> LlamaShape {
        let mut best = LlamaShape::TINY;
        for hidden in (256u64..=8192).step_by(128) {
            let intermediate = (hidden * 11008 / 4096).div_ceil(16) * 16;
            let heads = (hidden / 128).max(1);
            for layers in 2..=80 {
                let s = LlamaShape {
                    vocab: 32000,
                    hidden,
                    intermediate,
                    layers,
                    heads,
                    kv_heads: heads,
                };
                if s.params().abs_diff(params) < best.params().abs_diff(params) {
                    best = s;
                }
                if s.params() > params {
                    break;
                }
            }
        }
        best
    }

    fn head_dim(&self) -> u64 {
        self.hidden / self.heads.max(1)
    }

    /// The tensors of the model, in Hugging Face names and order.
    pub fn tensors(&self, dtype: DType) -> Vec<TensorInfo> {
        let (h, i, v) = (self.hidden, self.intermediate, self.vocab);
        let kv = self.kv_heads * self.head_dim();
        let mut out = vec![TensorInfo::new("model.embed_tokens.weight", dtype, [v, h])];
        for l in 0..self.layers {
            let p = format!("model.layers.{l}");
            out.extend([
                TensorInfo::new(format!("{p}.self_attn.q_proj.weight"), dtype, [h, h]),
                TensorInfo::new(format!("{p}.self_attn.k_proj.weight"), dtype, [kv, h]),
                TensorInfo::new(format!("{p}.self_attn.v_proj.weight"), dtype, [kv, h]),
                TensorInfo::new(format!("{p}.self_attn.o_proj.weight"), dtype, [h, h]),
                TensorInfo::new(format!("{p}.mlp.gate_proj.weight"), dtype, [i, h]),
                TensorInfo::new(format!("{p}.mlp.up_proj.weight"), dtype, [i, h]),
                TensorInfo::new(format!("{p}.mlp.down_proj.weight"), dtype, [h, i]),
                TensorInfo::new(format!("{p}.input_layernorm.weight"), dtype, [h]),
                TensorInfo::new(format!("{p}.post_attention_layernorm.weight"), dtype, [h]),
            ]);
        }
        out.push(TensorInfo::new("model.norm.weight", dtype, [h]));
        out.push(TensorInfo::new("lm_head.weight", dtype, [v, h]));
        out
    }

    /// Total parameters.
    pub fn params(&self) -> u64 {
        self.tensors(DType::F32).iter().map(TensorInfo::numel).sum()
    }

    /// A Hugging Face `config.json` for this shape.
    pub fn config_json(&self, dtype: DType) -> String {
        let torch_dtype = match dtype {
            DType::BF16 => "bfloat16",
            DType::F16 => "float16",
            DType::F64 => "float64",
            _ => "float32",
        };
        let v = serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "vocab_size": self.vocab,
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5,
            "hidden_act": "silu",
            "tie_word_embeddings": false,
            "torch_dtype": torch_dtype,
        });
        serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
    }
}

/// SplitMix64's finaliser: a strong 64-bit mix.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a of a tensor name, to key per-tensor streams.
pub fn name_key(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Uniform in [-1, 1) from a 64-bit hash.
fn unit(bits: u64) -> f32 {
    ((bits >> 40) as f32 / (1u64 << 23) as f32) - 1.0
}

/// The value of element `index` of tensor `name` in the model `seed`:
/// norm weights near 1, other weights uniform with std ≈ 0.02.
pub fn value(seed: u64, name: &str, index: u64) -> f32 {
    let u = unit(mix64(mix64(seed ^ name_key(name)).wrapping_add(index)));
    if name.contains("norm") {
        1.0 + 0.05 * u
    } else {
        0.0346 * u
    }
}

/// Fills `out` with elements `start..start + out.len()` of tensor `name`.
pub fn fill_f32(seed: u64, name: &str, start: u64, out: &mut [f32]) {
    let (centre, spread) = if name.contains("norm") {
        (1.0, 0.05)
    } else {
        (0.0, 0.0346)
    };
    fill_uniform(mix64(seed ^ name_key(name)), start, centre, spread, out);
}

/// `centre + spread · u` with u uniform in [-1, 1), element `start + j` drawn
/// from stream `key`.
fn fill_uniform(key: u64, start: u64, centre: f32, spread: f32, out: &mut [f32]) {
    out.par_chunks_mut(1 << 15)
        .enumerate()
        .for_each(|(c, chunk)| {
            let base = start + (c as u64) * (1 << 15);
            for (j, x) in chunk.iter_mut().enumerate() {
                *x = centre + spread * unit(mix64(key.wrapping_add(base + j as u64)));
            }
        });
}

/// A small fine-tune of a synthetic model: tensors whose names contain one
/// of `patterns` get a delta of 5% of the weights' spread, drawn from
/// `seed`; the rest are untouched.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tune {
    /// Substrings of the tensor names changed.
    pub patterns: Vec<String>,
    /// Seed of the deltas.
    pub seed: u64,
}

impl Tune {
    /// Whether tensor `name` is changed.
    pub fn touches(&self, name: &str) -> bool {
        self.patterns.iter().any(|p| name.contains(p.as_str()))
    }
}

/// Relative size of a tune's deltas.
const TUNE_SCALE: f32 = 0.05;

/// The bytes of elements `start..start + count` of `tensor` in model `seed`.
pub fn tensor_bytes(seed: u64, tensor: &TensorInfo, start: u64, count: usize) -> Result<Vec<u8>> {
    tuned_tensor_bytes(seed, None, tensor, start, count)
}

/// Like [`tensor_bytes`], with `tune` applied.
pub fn tuned_tensor_bytes(
    seed: u64,
    tune: Option<&Tune>,
    tensor: &TensorInfo,
    start: u64,
    count: usize,
) -> Result<Vec<u8>> {
    let mut vals = vec![0f32; count];
    fill_f32(seed, &tensor.name, start, &mut vals);
    if let Some(t) = tune.filter(|t| t.touches(&tensor.name)) {
        let mut delta = vec![0f32; count];
        let key = mix64(mix64(t.seed ^ 0x7475_6e65) ^ name_key(&tensor.name));
        fill_uniform(key, start, 0.0, TUNE_SCALE * 0.0346, &mut delta);
        vals.iter_mut().zip(&delta).for_each(|(v, d)| *v += d);
    }
    let mut out = vec![0u8; count * tensor.dtype.size()];
    convert::from_f32(&tensor.name, &vals, &mut out, tensor.dtype)?;
    Ok(out)
}

/// Elements generated at a time by [`write_model`]: bounds memory whatever
/// the tensor size.
const WRITE_CHUNK: u64 = 1 << 22;

/// Writes model `seed` (with `tune` applied) into folder `dir` as
/// `model.safetensors`, or as shards of at most `max_shard_bytes` with an
/// index, generating one chunk of one tensor at a time. Returns the files.
pub fn write_model(
    dir: &Path,
    tensors: &[TensorInfo],
    seed: u64,
    tune: Option<&Tune>,
    max_shard_bytes: u64,
) -> Result<Vec<PathBuf>> {
    let metadata = vec![("format".to_owned(), "pt".to_owned())];
    let plan = ShardPlan::new("model", tensors, &metadata, max_shard_bytes)?;
    std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
    let mut writer = ShardedWriter::create(dir, plan.clone())?;
    for t in plan.tensors() {
        let n = t.numel();
        let mut start = 0;
        while start < n {
            let count = (n - start).min(WRITE_CHUNK);
            writer.write_part(
                &t.name,
                &tuned_tensor_bytes(seed, tune, t, start, count as usize)?,
            )?;
            start += count;
        }
    }
    writer.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_matches_value_at_any_offset() {
        let mut a = vec![0f32; 100_000];
        fill_f32(7, "model.layers.0.mlp.up_proj.weight", 12_345, &mut a);
        for (j, x) in a.iter().enumerate().step_by(997) {
            assert_eq!(
                *x,
                value(7, "model.layers.0.mlp.up_proj.weight", 12_345 + j as u64)
            );
        }
        let std = (a.iter().map(|x| x * x).sum::<f32>() / a.len() as f32).sqrt();
        assert!((std - 0.02).abs() < 0.002, "std {std}");
    }

    #[test]
    fn tunes_touch_only_matching_tensors_by_a_little() {
        let tune = Tune {
            patterns: vec!["layers.1.".into()],
            seed: 9,
        };
        let hit = TensorInfo::new("model.layers.1.mlp.up_proj.weight", DType::F32, [64u64, 64]);
        let miss = TensorInfo::new(
            "model.layers.11.mlp.up_proj.weight",
            DType::F32,
            [64u64, 64],
        );
        for t in [&hit, &miss] {
            let base = tensor_bytes(3, t, 0, 4096).expect("base");
            let tuned = tuned_tensor_bytes(3, Some(&tune), t, 0, 4096).expect("tuned");
            assert_eq!(base == tuned, !tune.touches(&t.name), "{}", t.name);
        }
        let a: Vec<f32> = bytemuck::pod_collect_to_vec(&tensor_bytes(3, &hit, 0, 4096).expect("a"));
        let b: Vec<f32> = bytemuck::pod_collect_to_vec(
            &tuned_tensor_bytes(3, Some(&tune), &hit, 0, 4096).expect("b"),
        );
        let rel = (a.iter().zip(&b).map(|(x, y)| (y - x).powi(2)).sum::<f32>()
            / a.iter().map(|x| x * x).sum::<f32>())
        .sqrt();
        assert!((0.03..0.07).contains(&rel), "relative change {rel}");
    }

    #[test]
    fn sizes() {
        assert_eq!(LlamaShape::LLAMA_7B.params(), 6_738_415_616);
        let s = LlamaShape::with_params(1_000_000_000);
        assert!(
            s.params().abs_diff(1_000_000_000) < 60_000_000,
            "{s:?} {}",
            s.params()
        );
    }
}

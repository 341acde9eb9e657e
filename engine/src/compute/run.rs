//! The ops as callers see them, shared by both backends: validation,
//! densities resolved into thresholds, SLERP's coefficients, statistics.

use super::ops::{self, MergeParams, ModelParams, StatSums};
use super::{Backend, Device, Input, Result, dtype_code, error::invalid};
use crate::DType;

/// How deltas are thinned before they are combined.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sparsify {
    /// Keep every delta.
    None,
    /// TIES' trim: keep each model's `density` share of largest |delta|.
    Magnitude,
    /// DARE: keep each delta with probability `density`, rescaled by
    /// 1/density, drawn from (seed, tensor name, model, element index).
    Random {
        /// The seed.
        seed: u64,
    },
}

/// How the (thinned) deltas are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Combine {
    /// Σ wᵢ δᵢ.
    Linear,
    /// TIES: elect the sign of Σ wᵢ δᵢ, then the weighted mean of the deltas
    /// with that sign.
    Ties,
}

/// One model in a merge.
#[derive(Clone, Copy, Debug)]
pub struct Term<'a> {
    /// Its tensor.
    pub input: Input<'a>,
    /// Its weight.
    pub weight: f32,
    /// Share of deltas kept by [`Sparsify::Magnitude`] or [`Sparsify::Random`].
    pub density: f32,
}

/// A merge of one tensor: `base + λ·combine(sparsify(xᵢ − base))`, or
/// `λ·Σ wᵢ xᵢ` without a base.
#[derive(Clone, Copy, Debug)]
pub struct MergeSpec<'a> {
    /// The tensor's name (for errors and the random key).
    pub tensor: &'a str,
    /// The models.
    pub terms: &'a [Term<'a>],
    /// The base, if deltas are taken from one.
    pub base: Option<Input<'a>>,
    /// Thinning.
    pub sparsify: Sparsify,
    /// Combination.
    pub combine: Combine,
    /// Scale of the combined delta (task arithmetic's λ; 1 otherwise).
    pub lambda: f32,
}

/// Statistics of a change from `old` to `new` (see [`Device::diff_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DiffStats {
    /// Elements.
    pub n: u64,
    /// ‖old‖₂.
    pub norm_old: f64,
    /// ‖new‖₂.
    pub norm_new: f64,
    /// ‖new − old‖₂.
    pub norm_diff: f64,
    /// ⟨old, new⟩.
    pub dot: f64,
    /// Largest finite |new − old|.
    pub max_abs_diff: f32,
    /// Elements whose value changed (bitwise).
    pub changed: u64,
    /// Non-finite elements of old.
    pub nonfinite_old: u64,
    /// Non-finite elements of new.
    pub nonfinite_new: u64,
    /// Mean of new − old.
    pub mean_diff: f64,
    /// Standard deviation of new − old (population).
    pub std_diff: f64,
}

impl DiffStats {
    fn from_sums(s: &StatSums) -> DiffStats {
        let n = s.n.max(1) as f64;
        let mean = s.sum_d / n;
        DiffStats {
            n: s.n,
            norm_old: s.a2.sqrt(),
            norm_new: s.b2.sqrt(),
            norm_diff: s.d2.sqrt(),
            dot: s.dot,
            max_abs_diff: s.max_abs_d,
            changed: s.changed,
            nonfinite_old: s.nonfinite_a,
            nonfinite_new: s.nonfinite_b,
            mean_diff: mean,
            std_diff: (s.d2 / n - mean * mean).max(0.0).sqrt(),
        }
    }

    /// cos(old, new); 0 when either is zero.
    pub fn cosine(&self) -> f64 {
        let d = self.norm_old * self.norm_new;
        if d > 0.0 { self.dot / d } else { 0.0 }
    }

    /// ‖new − old‖ / ‖old‖ (infinite when old is zero and new is not).
    pub fn relative_change(&self) -> f64 {
        if self.norm_old > 0.0 {
            self.norm_diff / self.norm_old
        } else if self.norm_diff > 0.0 {
            f64::INFINITY
        } else {
            0.0
        }
    }
}

fn same_len(tensor: &str, what: &str, a: Input<'_>, n: usize) -> Result<()> {
    dtype_code(tensor, a.dtype)?;
    if a.bytes.len() != n * a.dtype.size() {
        return Err(invalid(
            tensor,
            format!(
                "{what} has {} bytes of {}, expected {n} elements",
                a.bytes.len(),
                a.dtype
            ),
        ));
    }
    Ok(())
}

impl Device {
    fn backend(&self) -> &dyn Backend {
        match self {
            Device::Cpu => &super::cpu::Cpu,
            Device::Gpu(g) => g.as_ref(),
        }
    }

    /// Merges `spec` into `out` (elements of `out_dtype`).
    pub fn merge(&self, spec: &MergeSpec<'_>, out: &mut [u8], out_dtype: DType) -> Result<()> {
        let t = spec.tensor;
        let first = spec
            .terms
            .first()
            .ok_or_else(|| invalid(t, "a merge needs at least one model"))?;
        let n = first.input.len();
        let dtype = first.input.dtype;
        for (i, term) in spec.terms.iter().enumerate() {
            same_len(t, &format!("model {i}"), term.input, n)?;
            if term.input.dtype != dtype {
                return Err(invalid(
                    t,
                    format!("model {i} is {}, model 0 is {dtype}", term.input.dtype),
                ));
            }
        }
        if let Some(b) = spec.base {
            same_len(t, "the base", b, n)?;
            if b.dtype != dtype {
                return Err(invalid(
                    t,
                    format!("the base is {}, the models {dtype}", b.dtype),
                ));
            }
        }
        dtype_code(t, out_dtype)?;
        if out.len() != n * out_dtype.size() {
            return Err(invalid(
                t,
                format!(
                    "output has {} bytes, expected {n} elements of {out_dtype}",
                    out.len()
                ),
            ));
        }
        if n == 0 {
            return Ok(());
        }
        let seed = match spec.sparsify {
            Sparsify::Random { seed } => seed,
            _ => 0,
        };
        let mut models = Vec::with_capacity(spec.terms.len());
        for term in spec.terms {
            let mut m = ModelParams {
                weight: term.weight,
                ..Default::default()
            };
            let density = term.density.clamp(0.0, 1.0);
            match spec.sparsify {
                Sparsify::None => {}
                Sparsify::Magnitude => {
                    let k = (f64::from(density) * n as f64) as usize;
                    let kth = if k == 0 {
                        None
                    } else {
                        Some(self.kth_largest_abs(t, term.input, spec.base, k)?)
                    };
                    m.threshold_bits = ops::threshold_for_k(k, kth);
                }
                Sparsify::Random { .. } => {
                    m.keep_all = u32::from(density >= 1.0);
                    m.keep_below =
                        (f64::from(density) * 4_294_967_296.0).min(u32::MAX as f64) as u32;
                    m.inv_keep = if density > 0.0 { 1.0 / density } else { 0.0 };
                }
            }
            models.push(m);
        }
        let p = MergeParams {
            n_models: spec.terms.len() as u32,
            has_base: u32::from(spec.base.is_some()),
            sparsify: match spec.sparsify {
                Sparsify::None => ops::SPARSIFY_NONE,
                Sparsify::Magnitude => ops::SPARSIFY_MAGNITUDE,
                Sparsify::Random { .. } => ops::SPARSIFY_RANDOM,
            },
            combine: u32::from(spec.combine == Combine::Ties),
            lambda: spec.lambda,
            name_hash: ops::name_hash(t),
            seed_lo: seed as u32,
            seed_hi: (seed >> 32) as u32,
            ..Default::default()
        };
        let inputs: Vec<Input<'_>> = spec.terms.iter().map(|t| t.input).collect();
        self.backend()
            .merge(t, &p, &models, &inputs, spec.base, out, out_dtype)
    }

    /// Bits of the `k`-th largest |x − base| (`1 <= k <= len`), found in
    /// linear time (selection on the CPU, radix select on the GPU).
    pub fn kth_largest_abs(
        &self,
        tensor: &str,
        x: Input<'_>,
        base: Option<Input<'_>>,
        k: usize,
    ) -> Result<u32> {
        let n = x.len();
        same_len(tensor, "the tensor", x, n)?;
        if let Some(b) = base {
            same_len(tensor, "the base", b, n)?;
        }
        if k == 0 || k > n {
            return Err(invalid(tensor, format!("k = {k} is outside 1..={n}")));
        }
        self.backend().kth_largest_abs(tensor, x, base, k)
    }

    /// Statistics of the change from `old` to `new` in one fused pass.
    pub fn diff_stats(&self, tensor: &str, old: Input<'_>, new: Input<'_>) -> Result<DiffStats> {
        self.sums(tensor, old, new, None)
            .map(|s| DiffStats::from_sums(&s))
    }

    fn sums(
        &self,
        tensor: &str,
        a: Input<'_>,
        b: Input<'_>,
        base: Option<Input<'_>>,
    ) -> Result<StatSums> {
        let n = a.len();
        same_len(tensor, "old", a, n)?;
        same_len(tensor, "new", b, n)?;
        if a.dtype != b.dtype || base.is_some_and(|c| c.dtype != a.dtype) {
            return Err(invalid(tensor, "inputs of different dtypes"));
        }
        if let Some(c) = base {
            same_len(tensor, "the base", c, n)?;
        }
        if n == 0 {
            return Ok(StatSums::default());
        }
        self.backend().stats(tensor, a, b, base)
    }

    /// The cosine between every pair of models' deltas from `base`
    /// (model_stock's statistic), as a row-major `N × N` matrix.
    pub fn pairwise_cosine(
        &self,
        tensor: &str,
        base: Input<'_>,
        models: &[Input<'_>],
    ) -> Result<Vec<f64>> {
        let m = models.len();
        let mut out = vec![1.0; m * m];
        for i in 0..m {
            for j in i + 1..m {
                let s =
                    DiffStats::from_sums(&self.sums(tensor, models[i], models[j], Some(base))?);
                out[i * m + j] = s.cosine();
                out[j * m + i] = s.cosine();
            }
        }
        Ok(out)
    }

    /// Spherical interpolation from `a` (t = 0) to `b` (t = 1), falling back
    /// to linear interpolation when the tensors are nearly colinear
    /// (|cos| > 1 − `eps`), as mergekit does.
    #[allow(clippy::too_many_arguments)]
    pub fn slerp(
        &self,
        tensor: &str,
        a: Input<'_>,
        b: Input<'_>,
        t: f32,
        eps: f64,
        out: &mut [u8],
        out_dtype: DType,
    ) -> Result<()> {
        let s = self.sums(tensor, a, b, None)?;
        let norms = s.a2.sqrt() * s.b2.sqrt();
        let cos = if norms > 0.0 {
            (s.dot / norms).clamp(-1.0, 1.0)
        } else {
            1.0
        };
        let t64 = f64::from(t);
        let (c0, c1) = if 1.0 - cos.abs() < eps {
            (1.0 - t64, t64)
        } else {
            let theta = cos.acos();
            let sin = theta.sin();
            (((1.0 - t64) * theta).sin() / sin, (t64 * theta).sin() / sin)
        };
        let terms = [
            Term {
                input: a,
                weight: c0 as f32,
                density: 1.0,
            },
            Term {
                input: b,
                weight: c1 as f32,
                density: 1.0,
            },
        ];
        let spec = MergeSpec {
            tensor,
            terms: &terms,
            base: None,
            sparsify: Sparsify::None,
            combine: Combine::Linear,
            lambda: 1.0,
        };
        self.merge(&spec, out, out_dtype)
    }

    /// `W + scale·B·A` for W `[rows × cols]`, B `[rows × rank]`, A `[rank × cols]`.
    #[allow(clippy::too_many_arguments)]
    pub fn lowrank(
        &self,
        tensor: &str,
        w: Input<'_>,
        b: Input<'_>,
        a: Input<'_>,
        shape: [usize; 3],
        scale: f32,
        out: &mut [u8],
        out_dtype: DType,
    ) -> Result<()> {
        let [rows, cols, rank] = shape;
        same_len(tensor, "W", w, rows * cols)?;
        same_len(tensor, "B", b, rows * rank)?;
        same_len(tensor, "A", a, rank * cols)?;
        if w.dtype != b.dtype || w.dtype != a.dtype {
            return Err(invalid(tensor, "W, B and A must share a dtype"));
        }
        dtype_code(tensor, out_dtype)?;
        if out.len() != rows * cols * out_dtype.size() {
            return Err(invalid(tensor, "output size does not match W"));
        }
        if rows * cols == 0 {
            return Ok(());
        }
        self.backend()
            .lowrank(tensor, w, b, a, shape, scale, out, out_dtype)
    }
}

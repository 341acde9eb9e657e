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
    /// Breadcrumbs (mergekit's `magnitude_outliers`): drop each model's
    /// [`MergeOptions::gamma`] share of largest |delta|, then keep its
    /// `density` share of the largest that remain.
    Outliers,
}

/// How kept deltas are rescaled after [`Sparsify`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Rescale {
    /// DARE's 1/density; magnitude trims unscaled.
    #[default]
    InverseDensity,
    /// No rescaling.
    None,
    /// mergekit's `rescale: true`: each model's kept deltas scaled so their
    /// L1 norm equals that of its whole delta (unscaled when either norm is
    /// below 1e-7).
    L1,
}

/// What a merge may add to [`MergeSpec`] (mergekit's finer switches).
#[derive(Clone, Copy, Debug, Default)]
pub struct MergeOptions<'a> {
    /// Rescaling of kept deltas.
    pub rescale: Rescale,
    /// Per term: the share of largest |delta| dropped by
    /// [`Sparsify::Outliers`] (missing terms drop none).
    pub gamma: &'a [f32],
}

/// How the (thinned) deltas are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Combine {
    /// Σ wᵢ δᵢ.
    Linear,
    /// TIES: elect the sign of Σ wᵢ δᵢ (positive at zero), then the sum of
    /// the wᵢ δᵢ with that sign divided by their weights.
    Ties,
    /// TIES without the division (mergekit's `normalize: false`).
    TiesSum,
    /// Σ wᵢ δᵢ / Σ wᵢ (mergekit's linear merge and `normalize: true`); a sum
    /// of weights within 1e-8 of zero counts as 1.
    LinearMean,
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

/// Two tensors' norms and inner product ([`Device::norms_dot`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NormsDot {
    /// ‖a‖ (of a − base with a base).
    pub norm_a: f64,
    /// ‖b‖ (of b − base with a base).
    pub norm_b: f64,
    /// a·b (of the deltas with a base).
    pub dot: f64,
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
        self.merge_with(spec, &MergeOptions::default(), out, out_dtype)
    }

    /// [`Device::merge`] with mergekit's finer switches.
    ///
    /// Magnitude trims keep `k = max(1, ⌊density·n⌋)` deltas by the k-th
    /// largest magnitude, and every delta tied with it; density ≥ 1 keeps
    /// all, ≤ 0 none.
    pub fn merge_with(
        &self,
        spec: &MergeSpec<'_>,
        opts: &MergeOptions<'_>,
        out: &mut [u8],
        out_dtype: DType,
    ) -> Result<()> {
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
        let p = MergeParams {
            n_models: spec.terms.len() as u32,
            has_base: u32::from(spec.base.is_some()),
            sparsify: match spec.sparsify {
                Sparsify::None => ops::SPARSIFY_NONE,
                Sparsify::Magnitude | Sparsify::Outliers => ops::SPARSIFY_MAGNITUDE,
                Sparsify::Random { .. } => ops::SPARSIFY_RANDOM,
            },
            combine: match spec.combine {
                Combine::Linear => ops::COMBINE_LINEAR,
                Combine::Ties => ops::COMBINE_TIES_MEAN,
                Combine::TiesSum => ops::COMBINE_TIES_SUM,
                Combine::LinearMean => ops::COMBINE_LINEAR_MEAN,
            },
            lambda: spec.lambda,
            name_hash: ops::name_hash(t),
            seed_lo: seed as u32,
            seed_hi: (seed >> 32) as u32,
            ..Default::default()
        };
        let mut models = Vec::with_capacity(spec.terms.len());
        let mut trims = Vec::with_capacity(spec.terms.len());
        for (i, term) in spec.terms.iter().enumerate() {
            let gamma = opts.gamma.get(i).copied().unwrap_or(0.0);
            let (m, k) = self.model_params(spec, opts.rescale, term, gamma)?;
            models.push(m);
            trims.push(k);
        }
        let inputs: Vec<Input<'_>> = spec.terms.iter().map(|t| t.input).collect();
        if opts.rescale == Rescale::L1 {
            // The L1 factor measures the trimmed mask: thresholds first.
            super::trim(self.backend(), t, &mut models, &trims, &inputs, spec.base)?;
            trims.fill(None);
            for (i, (term, m)) in spec.terms.iter().zip(models.iter_mut()).enumerate() {
                if !ops::keeps_everything(&p, m) {
                    m.scale = super::masks::l1_scale(&p, m, i as u32, term.input, spec.base);
                }
            }
        }
        self.backend()
            .merge_trimmed(t, &p, &models, &trims, &inputs, spec.base, out, out_dtype)
    }

    /// One model's kernel parameters: its trim thresholds, keep probability
    /// and rescale factor (before any L1 rescale), and for a TIES trim the
    /// `k` largest magnitudes to keep, whose threshold the backend finds.
    fn model_params(
        &self,
        spec: &MergeSpec<'_>,
        rescale: Rescale,
        term: &Term<'_>,
        gamma: f32,
    ) -> Result<(ModelParams, Option<usize>)> {
        let t = spec.tensor;
        let n = term.input.len();
        let mut m = ModelParams {
            weight: term.weight,
            scale: 1.0,
            upper_bits: u32::MAX,
            ..Default::default()
        };
        if term.density.is_nan() || gamma.is_nan() {
            return Err(invalid(t, "density or gamma is NaN"));
        }
        let density = term.density.clamp(0.0, 1.0);
        let kth = |k: usize| self.kth_largest_abs(t, term.input, spec.base, k);
        match spec.sparsify {
            Sparsify::None => {}
            Sparsify::Magnitude | Sparsify::Outliers if density >= 1.0 => {}
            Sparsify::Magnitude if density <= 0.0 => m.threshold_bits = u32::MAX,
            Sparsify::Magnitude => {
                let k = ((f64::from(density) * n as f64) as usize).max(1);
                return Ok((m, Some(k)));
            }
            Sparsify::Outliers => {
                // mergekit: sort |delta| ascending, keep ranks [n_bot, n_bot + target).
                let target = (f64::from(density) * n as f64) as usize;
                let n_top = (f64::from(gamma.clamp(0.0, 1.0)) * n as f64) as usize;
                let n_bot = n.saturating_sub(target + n_top);
                let dropped_top = n - n_bot - target;
                if target == 0 {
                    m.threshold_bits = u32::MAX;
                } else {
                    m.threshold_bits = kth(dropped_top + target)?;
                    if dropped_top > 0 {
                        m.upper_bits = kth(dropped_top)?;
                    }
                }
            }
            Sparsify::Random { .. } => {
                m.keep_all = u32::from(density >= 1.0);
                m.keep_below = (f64::from(density) * 4_294_967_296.0).min(u32::MAX as f64) as u32;
                if rescale == Rescale::InverseDensity {
                    m.scale = if density > 0.0 { 1.0 / density } else { 0.0 };
                }
            }
        }
        Ok((m, None))
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
        self.sums(tensor, old, new, None, false)
            .map(|s| DiffStats::from_sums(&s))
    }

    /// The statistics pass over (a, b) relative to `base`, checked: every
    /// sum, or with `only_norms` Σa², Σb² and Σa·b.
    fn sums(
        &self,
        tensor: &str,
        a: Input<'_>,
        b: Input<'_>,
        base: Option<Input<'_>>,
        only_norms: bool,
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
        if only_norms {
            self.backend().norms_dot(tensor, a, b, base)
        } else {
            self.backend().stats(tensor, a, b, base)
        }
    }

    /// Statistics of `a − base` against `b − base` (`norm_old` is ‖a − base‖,
    /// `norm_new` ‖b − base‖, `dot` their inner product), in one fused pass.
    pub fn delta_stats(
        &self,
        tensor: &str,
        base: Input<'_>,
        a: Input<'_>,
        b: Input<'_>,
    ) -> Result<DiffStats> {
        self.sums(tensor, a, b, Some(base), false)
            .map(|s| DiffStats::from_sums(&s))
    }

    /// ‖a − base‖, ‖b − base‖ and their inner product (of a and b without
    /// a base): the values [`Device::delta_stats`] and
    /// [`Device::diff_stats`] give, from a pass that sums these alone.
    pub fn norms_dot(
        &self,
        tensor: &str,
        a: Input<'_>,
        b: Input<'_>,
        base: Option<Input<'_>>,
    ) -> Result<NormsDot> {
        let s = self.sums(tensor, a, b, base, true)?;
        Ok(NormsDot {
            norm_a: s.a2.sqrt(),
            norm_b: s.b2.sqrt(),
            dot: s.dot,
        })
    }

    /// The cosine between every pair of models' deltas from `base`
    /// (model_stock's statistic), as a row-major `N × N` matrix: the inner
    /// product over the product of norms clamped to at least 1e-6, as
    /// mergekit computes it.
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
                let s = self.norms_dot(tensor, models[i], models[j], Some(base))?;
                let cos = (s.dot / (s.norm_a * s.norm_b).max(1e-6)).clamp(-1.0, 1.0);
                out[i * m + j] = cos;
                out[j * m + i] = cos;
            }
        }
        Ok(out)
    }

    /// Spherical interpolation from `a` (t = 0) to `b` (t = 1), falling back
    /// to linear interpolation when the tensors are nearly colinear
    /// (|cos| > 1 − `eps`; mergekit's slerp uses `eps` = 0.0005).
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
        let s = self.norms_dot(tensor, a, b, None)?;
        // As mergekit: a norm of at most 1e-8 counts as 1 (so a zero tensor
        // is orthogonal to everything and interpolates spherically).
        let norm = |n: f64| if n > 1e-8 { n } else { 1.0 };
        let cos = (s.dot / (norm(s.norm_a) * norm(s.norm_b))).clamp(-1.0, 1.0);
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

//! The op definitions: for each kernel its `#[repr(C)]` parameter block
//! (laid out like the WGSL `Params` of the shader named beside it) and its
//! scalar CPU reference, which the CPU backend runs per element and which the
//! WGSL entry point mirrors operation for operation. Keep the two in step:
//! the tests compare them bit for bit.

use bytemuck::{Pod, Zeroable};

/// `merge.wgsl::Params`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct MergeParams {
    /// Number of models.
    pub n_models: u32,
    /// Elements in this chunk.
    pub len: u32,
    /// Words between consecutive models' segments of the input buffer.
    pub seg_words: u32,
    /// 1 when there is a base.
    pub has_base: u32,
    /// 0 none, 1 magnitude, 2 random.
    pub sparsify: u32,
    /// One of the `COMBINE_*` codes.
    pub combine: u32,
    /// Scale of the combined delta.
    pub lambda: f32,
    /// FNV-1a hash of the tensor name, for the random draws.
    pub name_hash: u32,
    /// Random seed, low word.
    pub seed_lo: u32,
    /// Random seed, high word.
    pub seed_hi: u32,
    /// Index of this chunk's first element, low word.
    pub offset_lo: u32,
    /// Index of this chunk's first element, high word.
    pub offset_hi: u32,
}

/// `merge.wgsl::Model`: one model's resolved parameters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct ModelParams {
    /// Weight in the sum.
    pub weight: f32,
    /// Magnitude trim: keep |delta| whose bits are at least this.
    pub threshold_bits: u32,
    /// Random drop: keep when the draw is below this.
    pub keep_below: u32,
    /// Random drop: 1 keeps everything untouched (density 1).
    pub keep_all: u32,
    /// Factor applied to every kept delta (1/density for DARE's classic
    /// rescale, mergekit's L1 ratio, or 1).
    pub scale: f32,
    /// Magnitude trim: keep |delta| whose bits are below this too (drops
    /// breadcrumbs' outliers; `u32::MAX` drops none).
    pub upper_bits: u32,
    /// Padding to 32 bytes.
    pub pad: [u32; 2],
}

/// Sparsification codes of [`MergeParams::sparsify`].
pub const SPARSIFY_NONE: u32 = 0;
/// Keep the largest magnitudes.
pub const SPARSIFY_MAGNITUDE: u32 = 1;
/// Keep at random.
pub const SPARSIFY_RANDOM: u32 = 2;

/// Combination codes of [`MergeParams::combine`]: Σ wᵢδᵢ.
pub const COMBINE_LINEAR: u32 = 0;
/// TIES, divided by the weights taking part (mergekit's `normalize: true`).
pub const COMBINE_TIES_MEAN: u32 = 1;
/// TIES, undivided (`normalize: false`).
pub const COMBINE_TIES_SUM: u32 = 2;
/// Σ wᵢδᵢ / Σ wᵢ (a sum of weights near zero counts as 1).
pub const COMBINE_LINEAR_MEAN: u32 = 3;

/// `common.wgsl::mix32`.
#[inline]
pub fn mix32(x: u32) -> u32 {
    let mut h = x;
    h ^= h >> 16;
    h = h.wrapping_mul(0x7feb_352d);
    h ^= h >> 15;
    h = h.wrapping_mul(0x846c_a68b);
    h ^ (h >> 16)
}

/// `common.wgsl::draw`: the random word for (seed, name, model, element).
pub fn draw(seed: u64, name_hash: u32, model: u32, index: u64) -> u32 {
    draw_at(draw_key(seed, name_hash, model), index)
}

/// [`draw`]'s mixing of (seed, name, model), which does not depend on the
/// element: a loop over elements computes it once.
pub fn draw_key(seed: u64, name_hash: u32, model: u32) -> u32 {
    let mut h = mix32(seed as u32 ^ 0x9e37_79b9);
    h = mix32(h ^ (seed >> 32) as u32);
    h = mix32(h ^ name_hash);
    mix32(h ^ model)
}

/// [`draw`] at element `index` for the [`draw_key`] `key`.
#[inline(always)]
pub fn draw_at(key: u32, index: u64) -> u32 {
    mix32(mix32(key ^ (index >> 32) as u32) ^ index as u32)
}

/// 32-bit FNV-1a of a tensor name: the name's part of the random key.
pub fn name_hash(name: &str) -> u32 {
    name.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// `merge.wgsl::sparsify`: model `model`'s delta `d` at element `index`,
/// thinned and rescaled.
pub fn sparsify(p: &MergeParams, m: &ModelParams, d: f32, model: u32, index: u64) -> f32 {
    match p.sparsify {
        SPARSIFY_MAGNITUDE => {
            let a = d.to_bits() & 0x7fff_ffff;
            if a >= m.threshold_bits && a < m.upper_bits {
                d * m.scale
            } else {
                0.0
            }
        }
        SPARSIFY_RANDOM => {
            if m.keep_all != 0 {
                d
            } else {
                let seed = u64::from(p.seed_lo) | (u64::from(p.seed_hi) << 32);
                if draw(seed, p.name_hash, model, index) < m.keep_below {
                    d * m.scale
                } else {
                    0.0
                }
            }
        }
        _ => d,
    }
}

/// Whether [`sparsify`] leaves model `m`'s deltas as they are.
pub fn keeps_everything(p: &MergeParams, m: &ModelParams) -> bool {
    match p.sparsify {
        SPARSIFY_MAGNITUDE => m.threshold_bits == 0 && m.upper_bits == u32::MAX && m.scale == 1.0,
        SPARSIFY_RANDOM => m.keep_all != 0,
        _ => true,
    }
}

/// `merge.wgsl::merge_one`: element `index` of the merge, given the models'
/// values `xs` there and the base's value `b` (0 without a base).
///
/// TIES follows mergekit 0.1.5: the elected sign is that of Σ wᵢδᵢ, positive
/// when the sum is zero; model i takes part where wᵢδᵢ carries that sign.
pub fn merge_element(
    p: &MergeParams,
    models: &[ModelParams],
    xs: &[f32],
    b: f32,
    index: u64,
) -> f32 {
    let delta = |i: usize| {
        let d = if p.has_base != 0 { xs[i] - b } else { xs[i] };
        sparsify(p, &models[i], d, i as u32, index)
    };
    let mut sum = 0.0f32;
    for (i, m) in models.iter().enumerate() {
        sum += m.weight * delta(i);
    }
    let combined = match p.combine {
        COMBINE_TIES_MEAN | COMBINE_TIES_SUM => {
            let (mut num, mut den) = (0.0f32, 0.0f32);
            for (i, m) in models.iter().enumerate() {
                let v = m.weight * delta(i);
                if (v > 0.0 && sum >= 0.0) || (v < 0.0 && sum < 0.0) {
                    num += v;
                    den += m.weight;
                }
            }
            if p.combine == COMBINE_TIES_SUM {
                num
            } else {
                if den == 0.0 {
                    den = 1.0;
                }
                num / den
            }
        }
        COMBINE_LINEAR_MEAN => {
            let mut den = 0.0f32;
            for m in models {
                den += m.weight;
            }
            if den.abs() < 1e-8 {
                den = 1.0;
            }
            sum / den
        }
        _ => sum,
    };
    b + p.lambda * combined
}

/// `stats.wgsl::Params`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct StatsParams {
    /// Elements in this chunk.
    pub len: u32,
    /// Words between the two inputs' segments.
    pub seg_words: u32,
    /// 1 when both inputs are taken relative to a base.
    pub has_base: u32,
    /// Padding.
    pub pad: u32,
}

/// Elements each stats workgroup covers (`WG * ITEMS` in `stats.wgsl`).
pub const STATS_BLOCK: usize = 256 * 16;
/// Words per stats partial.
pub const STATS_PARTIAL_WORDS: usize = 10;

/// Raw sums of a statistics pass over (a, b), in f64.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StatSums {
    /// Σ a².
    pub a2: f64,
    /// Σ b².
    pub b2: f64,
    /// Σ (b−a)².
    pub d2: f64,
    /// Σ a·b.
    pub dot: f64,
    /// Σ (b−a).
    pub sum_d: f64,
    /// Largest finite |b−a|.
    pub max_abs_d: f32,
    /// Elements whose bits differ.
    pub changed: u64,
    /// Non-finite elements of a.
    pub nonfinite_a: u64,
    /// Non-finite elements of b.
    pub nonfinite_b: u64,
    /// Elements seen.
    pub n: u64,
}

impl StatSums {
    /// Adds one element (`stats.wgsl`'s per-element step, in f64).
    pub fn push(&mut self, a: f32, b: f32) {
        let d = b - a;
        let (a64, b64, d64) = (f64::from(a), f64::from(b), f64::from(d));
        self.a2 += a64 * a64;
        self.b2 += b64 * b64;
        self.d2 += d64 * d64;
        self.dot += a64 * b64;
        self.sum_d += d64;
        if d.is_finite() && d.abs() > self.max_abs_d {
            self.max_abs_d = d.abs();
        }
        self.changed += u64::from(a.to_bits() != b.to_bits());
        self.nonfinite_a += u64::from(!a.is_finite());
        self.nonfinite_b += u64::from(!b.is_finite());
        self.n += 1;
    }

    /// Adds another block's sums (in order, for determinism).
    pub fn add(&mut self, o: &StatSums) {
        self.a2 += o.a2;
        self.b2 += o.b2;
        self.d2 += o.d2;
        self.dot += o.dot;
        self.sum_d += o.sum_d;
        self.max_abs_d = self.max_abs_d.max(o.max_abs_d);
        self.changed += o.changed;
        self.nonfinite_a += o.nonfinite_a;
        self.nonfinite_b += o.nonfinite_b;
        self.n += o.n;
    }
}

/// `select.wgsl::Params`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct SelectParams {
    /// Elements in this chunk.
    pub len: u32,
    /// 1 when magnitudes are of `x - base`.
    pub has_base: u32,
    /// Which byte of the magnitude's bits this pass counts.
    pub shift: u32,
    /// The bits above that byte chosen so far.
    pub prefix: u32,
}

/// `lowrank.wgsl::Params`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct LowRankParams {
    /// Elements of W in this chunk.
    pub len: u32,
    /// Columns of W and A.
    pub cols: u32,
    /// Rank (columns of B, rows of A).
    pub rank: u32,
    /// Unused (chunks bind their own rows of B).
    pub row0: u32,
    /// The scale s.
    pub scale: f32,
    /// Padding.
    pub pad: [u32; 3],
}

/// `lowrank.wgsl::one`: row `row` of `W + s·B·A`, given W's row, B's row and A.
pub fn lowrank_row(w: &[f32], b_row: &[f32], a: &[f32], scale: f32, out: &mut [f32]) {
    let cols = w.len();
    out.fill(0.0);
    for (k, &bv) in b_row.iter().enumerate() {
        let a_row = &a[k * cols..(k + 1) * cols];
        for (acc, &av) in out.iter_mut().zip(a_row) {
            *acc += bv * av;
        }
    }
    for (o, &wv) in out.iter_mut().zip(w) {
        *o = wv + scale * *o;
    }
}

/// The largest `k` magnitudes' threshold, as bits: `|x|` is kept when its
/// bits are at least this. `k = 0` keeps nothing; ties at the threshold are
/// all kept.
pub fn threshold_for_k(k: usize, kth_bits: Option<u32>) -> u32 {
    if k == 0 {
        u32::MAX
    } else {
        kth_bits.unwrap_or(0)
    }
}

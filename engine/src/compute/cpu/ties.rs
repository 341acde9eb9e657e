//! TIES in AVX2 registers, eight elements at a time with every value in a
//! register: the all-models loop ([`vote`]: 2 to 4 models of one dtype,
//! each model's delta formed, trimmed by magnitude, weighted and voted on)
//! and the trim's counting pass ([`count`]).
//!
//! The portable all-models loop (`merge.rs`, `AllModels`) leaves the
//! vectorising to the compiler, which keeps sixteen lanes per model in
//! arrays that spill at three models, and which left a second thinning
//! variant scalar. Here the plain trim (no upper bound, scale 1: one
//! compare and a mask), the trim TIES asks for, is a copy of its own.
//!
//! The f32 operations and their order are [`ops::merge_element`]'s, so the
//! bits are the same. Magnitudes compare as signed integers (AVX2 has no
//! unsigned compare): with the sign bit clear they lie in `0..2³¹`, so each
//! bound is clamped to `2³¹` first, where every magnitude is below it.
//!
//! [`ops::merge_element`]: crate::compute::ops::merge_element

use std::arch::x86_64::*;

/// Elements a step takes: one AVX register of f32.
const LANES: usize = 8;

/// How eight elements of one dtype load into a register of f32.
pub(super) trait Load {
    /// Bytes per element.
    const SIZE: usize;
    /// The eight elements at `p`.
    ///
    /// # Safety
    /// `8 · SIZE` bytes are readable at `p`, and the CPU has AVX2 and F16C.
    unsafe fn load(p: *const u8) -> __m256;
}

/// Little-endian BF16: the bits shifted into the top half.
pub(super) struct Bf16;
/// Little-endian F16, through F16C.
pub(super) struct F16;
/// Little-endian F32.
pub(super) struct F32;

impl Load for Bf16 {
    const SIZE: usize = 2;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> __m256 {
        // SAFETY: the caller's.
        unsafe {
            let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast()));
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(h))
        }
    }
}

impl Load for F16 {
    const SIZE: usize = 2;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> __m256 {
        // SAFETY: the caller's.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
    }
}

impl Load for F32 {
    const SIZE: usize = 4;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> __m256 {
        // SAFETY: the caller's.
        unsafe { _mm256_loadu_ps(p.cast()) }
    }
}

/// One merge's per-model parameters for [`vote`].
pub(super) struct Params<const M: usize> {
    pub(super) weight: [f32; M],
    /// Kept magnitudes' bits lie in `[threshold, upper)`...
    pub(super) threshold: [u32; M],
    pub(super) upper: [u32; M],
    /// ... and are scaled by this.
    pub(super) scale: [f32; M],
    /// `COMBINE_TIES_SUM`: the agreeing deltas' sum, not their mean.
    pub(super) sum_only: bool,
}

/// TIES' combined deltas of `M` models' elements `xs` (`L::SIZE ·
/// acc.len()` bytes each) over the base `b` (decoded), into `acc`.
///
/// # Safety
/// The CPU has AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
#[inline]
pub(super) unsafe fn vote<const M: usize, L: Load>(
    xs: [&[u8]; M],
    b: Option<&[f32]>,
    p: &Params<M>,
    acc: &mut [f32],
) {
    let plain = p.upper.iter().all(|&u| u == u32::MAX) && p.scale.iter().all(|&s| s == 1.0);
    // SAFETY: the caller's.
    unsafe {
        match (plain, b) {
            (true, Some(b)) => each::<M, L, true, true>(xs, b, p, acc),
            (true, None) => each::<M, L, true, false>(xs, &[], p, acc),
            (false, Some(b)) => each::<M, L, false, true>(xs, b, p, acc),
            (false, None) => each::<M, L, false, false>(xs, &[], p, acc),
        }
    }
}

/// The constants of a [`Params`], each in every lane.
struct Consts<const M: usize> {
    weight: [__m256; M],
    /// `m > below[i]` iff `m >= threshold[i]`, for magnitudes `m`.
    below: [__m256i; M],
    /// `m > last[i]` iff `m >= upper[i]`.
    last: [__m256i; M],
    scale: [__m256; M],
}

/// [`vote`] with `PLAIN` the trim without upper bound or scale, and
/// `BASE` whether there is a base (`b` is empty without).
///
/// # Safety
/// The CPU has AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
#[inline]
unsafe fn each<const M: usize, L: Load, const PLAIN: bool, const BASE: bool>(
    xs: [&[u8]; M],
    b: &[f32],
    p: &Params<M>,
    acc: &mut [f32],
) {
    let n = acc.len();
    let xs = xs.map(|x| &x[..n * L::SIZE]);
    let b = if BASE { &b[..n] } else { b };
    // A bound `t` as the largest magnitude below it, as a signed integer:
    // −1 for 0 (every magnitude lies above), 2³¹ − 1 from 2³¹ on (none does).
    let below = |t: u32| t.min(1 << 31).wrapping_sub(1) as i32;
    let k = Consts {
        weight: p.weight.map(|w| _mm256_set1_ps(w)),
        below: p.threshold.map(|t| _mm256_set1_epi32(below(t))),
        last: p.upper.map(|u| _mm256_set1_epi32(below(u))),
        scale: p.scale.map(|s| _mm256_set1_ps(s)),
    };
    // SAFETY (every block below): the caller's, and each pointer is
    // `LANES` elements within its slice: `c < n / LANES`, or a padded copy.
    let full = n / LANES;
    for c in 0..full {
        let x = xs.map(|x| x[c * LANES * L::SIZE..].as_ptr());
        let bp = if BASE {
            b[c * LANES..].as_ptr()
        } else {
            b.as_ptr()
        };
        unsafe {
            let v = eight::<M, L, PLAIN, BASE>(x, bp, &k, p.sum_only);
            _mm256_storeu_ps(acc[c * LANES..].as_mut_ptr(), v);
        }
    }
    let r = n - full * LANES;
    if r > 0 {
        // The last few elements, padded to a whole register.
        let at = full * LANES;
        let pad: [[u8; LANES * 4]; M] = std::array::from_fn(|i| {
            let mut c = [0u8; LANES * 4];
            c[..r * L::SIZE].copy_from_slice(&xs[i][at * L::SIZE..]);
            c
        });
        let mut bt = [0f32; LANES];
        if BASE {
            bt[..r].copy_from_slice(&b[at..]);
        }
        let mut out = [0f32; LANES];
        unsafe {
            let x = pad.each_ref().map(|c| c.as_ptr());
            let v = eight::<M, L, PLAIN, BASE>(x, bt.as_ptr(), &k, p.sum_only);
            _mm256_storeu_ps(out.as_mut_ptr(), v);
        }
        acc[at..].copy_from_slice(&out[..r]);
    }
}

/// Eight elements: the models' at `x`, the base's at `b` (unread without
/// a base), combined.
///
/// # Safety
/// As [`each`]'s, and `LANES` elements are readable at each pointer.
#[target_feature(enable = "avx2,f16c")]
#[inline]
unsafe fn eight<const M: usize, L: Load, const PLAIN: bool, const BASE: bool>(
    x: [*const u8; M],
    b: *const f32,
    k: &Consts<M>,
    sum_only: bool,
) -> __m256 {
    // SAFETY: the caller's.
    unsafe {
        let zero = _mm256_setzero_ps();
        let abs = _mm256_set1_epi32(0x7fff_ffff);
        let bv = if BASE { _mm256_loadu_ps(b) } else { zero };
        // Each model's weighted, thinned delta `w·thin(x − b)`, summed from
        // 0 in model order.
        let mut wv = [zero; M];
        let mut sum = zero;
        for i in 0..M {
            let x = L::load(x[i]);
            let d = if BASE { _mm256_sub_ps(x, bv) } else { x };
            let m = _mm256_and_si256(_mm256_castps_si256(d), abs);
            let mut keep = _mm256_cmpgt_epi32(m, k.below[i]);
            let mut d = d;
            if !PLAIN {
                keep = _mm256_andnot_si256(_mm256_cmpgt_epi32(m, k.last[i]), keep);
                d = _mm256_mul_ps(d, k.scale[i]);
            }
            // A dropped delta is +0.0, as the reference's.
            let v = _mm256_and_ps(d, _mm256_castsi256_ps(keep));
            wv[i] = _mm256_mul_ps(k.weight[i], v);
            sum = _mm256_add_ps(sum, wv[i]);
        }
        // The election: a model agrees when its weighted delta is > 0 and
        // the sum ≥ 0, or < 0 and the sum < 0; flipping the deltas' signs
        // where the sum is negative makes both "> 0", and a NaN sum elects
        // nothing. A disagreeing model adds −0.0 (x + −0.0 is x for every
        // x), the reference's skipped addition.
        let positive = _mm256_cmp_ps::<_CMP_GE_OQ>(sum, zero);
        let negative = _mm256_cmp_ps::<_CMP_LT_OQ>(sum, zero);
        let valid = _mm256_or_ps(positive, negative);
        let neg_zero = _mm256_set1_ps(-0.0);
        let flip = _mm256_and_ps(negative, neg_zero);
        let (mut num, mut den) = (zero, zero);
        for (&v, &w) in wv.iter().zip(&k.weight) {
            let s = _mm256_xor_ps(v, flip);
            let agree = _mm256_and_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(s, zero), valid);
            num = _mm256_add_ps(num, _mm256_blendv_ps(neg_zero, v, agree));
            den = _mm256_add_ps(den, _mm256_blendv_ps(neg_zero, w, agree));
        }
        if sum_only {
            num
        } else {
            let none = _mm256_cmp_ps::<_CMP_EQ_OQ>(den, zero);
            _mm256_div_ps(num, _mm256_blendv_ps(den, _mm256_set1_ps(1.0), none))
        }
    }
}

/// The magnitudes |x − b| of the `n` elements `x` (`L::SIZE · n` bytes)
/// over the base `b` (decoded; `x` alone without), against a bracket `[lo,
/// hi]`: how many lie above `hi`, at `hi` and at `lo`, and in `inside`, bit
/// `j % 8` of byte `j / 8`, which lie strictly between (`n.div_ceil(8)`
/// bytes). The trim's counting pass (`select.rs`), whose compiled loop
/// packed each compare into a byte.
///
/// # Safety
/// The CPU has AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
#[inline]
pub(super) unsafe fn count<L: Load>(
    x: &[u8],
    b: Option<&[f32]>,
    lo: u32,
    hi: u32,
    inside: &mut [u8],
) -> [u32; 3] {
    // SAFETY: the caller's.
    unsafe {
        match b {
            Some(b) => count_each::<L, true>(x, b, lo, hi, inside),
            None => count_each::<L, false>(x, &[], lo, hi, inside),
        }
    }
}

/// [`count`] with `BASE` whether there is a base (`b` is empty without).
///
/// # Safety
/// The CPU has AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
#[inline]
unsafe fn count_each<L: Load, const BASE: bool>(
    x: &[u8],
    b: &[f32],
    lo: u32,
    hi: u32,
    inside: &mut [u8],
) -> [u32; 3] {
    let n = x.len() / L::SIZE;
    let b = if BASE { &b[..n] } else { b };
    let inside = &mut inside[..n.div_ceil(LANES)];
    // As in `each`: `m > below(t)` iff `m >= t`. Equal to a bound past 2³¹
    // never holds, as its bit pattern is negative.
    let below = |t: u32| t.min(1 << 31).wrapping_sub(1) as i32;
    // SAFETY (every block below): the caller's, and each pointer is
    // `LANES` elements within its slice: `c < n / LANES`, or a padded copy.
    unsafe {
        let abs = _mm256_set1_epi32(0x7fff_ffff);
        let (lo_v, hi_v) = (_mm256_set1_epi32(lo as i32), _mm256_set1_epi32(hi as i32));
        let (above_lo, from_hi) = (
            _mm256_set1_epi32(below(lo.saturating_add(1))),
            _mm256_set1_epi32(below(hi)),
        );
        let above_hi = _mm256_set1_epi32(below(hi.saturating_add(1)));
        // Per lane, minus the number of hits (a true compare is −1).
        let zero = _mm256_setzero_si256();
        let (mut n_above, mut n_hi, mut n_lo) = (zero, zero, zero);
        // One register of elements, `valid` marking the lanes that count.
        let mut eight = |x: *const u8, b: *const f32, valid: __m256i| -> u8 {
            let v = L::load(x);
            let d = if BASE {
                _mm256_sub_ps(v, _mm256_loadu_ps(b))
            } else {
                v
            };
            let m = _mm256_and_si256(_mm256_castps_si256(d), abs);
            let gt_hi = _mm256_and_si256(_mm256_cmpgt_epi32(m, above_hi), valid);
            let eq_hi = _mm256_and_si256(_mm256_cmpeq_epi32(m, hi_v), valid);
            let eq_lo = _mm256_and_si256(_mm256_cmpeq_epi32(m, lo_v), valid);
            let within = _mm256_andnot_si256(
                _mm256_cmpgt_epi32(m, from_hi),
                _mm256_and_si256(_mm256_cmpgt_epi32(m, above_lo), valid),
            );
            n_above = _mm256_add_epi32(n_above, gt_hi);
            n_hi = _mm256_add_epi32(n_hi, eq_hi);
            n_lo = _mm256_add_epi32(n_lo, eq_lo);
            _mm256_movemask_ps(_mm256_castsi256_ps(within)) as u8
        };
        let all = _mm256_set1_epi32(-1);
        let full = n / LANES;
        for c in 0..full {
            let bp = if BASE {
                b[c * LANES..].as_ptr()
            } else {
                b.as_ptr()
            };
            inside[c] = eight(x[c * LANES * L::SIZE..].as_ptr(), bp, all);
        }
        let r = n - full * LANES;
        if r > 0 {
            // The last few elements, padded to a whole register whose
            // padding does not count.
            let at = full * LANES;
            let mut pad = [0u8; LANES * 4];
            pad[..r * L::SIZE].copy_from_slice(&x[at * L::SIZE..]);
            let mut bt = [0f32; LANES];
            if BASE {
                bt[..r].copy_from_slice(&b[at..]);
            }
            let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            let valid = _mm256_cmpgt_epi32(_mm256_set1_epi32(r as i32), lane);
            inside[full] = eight(pad.as_ptr(), bt.as_ptr(), valid);
        }
        let total = |v: __m256i| {
            let mut l = [0i32; LANES];
            _mm256_storeu_si256(l.as_mut_ptr().cast(), v);
            l.iter().map(|&c| c.unsigned_abs()).sum::<u32>()
        };
        [total(n_above), total(n_hi), total(n_lo)]
    }
}

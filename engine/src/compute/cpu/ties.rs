//! TIES in AVX2 registers, eight elements at a time with every value in a
//! register: the all-models loop ([`vote`]: 2 to 4 models of one dtype,
//! each model's delta formed, trimmed by magnitude, weighted and voted on,
//! and for the one-pass TIES of `trimmed.rs` the trim's counts tallied on
//! the way) and the trim's counting pass ([`count`]).
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

/// The trim's counts taken by [`vote`] as it merges (TIES in one pass,
/// `trimmed.rs`): per model, against its bracket, as [`count`] takes them.
pub(super) struct Tally<'a, const M: usize> {
    /// Per model, the bracket `[lo, hi]` of magnitude bits; `(u32::MAX,
    /// u32::MAX)` counts nothing.
    pub(super) brackets: [(u32, u32); M],
    /// Per model, how many magnitudes lie above `hi`, at `hi` and at `lo`
    /// (added to).
    pub(super) counts: [[u32; 3]; M],
    /// Bit `j % 8` of byte `j / 8` set where some model is undecided: its
    /// magnitude lies in `[lo, hi)` (`acc.len().div_ceil(8)` bytes; at `lo
    /// == hi`, at it).
    pub(super) undecided: &'a mut [u8],
}

/// TIES' combined deltas of `M` models' elements `xs` (`L::SIZE ·
/// acc.len()` bytes each) over the base `b` (decoded), into `acc`; with a
/// `tally`, the trim's counts too.
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
    tally: Option<&mut Tally<'_, M>>,
) {
    let plain = p.upper.iter().all(|&u| u == u32::MAX) && p.scale.iter().all(|&s| s == 1.0);
    let bb = b.unwrap_or_default();
    // SAFETY: the caller's.
    unsafe {
        match (plain, b.is_some(), tally) {
            (true, true, None) => each::<M, L, true, true, false>(xs, bb, p, acc, None),
            (true, false, None) => each::<M, L, true, false, false>(xs, bb, p, acc, None),
            (false, true, None) => each::<M, L, false, true, false>(xs, bb, p, acc, None),
            (false, false, None) => each::<M, L, false, false, false>(xs, bb, p, acc, None),
            (true, true, t) => each::<M, L, true, true, true>(xs, bb, p, acc, t),
            (true, false, t) => each::<M, L, true, false, true>(xs, bb, p, acc, t),
            (false, true, t) => each::<M, L, false, true, true>(xs, bb, p, acc, t),
            (false, false, t) => each::<M, L, false, false, true>(xs, bb, p, acc, t),
        }
    }
}

/// A bound `t` as the largest magnitude below it, as a signed integer, so
/// that `m > below(t)` iff `m >= t` for magnitudes `m`: −1 for 0 (every
/// magnitude lies above), 2³¹ − 1 from 2³¹ on (none does).
fn below(t: u32) -> i32 {
    t.min(1 << 31).wrapping_sub(1) as i32
}

/// The constants of a [`Params`], each in every lane.
struct Consts<const M: usize> {
    weight: [__m256; M],
    /// `m > below[i]` iff `m >= threshold[i]`, for magnitudes `m`.
    below: [__m256i; M],
    /// `m > last[i]` iff `m >= upper[i]`.
    last: [__m256i; M],
    scale: [__m256; M],
    /// Per model, its bracket when the merge tallies.
    brackets: [Bracket; M],
}

/// A bracket `[lo, hi]` of magnitude bits as compare constants.
#[derive(Clone, Copy)]
struct Bracket {
    lo: __m256i,
    hi: __m256i,
    /// `m > above_lo` iff `m > lo`, and likewise for `hi`.
    above_lo: __m256i,
    above_hi: __m256i,
    /// `m > from_hi` iff `m >= hi`.
    from_hi: __m256i,
}

impl Bracket {
    #[target_feature(enable = "avx2")]
    #[inline]
    fn new((lo, hi): (u32, u32)) -> Bracket {
        // Equal to a bound past 2³¹ never holds, as its bits are negative.
        Bracket {
            lo: _mm256_set1_epi32(lo as i32),
            hi: _mm256_set1_epi32(hi as i32),
            above_lo: _mm256_set1_epi32(below(lo.saturating_add(1))),
            above_hi: _mm256_set1_epi32(below(hi.saturating_add(1))),
            from_hi: _mm256_set1_epi32(below(hi)),
        }
    }

    /// Where the magnitudes `m` lie: above `hi`, at `hi`, at `lo`, strictly
    /// between (each −1 where so), in the lanes `valid` marks.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn test(&self, m: __m256i, valid: __m256i) -> [__m256i; 4] {
        let inside = _mm256_andnot_si256(
            _mm256_cmpgt_epi32(m, self.from_hi),
            _mm256_cmpgt_epi32(m, self.above_lo),
        );
        [
            _mm256_cmpgt_epi32(m, self.above_hi),
            _mm256_cmpeq_epi32(m, self.hi),
            _mm256_cmpeq_epi32(m, self.lo),
            inside,
        ]
        .map(|t| _mm256_and_si256(t, valid))
    }
}

/// Per-lane counts, as minus the sum of compare results (a true one is −1);
/// no lane overflows within a block.
#[target_feature(enable = "avx2")]
#[inline]
fn lane_total(v: __m256i) -> u32 {
    let mut l = [0i32; LANES];
    // SAFETY: `LANES` i32 out, unaligned.
    unsafe { _mm256_storeu_si256(l.as_mut_ptr().cast(), v) };
    l.iter().map(|&c| c.unsigned_abs()).sum()
}

/// The lanes below `r` of a register, as a mask.
#[target_feature(enable = "avx2")]
#[inline]
fn first_lanes(r: usize) -> __m256i {
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    _mm256_cmpgt_epi32(_mm256_set1_epi32(r as i32), lane)
}

/// [`vote`] with `PLAIN` the trim without upper bound or scale, `BASE`
/// whether there is a base (`b` is empty without), and `TALLY` whether
/// `tally` is set.
///
/// # Safety
/// The CPU has AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
#[inline]
unsafe fn each<const M: usize, L: Load, const PLAIN: bool, const BASE: bool, const TALLY: bool>(
    xs: [&[u8]; M],
    b: &[f32],
    p: &Params<M>,
    acc: &mut [f32],
    mut tally: Option<&mut Tally<'_, M>>,
) {
    let n = acc.len();
    let xs = xs.map(|x| &x[..n * L::SIZE]);
    let b = if BASE { &b[..n] } else { b };
    let none = (u32::MAX, u32::MAX);
    let brackets = tally.as_ref().map_or([none; M], |t| t.brackets);
    let k = Consts {
        weight: p.weight.map(|w| _mm256_set1_ps(w)),
        below: p.threshold.map(|t| _mm256_set1_epi32(below(t))),
        last: p.upper.map(|u| _mm256_set1_epi32(below(u))),
        scale: p.scale.map(|s| _mm256_set1_ps(s)),
        brackets: brackets.map(|b| Bracket::new(b)),
    };
    let mut counts = [[_mm256_setzero_si256(); 3]; M];
    let mut inside = [0u8; 0].as_mut_slice();
    if let Some(t) = tally.as_deref_mut() {
        inside = &mut t.undecided[..n.div_ceil(LANES)];
    }
    let all = _mm256_set1_epi32(-1);
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
            let (v, flags) =
                eight::<M, L, PLAIN, BASE, TALLY>(x, bp, &k, p.sum_only, all, &mut counts);
            _mm256_storeu_ps(acc[c * LANES..].as_mut_ptr(), v);
            if TALLY {
                inside[c] = flags;
            }
        }
    }
    let r = n - full * LANES;
    if r > 0 {
        // The last few elements, padded to a whole register whose padding
        // is not tallied.
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
            let valid = first_lanes(r);
            let (v, flags) = eight::<M, L, PLAIN, BASE, TALLY>(
                x,
                bt.as_ptr(),
                &k,
                p.sum_only,
                valid,
                &mut counts,
            );
            _mm256_storeu_ps(out.as_mut_ptr(), v);
            if TALLY {
                inside[full] = flags;
            }
        }
        acc[at..].copy_from_slice(&out[..r]);
    }
    if let Some(t) = tally {
        for (tc, c) in t.counts.iter_mut().zip(&counts) {
            for (t, &c) in tc.iter_mut().zip(c) {
                *t += lane_total(c);
            }
        }
    }
}

/// Eight elements: the models' at `x`, the base's at `b` (unread without
/// a base), combined; with `TALLY`, each model's magnitudes in the lanes
/// `valid` marks tallied into `counts` (above, at `hi`, at `lo`) and, as
/// bits, where some model is undecided ([`Tally::undecided`]).
///
/// # Safety
/// As [`each`]'s, and `LANES` elements are readable at each pointer.
#[target_feature(enable = "avx2,f16c")]
#[inline]
unsafe fn eight<const M: usize, L: Load, const PLAIN: bool, const BASE: bool, const TALLY: bool>(
    x: [*const u8; M],
    b: *const f32,
    k: &Consts<M>,
    sum_only: bool,
    valid: __m256i,
    counts: &mut [[__m256i; 3]; M],
) -> (__m256, u8) {
    let zero = _mm256_setzero_ps();
    let abs = _mm256_set1_epi32(0x7fff_ffff);
    // SAFETY: the caller's.
    let bv = if BASE {
        unsafe { _mm256_loadu_ps(b) }
    } else {
        zero
    };
    // Each model's weighted, thinned delta `w·thin(x − b)`, summed from 0
    // in model order.
    let mut wv = [zero; M];
    let mut sum = zero;
    let mut inside = _mm256_setzero_si256();
    for i in 0..M {
        // SAFETY: the caller's.
        let x = unsafe { L::load(x[i]) };
        let d = if BASE { _mm256_sub_ps(x, bv) } else { x };
        let m = _mm256_and_si256(_mm256_castps_si256(d), abs);
        if TALLY {
            let [above, at_hi, at_lo, within] = k.brackets[i].test(m, valid);
            let c = &mut counts[i];
            c[0] = _mm256_add_epi32(c[0], above);
            c[1] = _mm256_add_epi32(c[1], at_hi);
            c[2] = _mm256_add_epi32(c[2], at_lo);
            // Undecided: in `[lo, hi)`, the elements the exact threshold
            // may keep where `hi` dropped them.
            inside = _mm256_or_si256(inside, _mm256_or_si256(within, at_lo));
        }
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
    // The election: a model agrees when its weighted delta is > 0 and the
    // sum ≥ 0, or < 0 and the sum < 0; flipping the deltas' signs where the
    // sum is negative makes both "> 0", and a NaN sum elects nothing. A
    // disagreeing model adds −0.0 (x + −0.0 is x for every x), the
    // reference's skipped addition.
    let positive = _mm256_cmp_ps::<_CMP_GE_OQ>(sum, zero);
    let negative = _mm256_cmp_ps::<_CMP_LT_OQ>(sum, zero);
    let valid_sum = _mm256_or_ps(positive, negative);
    let neg_zero = _mm256_set1_ps(-0.0);
    let flip = _mm256_and_ps(negative, neg_zero);
    let (mut num, mut den) = (zero, zero);
    for (&v, &w) in wv.iter().zip(&k.weight) {
        let s = _mm256_xor_ps(v, flip);
        let agree = _mm256_and_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(s, zero), valid_sum);
        num = _mm256_add_ps(num, _mm256_blendv_ps(neg_zero, v, agree));
        den = _mm256_add_ps(den, _mm256_blendv_ps(neg_zero, w, agree));
    }
    let flags = if TALLY {
        _mm256_movemask_ps(_mm256_castsi256_ps(inside)) as u8
    } else {
        0
    };
    let combined = if sum_only {
        num
    } else {
        let none = _mm256_cmp_ps::<_CMP_EQ_OQ>(den, zero);
        _mm256_div_ps(num, _mm256_blendv_ps(den, _mm256_set1_ps(1.0), none))
    };
    (combined, flags)
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
            Some(b) => count_each::<L, true>(x, b, (lo, hi), inside),
            None => count_each::<L, false>(x, &[], (lo, hi), inside),
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
    bracket: (u32, u32),
    inside: &mut [u8],
) -> [u32; 3] {
    let n = x.len() / L::SIZE;
    let b = if BASE { &b[..n] } else { b };
    let inside = &mut inside[..n.div_ceil(LANES)];
    let bracket = Bracket::new(bracket);
    let abs = _mm256_set1_epi32(0x7fff_ffff);
    let zero = _mm256_setzero_si256();
    let (mut n_above, mut n_hi, mut n_lo) = (zero, zero, zero);
    // One register of elements, `valid` marking the lanes that count.
    let mut eight = |x: *const u8, b: *const f32, valid: __m256i| -> u8 {
        // SAFETY: the caller's, and `LANES` elements are readable at each
        // pointer (below).
        let d = unsafe {
            let v = L::load(x);
            if BASE {
                _mm256_sub_ps(v, _mm256_loadu_ps(b))
            } else {
                v
            }
        };
        let m = _mm256_and_si256(_mm256_castps_si256(d), abs);
        let [above, at_hi, at_lo, within] = bracket.test(m, valid);
        n_above = _mm256_add_epi32(n_above, above);
        n_hi = _mm256_add_epi32(n_hi, at_hi);
        n_lo = _mm256_add_epi32(n_lo, at_lo);
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
        // The last few elements, padded to a whole register whose padding
        // does not count.
        let at = full * LANES;
        let mut pad = [0u8; LANES * 4];
        pad[..r * L::SIZE].copy_from_slice(&x[at * L::SIZE..]);
        let mut bt = [0f32; LANES];
        if BASE {
            bt[..r].copy_from_slice(&b[at..]);
        }
        inside[full] = eight(pad.as_ptr(), bt.as_ptr(), first_lanes(r));
    }
    [lane_total(n_above), lane_total(n_hi), lane_total(n_lo)]
}

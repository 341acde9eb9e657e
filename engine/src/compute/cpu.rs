//! The CPU backend: rayon over fixed chunks. Merges the fast loop knows
//! ([`merge::FastMerge`]), statistics and the trim's selection run as
//! vectorised block loops over per-thread buffers (`cpu/`); any other merge
//! decodes each chunk to f32 and runs the scalar reference
//! [`ops::merge_element`] per element.

mod lanes;
mod merge;
mod moments;
mod select;
mod stats;
#[cfg(target_arch = "x86_64")]
mod ties;
mod trimmed;

pub use moments::{Moments, moments};

use rayon::prelude::*;

use super::ops::{self, MergeParams, ModelParams, StatSums};
use super::{Backend, Input, Result};
use crate::DType;
use crate::convert::{decode_chunk, encode_chunk};

/// Elements per work item: a few hundred KiB per input, cache-sized.
const CHUNK: usize = 1 << 14;

/// The CPU backend.
pub(crate) struct Cpu;

fn decode(x: Input<'_>, start: usize, buf: &mut [f32]) {
    decode_chunk(merge::bytes(x, start, buf.len()), x.dtype, buf);
}

/// Whether TIES trims inside the merge's pass (`cpu/trimmed.rs`):
/// `THETA_CPU_TIES=one-pass`, read once. Off by default: on the 2-core
/// machine it was measured on it cost about 10 % more CPU time than
/// trimming first (`docs/compute.md`).
fn one_pass_ties() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("THETA_CPU_TIES").as_deref() == Ok("one-pass"))
}

/// The merge through [`ops::merge_element`], element by element: the
/// fallback for parameters [`merge::FastMerge`] does not handle.
fn merge_reference(
    p: &MergeParams,
    models: &[ModelParams],
    inputs: &[Input<'_>],
    base: Option<Input<'_>>,
    out: &mut [u8],
    out_dtype: DType,
) {
    let m = inputs.len();
    out.par_chunks_mut(CHUNK * out_dtype.size())
        .enumerate()
        .for_each(|(c, dst)| {
            let start = c * CHUNK;
            let len = dst.len() / out_dtype.size();
            let mut xs = vec![0f32; m * len];
            for (i, x) in inputs.iter().enumerate() {
                decode(*x, start, &mut xs[i * len..(i + 1) * len]);
            }
            let mut b = vec![0f32; if base.is_some() { len } else { 0 }];
            if let Some(bx) = base {
                decode(bx, start, &mut b);
            }
            let mut res = vec![0f32; len];
            let mut vals = vec![0f32; m];
            for (j, r) in res.iter_mut().enumerate() {
                for (i, v) in vals.iter_mut().enumerate() {
                    *v = xs[i * len + j];
                }
                let bj = b.get(j).copied().unwrap_or(0.0);
                *r = ops::merge_element(p, models, &vals, bj, (start + j) as u64);
            }
            encode_chunk(&res, dst, out_dtype);
        });
}

/// The statistics of (a, b) relative to `base`, chunk by chunk in order:
/// every sum, or with `only_norms` Σa², Σb² and Σa·b alone.
fn sums(a: Input<'_>, b: Input<'_>, base: Option<Input<'_>>, only_norms: bool) -> StatSums {
    let n = a.len();
    let parts: Vec<StatSums> = (0..n.div_ceil(CHUNK))
        .into_par_iter()
        .map_init(stats::Scratch::default, |s, c| {
            let start = c * CHUNK;
            let len = CHUNK.min(n - start);
            stats::chunk(s, a, b, base, start, len, only_norms)
        })
        .collect();
    let mut total = StatSums::default();
    for s in &parts {
        total.add(s);
    }
    total
}

impl Backend for Cpu {
    #[allow(clippy::too_many_arguments)]
    fn merge(
        &self,
        _tensor: &str,
        p: &MergeParams,
        models: &[ModelParams],
        inputs: &[Input<'_>],
        base: Option<Input<'_>>,
        out: &mut [u8],
        out_dtype: DType,
    ) -> Result<()> {
        if let Some(fast) = merge::FastMerge::new(p, models, inputs, base, out_dtype) {
            out.par_chunks_mut(CHUNK * out_dtype.size())
                .enumerate()
                .for_each_init(merge::Scratch::default, |s, (c, dst)| {
                    merge::chunk(&fast, s, c * CHUNK, dst)
                });
            return Ok(());
        }
        merge_reference(p, models, inputs, base, out, out_dtype);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn merge_trimmed(
        &self,
        tensor: &str,
        p: &MergeParams,
        models: &[ModelParams],
        trims: &[Option<usize>],
        inputs: &[Input<'_>],
        base: Option<Input<'_>>,
        out: &mut [u8],
        out_dtype: DType,
    ) -> Result<()> {
        if trims.iter().any(Option::is_some)
            && one_pass_ties()
            && trimmed::merge(p, models, trims, inputs, base, out, out_dtype)
        {
            return Ok(());
        }
        // Every model's threshold from one read of the base.
        let mut models = models.to_vec();
        let kth = select::kth_largest_abs_each(inputs, base, trims);
        for ((m, k), bits) in models.iter_mut().zip(trims).zip(kth) {
            if let Some(k) = *k {
                m.threshold_bits = ops::threshold_for_k(k, bits);
            }
        }
        self.merge(tensor, p, &models, inputs, base, out, out_dtype)
    }

    fn stats(
        &self,
        _tensor: &str,
        a: Input<'_>,
        b: Input<'_>,
        base: Option<Input<'_>>,
    ) -> Result<StatSums> {
        Ok(sums(a, b, base, false))
    }

    fn norms_dot(
        &self,
        _tensor: &str,
        a: Input<'_>,
        b: Input<'_>,
        base: Option<Input<'_>>,
    ) -> Result<StatSums> {
        Ok(sums(a, b, base, true))
    }

    fn kth_largest_abs(
        &self,
        _tensor: &str,
        x: Input<'_>,
        base: Option<Input<'_>>,
        k: usize,
    ) -> Result<u32> {
        Ok(select::kth_largest_abs(x, base, k))
    }

    #[allow(clippy::too_many_arguments)]
    fn lowrank(
        &self,
        _tensor: &str,
        w: Input<'_>,
        b: Input<'_>,
        a: Input<'_>,
        shape: [usize; 3],
        scale: f32,
        out: &mut [u8],
        out_dtype: DType,
    ) -> Result<()> {
        let [_, cols, rank] = shape;
        let mut av = vec![0f32; rank * cols];
        decode(a, 0, &mut av);
        out.par_chunks_mut(cols * out_dtype.size())
            .enumerate()
            .for_each(|(row, dst)| {
                let mut wr = vec![0f32; cols];
                let mut br = vec![0f32; rank];
                decode(w, row * cols, &mut wr);
                decode(b, row * rank, &mut br);
                let mut res = vec![0f32; cols];
                ops::lowrank_row(&wr, &br, &av, scale, &mut res);
                encode_chunk(&res, dst, out_dtype);
            });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The fast loops against the per-element references, on lengths that
    //! are not multiples of the block or chunk, unaligned bytes, NaN/Inf/±0
    //! and every kernel dtype.

    use super::*;

    const LENS: [usize; 6] = [1, 7, 1023, 1025, CHUNK + 3, 2 * CHUNK + 1001];

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| match ops::mix32(i as u32 ^ seed) % 97 {
                0 => f32::NAN,
                1 => f32::INFINITY,
                2 => f32::NEG_INFINITY,
                3 => -0.0,
                4 => 0.0,
                5 => 1e-39, // subnormal
                h => (ops::mix32(h ^ i as u32) as f32 / u32::MAX as f32 - 0.5) * 4.0,
            })
            .collect()
    }

    /// `xs` as `dtype` bytes starting one byte into the buffer (unaligned).
    fn unaligned(dtype: DType, xs: &[f32]) -> Vec<u8> {
        let mut out = vec![0u8; xs.len() * dtype.size() + 1];
        encode_chunk(xs, &mut out[1..], dtype);
        out
    }

    /// Same bits, NaN payloads aside (as `docs/compute.md` promises).
    fn bits_equal(a: &[u8], b: &[u8], dtype: DType, what: &str) {
        let n = a.len() / dtype.size();
        let (mut x, mut y) = (vec![0f32; n], vec![0f32; n]);
        decode_chunk(a, dtype, &mut x);
        decode_chunk(b, dtype, &mut y);
        for (i, (u, v)) in x.iter().zip(&y).enumerate() {
            assert!(
                u.to_bits() == v.to_bits() || (u.is_nan() && v.is_nan()),
                "{what}: element {i}: {u} vs {v}"
            );
        }
    }

    #[test]
    fn fast_merge_matches_the_reference() {
        lanes::on_every_isa(fast_merge_matches_the_reference_on);
    }

    fn fast_merge_matches_the_reference_on(isa: lanes::Isa) {
        let dtypes = [DType::F32, DType::F16, DType::BF16];
        // (length, dtype index, models, base of another dtype): 2 to 4
        // models of one dtype take the all-models loop; 5 models, or a base
        // of another dtype, the per-model loops. Then each dtype's
        // all-models loop once more over whole lanes and a tail.
        let cases = LENS
            .iter()
            .enumerate()
            .map(|(li, &n)| (n, li % 3, [3, 2, 4, 5, 2, 3][li], li == 4))
            .chain((0..3).map(|d| (1025, d, 3, false)));
        for (n, d, m, mixed) in cases {
            let dtype = dtypes[d];
            let other = dtypes[(d + 1) % 3];
            let base_dtype = if mixed { other } else { dtype };
            let raw: Vec<Vec<u8>> = (0..m as u32)
                .map(|s| unaligned(dtype, &values(n, s)))
                .chain([unaligned(base_dtype, &values(n, 99))])
                .collect();
            let inputs: Vec<Input<'_>> = raw[..m]
                .iter()
                .map(|b| Input::new(dtype, &b[1..]))
                .collect();
            let base_in = Input::new(base_dtype, &raw[m][1..]);
            // The output in the inputs' dtype, and in another (the
            // all-models loop encodes BF16 itself, other dtypes a block at
            // a time).
            for (out_dtype, has_base) in
                [(dtype, false), (dtype, true), (other, false), (other, true)]
            {
                let base = has_base.then_some(base_in);
                for sparsify in [
                    ops::SPARSIFY_NONE,
                    ops::SPARSIFY_MAGNITUDE,
                    ops::SPARSIFY_RANDOM,
                ] {
                    // A magnitude trim with its upper bound and scale, and
                    // the plain one TIES asks for (neither).
                    let plains: &[bool] = if sparsify == ops::SPARSIFY_MAGNITUDE {
                        &[false, true]
                    } else {
                        &[false]
                    };
                    for (combine, &plain) in [0, 1, 2, 3]
                        .into_iter()
                        .flat_map(|c| plains.iter().map(move |p| (c, p)))
                    {
                        let p = MergeParams {
                            n_models: m as u32,
                            has_base: u32::from(has_base),
                            sparsify,
                            combine,
                            // λ = 1 skips its multiply in the fast loop.
                            lambda: [0.7, 1.0][(sparsify + combine) as usize % 2],
                            name_hash: ops::name_hash("t"),
                            seed_lo: 5,
                            seed_hi: 1,
                            ..Default::default()
                        };
                        let models: Vec<ModelParams> = (0..m)
                            .map(|i| ModelParams {
                                weight: [0.5, -0.25, 1.0, 0.3, -1.5][i],
                                threshold_bits: select::kth_largest_abs(
                                    inputs[i],
                                    base,
                                    n.div_ceil(3),
                                ),
                                keep_below: [0x4000_0000, u32::MAX / 3 * 2, 0, 7 << 28, 1 << 31][i],
                                keep_all: u32::from(i == 2),
                                scale: if plain {
                                    1.0
                                } else {
                                    [4.0, 1.5, 1.0, 2.0, 0.5][i]
                                },
                                upper_bits: if plain {
                                    u32::MAX
                                } else {
                                    [u32::MAX, 0x3f80_0000, u32::MAX, u32::MAX, 0x4000_0000][i]
                                },
                                ..Default::default()
                            })
                            .collect();
                        let what = format!(
                            "{isa:?} n={n} m={m} {dtype}->{out_dtype} base={base_dtype}/{has_base} sparsify={sparsify} combine={combine} plain={plain}"
                        );
                        let fast = merge::FastMerge::new(&p, &models, &inputs, base, out_dtype);
                        assert!(fast.is_some(), "{what}: not on the fast path");
                        let mut want = vec![0u8; n * out_dtype.size() + 1];
                        merge_reference(&p, &models, &inputs, base, &mut want[1..], out_dtype);
                        let mut got = vec![0u8; n * out_dtype.size() + 1];
                        Cpu.merge("t", &p, &models, &inputs, base, &mut got[1..], out_dtype)
                            .expect("merge");
                        bits_equal(&got[1..], &want[1..], out_dtype, &what);
                    }
                }
            }
        }
    }

    #[test]
    fn unknown_parameters_take_the_reference_path() {
        let x = [1.0f32, 2.0];
        let inputs = [Input::f32(&x)];
        let model = ModelParams::default();
        let p = MergeParams {
            n_models: 1,
            ..Default::default()
        };
        assert!(merge::FastMerge::new(&p, &[model], &inputs, None, DType::F32).is_some());
        let odd = MergeParams { sparsify: 9, ..p };
        assert!(merge::FastMerge::new(&odd, &[model], &inputs, None, DType::F32).is_none());
        let odd = MergeParams { combine: 4, ..p };
        assert!(merge::FastMerge::new(&odd, &[model], &inputs, None, DType::F32).is_none());
        let padded = ModelParams {
            pad: [0, 1],
            ..model
        };
        assert!(merge::FastMerge::new(&p, &[padded], &inputs, None, DType::F32).is_none());
    }

    /// The norms pass gives the statistics pass's Σa², Σb² and Σa·b, bit
    /// for bit, on (a, b) relative to `c` and on their finite values alone
    /// (NaN makes every sum NaN).
    fn norms_dot_match_stats(isa: lanes::Isa, a: Input<'_>, b: Input<'_>, c: Option<Input<'_>>) {
        let finite = |x: Input<'_>| {
            let mut v = vec![0f32; x.len()];
            decode(x, 0, &mut v);
            v.iter_mut()
                .filter(|v| !v.is_finite())
                .for_each(|v| *v = 1.5);
            unaligned(x.dtype, &v)
        };
        let (fa, fb) = (finite(a), finite(b));
        let (fa, fb) = (Input::new(a.dtype, &fa[1..]), Input::new(b.dtype, &fb[1..]));
        let fc = c.map(finite);
        let fc = c
            .zip(fc.as_ref())
            .map(|(c, f)| Input::new(c.dtype, &f[1..]));
        for (a, b, c) in [(a, b, c), (fa, fb, fc)] {
            let want = Cpu.stats("t", a, b, c).expect("stats");
            let got = Cpu.norms_dot("t", a, b, c).expect("norms");
            for (g, w) in [(got.a2, want.a2), (got.b2, want.b2), (got.dot, want.dot)] {
                assert!(
                    g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                    "{isa:?} n={} {}: norms_dot {g} vs {w}",
                    a.len(),
                    a.dtype
                );
            }
        }
    }

    #[test]
    fn fast_stats_match_the_reference() {
        lanes::on_every_isa(fast_stats_match_the_reference_on);
    }

    fn fast_stats_match_the_reference_on(isa: lanes::Isa) {
        for &n in &LENS {
            for dtype in [DType::F32, DType::F16, DType::BF16] {
                let raw: Vec<Vec<u8>> = (0..3)
                    .map(|s| unaligned(dtype, &values(n, s + 7)))
                    .collect();
                let [a, b, c] = [0, 1, 2].map(|i| Input::new(dtype, &raw[i][1..]));
                // `b` equals `a` on every third element, so `changed` is tested.
                let mut same = raw[1].clone();
                let s = dtype.size();
                for i in (0..n).step_by(3) {
                    same[1 + i * s..1 + (i + 1) * s]
                        .copy_from_slice(&raw[0][1 + i * s..1 + (i + 1) * s]);
                }
                let b2 = Input::new(dtype, &same[1..]);
                for (bb, base) in [(b, None), (b2, None), (b, Some(c))] {
                    let got = Cpu.stats("t", a, bb, base).expect("stats");
                    norms_dot_match_stats(isa, a, bb, base);
                    let mut want = StatSums::default();
                    let (mut xa, mut xb, mut xc) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
                    decode(a, 0, &mut xa);
                    decode(bb, 0, &mut xb);
                    decode(c, 0, &mut xc);
                    for i in 0..n {
                        let w = if base.is_some() { xc[i] } else { 0.0 };
                        let (u, v) = if base.is_some() {
                            (xa[i] - w, xb[i] - w)
                        } else {
                            (xa[i], xb[i])
                        };
                        want.push(u, v);
                    }
                    assert_eq!(
                        (
                            got.n,
                            got.changed,
                            got.nonfinite_a,
                            got.nonfinite_b,
                            got.max_abs_d
                        ),
                        (
                            want.n,
                            want.changed,
                            want.nonfinite_a,
                            want.nonfinite_b,
                            want.max_abs_d
                        ),
                        "{isa:?} n={n} {dtype}"
                    );
                    for (g, w) in [
                        (got.a2, want.a2),
                        (got.b2, want.b2),
                        (got.d2, want.d2),
                        (got.dot, want.dot),
                        (got.sum_d, want.sum_d),
                    ] {
                        assert!(
                            (g.is_nan() && w.is_nan())
                                || g == w
                                || (g - w).abs() <= 1e-12 * w.abs().max(1.0),
                            "{isa:?} n={n} {dtype}: {g} vs {w}"
                        );
                    }
                }
            }
        }
        // Finite inputs: finite sums, so the comparison above is not vacuous.
        let xs: Vec<f32> = (0..1000).map(|i| i as f32 * 0.5).collect();
        let ys: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        let s = Cpu
            .stats("t", Input::f32(&xs), Input::f32(&ys), None)
            .expect("stats");
        assert_eq!(
            s.d2,
            (0..1000).map(|i| (i as f64 * 0.5).powi(2)).sum::<f64>()
        );
    }

    /// The sampled bracket, its one-pass count and gather, and the radix
    /// fallback each give a sort's k-th largest magnitude, including when
    /// the bracket misses.
    #[test]
    fn bracketed_select_matches_sorting() {
        lanes::on_every_isa(bracketed_select_matches_sorting_on);
    }

    fn bracketed_select_matches_sorting_on(isa: lanes::Isa) {
        for &n in &[1, 7, 1025, CHUNK + 3, 2 * CHUNK + 1001, 70_001] {
            for dtype in [DType::F32, DType::F16, DType::BF16] {
                let sampled: Vec<usize> = select::spans(n).flat_map(|(a, l)| a..a + l).collect();
                let mut unlucky = vec![0.25f32; n];
                // The sample sees only 0.25; the rest is larger.
                unlucky
                    .iter_mut()
                    .enumerate()
                    .for_each(|(i, x)| *x = 1.0 + (i % 13) as f32);
                sampled.iter().for_each(|&i| unlucky[i] = 0.25);
                let mut zeros = vec![0f32; n];
                zeros.iter_mut().step_by(97).for_each(|x| *x = -3.0);
                let data = [
                    ("values", values(n, 5)),
                    (
                        "equal",
                        (0..n)
                            .map(|i| if i % 3 == 0 { -0.5 } else { 0.5 })
                            .collect(),
                    ),
                    ("zeros", zeros),
                    ("unlucky", unlucky),
                ];
                let braw = unaligned(dtype, &values(n, 17));
                let b = Input::new(dtype, &braw[1..]);
                // The four as the models of one merge, each with its own k
                // and one not trimmed: one pass over the base answers each
                // bracket that hit, radix select the rest ("unlucky").
                let raws: Vec<Vec<u8>> = data.iter().map(|(_, xs)| unaligned(dtype, xs)).collect();
                let models: Vec<Input<'_>> =
                    raws.iter().map(|r| Input::new(dtype, &r[1..])).collect();
                for base in [None, Some(b)] {
                    let ks = [Some(n.div_ceil(2)), Some(n), None, Some(n.div_ceil(10))];
                    let got = select::kth_largest_abs_each(&models, base, &ks);
                    for (i, (k, g)) in ks.iter().zip(&got).enumerate() {
                        let want = k.map(|k| sorted_mags(models[i], base)[k - 1]);
                        assert_eq!(
                            *g,
                            want,
                            "{isa:?} {} n={n} {dtype} base={}: each",
                            data[i].0,
                            base.is_some()
                        );
                    }
                }
                for (what, xs) in &data {
                    let raw = unaligned(dtype, xs);
                    let x = Input::new(dtype, &raw[1..]);
                    for base in [None, Some(b)] {
                        let mags = sorted_mags(x, base);
                        for k in [1, 2, n / 10, n / 2, n - 1, n] {
                            if k == 0 || k > n {
                                continue;
                            }
                            let want = mags[k - 1];
                            let at = format!(
                                "{isa:?} {what} n={n} {dtype} base={} k={k}",
                                base.is_some()
                            );
                            assert_eq!(select::kth_largest_abs(x, base, k), want, "{at}");
                            assert_eq!(select::radix(x, base, k), want, "{at}");
                            let (lo, hi) = select::bracket(x, base, k);
                            if let Some(got) = select::within(x, base, k, lo, hi) {
                                assert_eq!(got, want, "{at} sampled [{lo:#x}, {hi:#x}]");
                            } else {
                                assert!(
                                    *what == "unlucky" || n < 70_001,
                                    "{at}: the sample missed [{lo:#x}, {hi:#x}]"
                                );
                            }
                            // Exact, narrow and missing brackets.
                            assert_eq!(select::within(x, base, k, want, want), Some(want), "{at}");
                            if want > 0 && want < u32::MAX {
                                let narrow = select::within(x, base, k, want - 1, want + 1);
                                assert!(narrow.is_none_or(|g| g == want), "{at}");
                                assert_eq!(
                                    select::within(x, base, k, want + 1, u32::MAX),
                                    None,
                                    "{at}"
                                );
                                assert_eq!(select::within(x, base, k, 0, want - 1), None, "{at}");
                            }
                        }
                    }
                }
            }
        }
    }

    /// The one-pass trim and merge against finding each threshold first
    /// and running the per-element reference: the same bits, on data whose
    /// brackets hit, miss, or leave too many elements undecided, with NaN,
    /// ±Inf, all-zero deltas, ties at the threshold, k = 1 and k = n.
    #[test]
    fn one_pass_trim_matches_trimming_first() {
        lanes::on_every_isa(one_pass_trim_matches_trimming_first_on);
    }

    fn one_pass_trim_matches_trimming_first_on(isa: lanes::Isa) {
        let big = select::MIN_SAMPLED + 3 * CHUNK + 17;
        let dtypes = [DType::F32, DType::F16, DType::BF16];
        let mut runs = 0;
        for n in [select::MIN_SAMPLED - 1, big] {
            // Model 0 of "unlucky": the sample sees only 0.25, the rest is
            // larger. Of "crowded": 40 % zero deltas, 60 % kept, so the
            // bracket's low end is 0 and the zeros are undecided.
            let sampled: Vec<usize> = select::spans(n).flat_map(|(a, l)| a..a + l).collect();
            let mut unlucky: Vec<f32> = (0..n).map(|i| 1.0 + (i % 13) as f32).collect();
            sampled.iter().for_each(|&i| unlucky[i] = 0.25);
            let crowded: Vec<f32> = values(n, 4)
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    if ops::mix32(i as u32) % 5 < 2 {
                        0.0
                    } else {
                        v + 9.0
                    }
                })
                .collect();
            let grid = |s: u32| -> Vec<f32> {
                values(n, s)
                    .iter()
                    .map(|v| (v * 4.0).round() / 4.0)
                    .collect()
            };
            // (name, the models' values, whether the one-pass path runs).
            type Set = (&'static str, [Vec<f32>; 3], Option<bool>);
            let sets: [Set; 5] = [
                (
                    "values",
                    [values(n, 0), values(n, 1), values(n, 2)],
                    Some(true),
                ),
                ("grid", [grid(0), grid(1), grid(2)], None),
                ("zeros", [values(n, 9), values(n, 9), values(n, 3)], None),
                (
                    "unlucky",
                    [unlucky, values(n, 1), values(n, 2)],
                    Some(false),
                ),
                (
                    "crowded",
                    [crowded, values(n, 1), values(n, 2)],
                    Some(false),
                ),
            ];
            for (di, (what, xs, fused)) in sets.iter().enumerate() {
                let dtype = dtypes[di % 3];
                let out_dtype = dtypes[(di + 1) % 3];
                let raw: Vec<Vec<u8>> = xs.iter().map(|x| unaligned(dtype, x)).collect();
                let inputs: Vec<Input<'_>> =
                    raw.iter().map(|b| Input::new(dtype, &b[1..])).collect();
                // Zero deltas from "zeros"' first two models; a zero base
                // keeps the others' samples as built.
                let b = match *what {
                    "unlucky" | "crowded" => vec![0.0; n],
                    _ => values(n, 9),
                };
                let braw = unaligned(dtype, &b);
                let combine = [
                    ops::COMBINE_TIES_MEAN,
                    ops::COMBINE_TIES_SUM,
                    ops::COMBINE_LINEAR,
                ][di % 3];
                for has_base in [false, true] {
                    let base = has_base.then_some(Input::new(dtype, &braw[1..]));
                    let k0 = match *what {
                        "crowded" => n * 3 / 5,
                        "unlucky" => n / 10,
                        _ => n / 2,
                    };
                    for trims in [
                        [Some(k0), Some(n / 10), Some(n * 3 / 4)],
                        [Some(k0), None, Some(n)],
                        [Some(1), Some(n - 1), None],
                    ] {
                        let p = MergeParams {
                            n_models: 3,
                            has_base: u32::from(has_base),
                            sparsify: ops::SPARSIFY_MAGNITUDE,
                            combine,
                            lambda: 0.7,
                            ..Default::default()
                        };
                        // An untrimmed model keeps nothing (density 0).
                        let models: Vec<ModelParams> = (0..3)
                            .map(|i| ModelParams {
                                weight: [0.5, -0.25, 1.0][i],
                                scale: [1.0, 1.5, 1.0][i],
                                threshold_bits: u32::MAX,
                                upper_bits: u32::MAX,
                                ..Default::default()
                            })
                            .collect();
                        let mut exact = models.clone();
                        for (m, (k, x)) in exact.iter_mut().zip(trims.iter().zip(&inputs)) {
                            if let Some(k) = *k {
                                m.threshold_bits = select::kth_largest_abs(*x, base, k);
                            }
                        }
                        let at = format!(
                            "{isa:?} {what} n={n} {dtype}->{out_dtype} base={has_base} \
                             combine={combine} trims={trims:?}"
                        );
                        let mut want = vec![0u8; n * out_dtype.size() + 1];
                        merge_reference(&p, &exact, &inputs, base, &mut want[1..], out_dtype);
                        let mut got = vec![0u8; n * out_dtype.size() + 1];
                        let ran = trimmed::merge(
                            &p,
                            &models,
                            &trims,
                            &inputs,
                            base,
                            &mut got[1..],
                            out_dtype,
                        );
                        if let Some(f) = fused
                            && n >= select::MIN_SAMPLED
                            && trims[1] == Some(n / 10)
                        {
                            assert_eq!(ran, *f, "{at}: the one-pass path ran");
                        }
                        if ran {
                            runs += 1;
                            bits_equal(&got[1..], &want[1..], out_dtype, &at);
                        }
                        got.fill(0);
                        Cpu.merge_trimmed(
                            "t",
                            &p,
                            &models,
                            &trims,
                            &inputs,
                            base,
                            &mut got[1..],
                            out_dtype,
                        )
                        .expect("merge");
                        bits_equal(&got[1..], &want[1..], out_dtype, &at);
                    }
                }
            }
        }
        assert!(runs >= 15, "{isa:?}: the one-pass path ran {runs} times");
    }

    /// Process CPU time (user + system) in seconds, from `/proc/self/stat`.
    fn cpu_seconds() -> f64 {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let after = stat.rsplit(')').next().unwrap_or("");
        let f: Vec<f64> = after
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0.0))
            .collect();
        // Fields 14 and 15 of the whole line; clock ticks of 10 ms.
        (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
    }

    /// A timing, not a check: TIES over bench-sized BF16 tensors, one pass
    /// against trimming first, alternating, in wall and CPU time per merge
    /// (CPU time is steadier on a shared machine). `cargo test --release -p
    /// theta-engine one_pass_timing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn one_pass_timing() {
        let n = 4096 * 11008;
        let dt = DType::BF16;
        let data = |seed: u32| {
            let xs: Vec<f32> = (0..n)
                .map(|i| (ops::mix32(i as u32 ^ seed) as f32 / u32::MAX as f32 - 0.5) * 0.02)
                .collect();
            let mut out = vec![0u8; n * 2];
            encode_chunk(&xs, &mut out, dt);
            out
        };
        let raw: Vec<Vec<u8>> = (0..4).map(data).collect();
        let inputs: Vec<Input<'_>> = raw[..3].iter().map(|b| Input::new(dt, b)).collect();
        let base = Some(Input::new(dt, &raw[3]));
        let p = MergeParams {
            n_models: 3,
            has_base: 1,
            sparsify: ops::SPARSIFY_MAGNITUDE,
            combine: ops::COMBINE_TIES_MEAN,
            lambda: 1.0,
            ..Default::default()
        };
        let models = vec![
            ModelParams {
                weight: 1.0 / 3.0,
                scale: 1.0,
                upper_bits: u32::MAX,
                ..Default::default()
            };
            3
        ];
        let trims = [Some(n / 2); 3];
        let mut out = vec![0u8; n * 2];
        let mut exact = models.clone();
        super::super::trim(&Cpu, "t", &mut exact, &trims, &inputs, base).expect("trim");
        let mut totals = [(0f64, 0f64); 3];
        let rounds = 8;
        for r in 0..=rounds {
            for (v, total) in totals.iter_mut().enumerate() {
                let (t0, c0) = (std::time::Instant::now(), cpu_seconds());
                if v == 2 {
                    Cpu.merge("t", &p, &exact, &inputs, base, &mut out, dt)
                        .expect("merge");
                } else if v == 0 {
                    // The default path (unless THETA_CPU_TIES=one-pass):
                    // every threshold from one pass, then the merge.
                    Cpu.merge_trimmed("t", &p, &models, &trims, &inputs, base, &mut out, dt)
                        .expect("merge");
                } else {
                    let done = trimmed::merge(&p, &models, &trims, &inputs, base, &mut out, dt);
                    assert!(done, "the one-pass path fell back");
                }
                if r > 0 {
                    total.0 += t0.elapsed().as_secs_f64();
                    total.1 += cpu_seconds() - c0;
                }
            }
        }
        let gb = (5 * n * 2) as f64 / 1e9;
        for (name, (wall, cpu)) in ["trim first", "one pass", "merge alone"].iter().zip(totals) {
            let (wall, cpu) = (wall / rounds as f64, cpu / rounds as f64);
            eprintln!(
                "{name}: {:.1} ms wall ({:.2} GB/s), {:.1} ms CPU",
                wall * 1e3,
                gb / wall,
                cpu * 1e3
            );
        }
    }

    /// Magnitude bits of `x − base`, largest first.
    fn sorted_mags(x: Input<'_>, base: Option<Input<'_>>) -> Vec<u32> {
        let n = x.len();
        let mut v = vec![0f32; n];
        decode(x, 0, &mut v);
        if let Some(b) = base {
            let mut w = vec![0f32; n];
            decode(b, 0, &mut w);
            v.iter_mut().zip(&w).for_each(|(a, c)| *a -= c);
        }
        let mut mags: Vec<u32> = v.iter().map(|a| a.to_bits() & 0x7fff_ffff).collect();
        mags.sort_unstable_by(|a, b| b.cmp(a));
        mags
    }

    #[test]
    fn radix_select_matches_sorting() {
        for &n in &LENS {
            for dtype in [DType::F32, DType::F16, DType::BF16] {
                let mut xs = values(n, 3);
                // Ties: a run of equal magnitudes of both signs.
                for (i, x) in xs.iter_mut().enumerate().take(n / 4) {
                    *x = if i % 2 == 0 { 0.5 } else { -0.5 };
                }
                let raw = unaligned(dtype, &xs);
                let braw = unaligned(dtype, &values(n, 11));
                let (x, b) = (Input::new(dtype, &raw[1..]), Input::new(dtype, &braw[1..]));
                for base in [None, Some(b)] {
                    let mut v = vec![0f32; n];
                    let mut w = vec![0f32; n];
                    decode(x, 0, &mut v);
                    decode(b, 0, &mut w);
                    let mut mags: Vec<u32> = v
                        .iter()
                        .zip(&w)
                        .map(|(a, c)| {
                            (if base.is_some() { a - c } else { *a }).to_bits() & 0x7fff_ffff
                        })
                        .collect();
                    mags.sort_unstable_by(|a, b| b.cmp(a));
                    for k in [1, n.div_ceil(2), n.div_ceil(10), n] {
                        assert_eq!(
                            select::kth_largest_abs(x, base, k),
                            mags[k - 1],
                            "n={n} {dtype} k={k}"
                        );
                    }
                }
            }
        }
        let zeros = [0f32; 100];
        assert_eq!(select::kth_largest_abs(Input::f32(&zeros), None, 50), 0);
    }
}

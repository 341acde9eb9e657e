//! The merge's chunk loop for the parameter combinations it knows (no,
//! magnitude or random sparsification; linear or TIES combination): the
//! same f32 operations in the same order as [`ops::merge_element`], laid out
//! as one loop per step over a block so the compiler vectorises it.
//! Anything else goes through the per-element reference (`cpu.rs`).

use super::lanes::{self, BLOCK};
#[cfg(target_arch = "x86_64")]
use super::ties;
use crate::DType;
use crate::compute::Input;
use crate::compute::ops::{self, MergeParams, ModelParams};

/// A merge ready to run chunk by chunk.
pub(super) struct FastMerge<'a> {
    p: &'a MergeParams,
    models: &'a [ModelParams],
    inputs: &'a [Input<'a>],
    base: Option<Input<'a>>,
    out_dtype: DType,
    /// Per model, [`ops::draw_key`].
    keys: Vec<u32>,
    /// The dtype of every input and the base, when they share one.
    dtype: Option<DType>,
}

/// What a chunk loop shows its caller between forming each model's delta
/// and thinning it: the one-pass trim (`trimmed.rs`) counts there.
pub(super) trait Tap {
    /// Whether the tap looks at deltas at all (the plain merge's does not,
    /// which lets an unthinned linear merge fuse its per-model loops).
    const LOOKS: bool = true;
    /// Model `i`'s delta over the block at `at`, before sparsification.
    fn delta(&mut self, i: usize, at: usize, d: &[f32]);
    /// Every model's delta of the `len` elements of the block at `at` was
    /// shown.
    fn block(&mut self, at: usize, len: usize);
    /// Per model, the magnitude bracket `[lo, hi]` to tally when the tap
    /// takes the trim's counts from the AVX2 vote loop (`ties.rs`) instead
    /// of [`Tap::delta`]; `None` where it does not.
    fn brackets(&self) -> Option<&[Option<(u32, u32)>]> {
        None
    }
    /// The vote loop tallied the `len` elements of the block at `at`: per
    /// model its counts (above `hi`, at `hi`, at `lo`), and bit `j` of
    /// `undecided` set where some model's magnitude lies in `[lo, hi)`.
    fn tallied(&mut self, _at: usize, _len: usize, _counts: &[[u32; 3]], _undecided: &[u8]) {}
}

/// The plain merge shows nothing.
impl Tap for () {
    const LOOKS: bool = false;
    #[inline(always)]
    fn delta(&mut self, _: usize, _: usize, _: &[f32]) {}
    #[inline(always)]
    fn block(&mut self, _: usize, _: usize) {}
}

/// Per-thread buffers, reused across chunks.
#[derive(Default)]
pub(super) struct Scratch {
    f: Vec<f32>,
    /// F16 bits of unaligned inputs (`lanes::decode`).
    bits: Vec<u16>,
}

impl<'a> FastMerge<'a> {
    /// The fast loop for `p`, or `None` when it sets something this loop
    /// does not implement. The check compares the whole parameter blocks
    /// with copies holding only the fields handled here, so a field added
    /// later routes to the reference until it is handled here too.
    pub(super) fn new(
        p: &'a MergeParams,
        models: &'a [ModelParams],
        inputs: &'a [Input<'a>],
        base: Option<Input<'a>>,
        out_dtype: DType,
    ) -> Option<Self> {
        // Every field is named, and the update stays: a field added later
        // takes its default here, so a set one makes the blocks differ.
        #[allow(clippy::needless_update)]
        let known = MergeParams {
            n_models: p.n_models,
            len: p.len,
            seg_words: p.seg_words,
            has_base: p.has_base,
            sparsify: p.sparsify,
            combine: p.combine,
            lambda: p.lambda,
            name_hash: p.name_hash,
            seed_lo: p.seed_lo,
            seed_hi: p.seed_hi,
            offset_lo: p.offset_lo,
            offset_hi: p.offset_hi,
            ..Default::default()
        };
        let known_models = models.iter().all(|m| {
            let k = ModelParams {
                weight: m.weight,
                threshold_bits: m.threshold_bits,
                keep_below: m.keep_below,
                keep_all: m.keep_all,
                scale: m.scale,
                upper_bits: m.upper_bits,
                ..Default::default()
            };
            bytemuck::bytes_of(&k) == bytemuck::bytes_of(m)
        });
        let handled = bytemuck::bytes_of(&known) == bytemuck::bytes_of(p)
            && known_models
            && p.sparsify <= ops::SPARSIFY_RANDOM
            && p.combine <= ops::COMBINE_LINEAR_MEAN
            && (p.has_base != 0) == base.is_some()
            && models.len() == inputs.len()
            && inputs
                .iter()
                .chain(&base)
                .all(|x| matches!(x.dtype, DType::F32 | DType::F16 | DType::BF16));
        let seed = u64::from(p.seed_lo) | (u64::from(p.seed_hi) << 32);
        let keys = (0..models.len() as u32)
            .map(|i| ops::draw_key(seed, p.name_hash, i))
            .collect();
        let dtype = inputs
            .first()
            .map(|x| x.dtype)
            .filter(|&d| inputs.iter().chain(&base).all(|x| x.dtype == d));
        handled.then_some(FastMerge {
            dtype,
            p,
            models,
            inputs,
            base,
            out_dtype,
            keys,
        })
    }

    /// Merges elements `start..` into `dst` (whole elements of the output),
    /// showing `tap` each block's deltas.
    #[inline(always)]
    pub(super) fn chunk_impl<T: Tap>(
        &self,
        s: &mut Scratch,
        start: usize,
        dst: &mut [u8],
        tap: &mut T,
    ) {
        let m = self.models.len();
        s.f.resize((m + 4) * BLOCK, 0.0);
        let os = self.out_dtype.size();
        for (bi, out) in dst.chunks_mut(BLOCK * os).enumerate() {
            let at = start + bi * BLOCK;
            let len = out.len() / os;
            let (b, rest) = s.f.split_at_mut(BLOCK);
            let (acc, rest) = rest.split_at_mut(BLOCK);
            let (num, rest) = rest.split_at_mut(BLOCK);
            let (den, ds) = rest.split_at_mut(BLOCK);
            let (b, acc, num, den) = (
                &mut b[..len],
                &mut acc[..len],
                &mut num[..len],
                &mut den[..len],
            );
            let bits = &mut s.bits;
            if let Some(x) = self.base {
                lanes::decode(bytes(x, at, len), x.dtype, b, bits);
            }
            let c = self.p.combine;
            let ties = self.votes();
            // With nothing looking between the steps, every model's steps
            // for an element run in one loop; otherwise each step is a loop
            // over the block. Random thinning vectorises only in a loop of
            // its own, so it is never fused.
            let fuse = !T::LOOKS && self.p.sparsify != ops::SPARSIFY_RANDOM;
            let done = if fuse {
                self.all_models(at, b, acc, ds, bits)
            } else {
                T::LOOKS && self.vote_tallied(at, b, acc, tap)
            };
            if !done {
                if fuse {
                    // Each model's delta is formed, thinned, kept for the
                    // vote and added in one loop, `acc + w·thin(x − b)`, the
                    // same operations in the same order as the steps below.
                    acc.fill(0.0);
                    for (i, d) in ds.chunks_exact_mut(BLOCK).enumerate() {
                        self.fused(i, at, acc, b, &mut d[..len], bits, ties);
                    }
                } else {
                    for (i, d) in ds.chunks_exact_mut(BLOCK).enumerate() {
                        self.delta(i, at, b, &mut d[..len], bits, tap);
                    }
                    tap.block(at, len);
                    for (i, d) in ds.chunks_exact_mut(BLOCK).enumerate() {
                        self.sparsify(i, at, &mut d[..len]);
                    }
                    acc.fill(0.0);
                    for (i, d) in ds.chunks_exact(BLOCK).enumerate() {
                        let w = self.models[i].weight;
                        for (a, &v) in acc.iter_mut().zip(&d[..len]) {
                            *a += w * v;
                        }
                    }
                }
                if ties {
                    self.vote(ds, acc, num, den);
                }
            }
            if c == ops::COMBINE_LINEAR_MEAN {
                // The reference sums the weights per element, in order: the
                // same operations give the same value once per block.
                let mut w = 0.0f32;
                for m in self.models {
                    w += m.weight;
                }
                let w = if w.abs() < 1e-8 { 1.0 } else { w };
                for a in acc.iter_mut() {
                    *a /= w;
                }
            }
            // `base + λ·a` and the encode, in one loop where the encode is
            // bit operations.
            match self.out_dtype {
                DType::BF16 => self.last(acc, b, out.as_chunks_mut().0, |v| {
                    lanes::bf16_bits(v).to_le_bytes()
                }),
                DType::F32 => self.last(acc, b, out.as_chunks_mut().0, f32::to_le_bytes),
                // F16: into the (now free) delta scratch, then encoded.
                _ => {
                    let f = &mut ds[..len];
                    self.last(acc, b, bytemuck::cast_slice_mut(f), f32::to_ne_bytes);
                    lanes::encode(f, out, self.out_dtype, bits);
                }
            }
        }
    }

    /// `base + λ·a` (or `0 + λ·a` without a base) of each combined delta
    /// `a` of `acc`, encoded by `enc` into `out`.
    #[inline(always)]
    fn last<const S: usize>(
        &self,
        acc: &[f32],
        b: &[f32],
        out: &mut [[u8; S]],
        enc: impl Fn(f32) -> [u8; S],
    ) {
        let lambda = self.p.lambda;
        let out = &mut out[..acc.len()];
        if self.base.is_some() && lambda == 1.0 {
            // `1·a` is `a`, NaN payloads aside (which no path promises): one
            // multiply less per element for the common λ.
            for ((o, &a), &bv) in out.iter_mut().zip(acc).zip(b) {
                *o = enc(bv + a);
            }
        } else if self.base.is_some() {
            for ((o, &a), &bv) in out.iter_mut().zip(acc).zip(b) {
                *o = enc(bv + lambda * a);
            }
        } else {
            for (o, &a) in out.iter_mut().zip(acc) {
                *o = enc(0.0 + lambda * a);
            }
        }
    }

    /// TIES' vote over a block whose thinned deltas are `ds` (model `i`'s
    /// at `ds[i * BLOCK..]`) and whose weighted sums are `acc`: `acc` then
    /// holds the combined deltas.
    #[inline(always)]
    fn vote(&self, ds: &[f32], acc: &mut [f32], num: &mut [f32], den: &mut [f32]) {
        let len = acc.len();
        num.fill(0.0);
        den.fill(0.0);
        for (i, d) in ds.chunks_exact(BLOCK).enumerate() {
            let w = self.models[i].weight;
            for (((n, e), &dv), &sum) in num
                .iter_mut()
                .zip(den.iter_mut())
                .zip(&d[..len])
                .zip(acc.iter())
            {
                let (dn, de) = elect(w * dv, w, sum);
                *n += dn;
                *e += de;
            }
        }
        if self.p.combine == ops::COMBINE_TIES_SUM {
            acc.copy_from_slice(num);
        } else {
            for ((a, &n), &e) in acc.iter_mut().zip(num.iter()).zip(den.iter()) {
                *a = n / if e == 0.0 { 1.0 } else { e };
            }
        }
    }

    /// The block at `at` with every model's steps for an element in one
    /// loop, so deltas stay in registers: `acc` gets the combined deltas
    /// (the weighted sum, or TIES' vote). `false` (nothing done) unless
    /// there are 2 to 4 models and they and the base share one dtype.
    #[inline(always)]
    fn all_models(
        &self,
        at: usize,
        b: &[f32],
        acc: &mut [f32],
        ds: &mut [f32],
        bits: &mut Vec<u16>,
    ) -> bool {
        let Some(dtype) = self.dtype else {
            return false;
        };
        match self.models.len() {
            2 => self.models_dtype::<2>(dtype, at, b, acc, ds, bits),
            3 => self.models_dtype::<3>(dtype, at, b, acc, ds, bits),
            4 => self.models_dtype::<4>(dtype, at, b, acc, ds, bits),
            _ => return false,
        }
        true
    }

    /// The block at `at` through the AVX2 vote loop, which tallies the
    /// trim's counts for `tap` as it merges: `acc` gets the combined
    /// deltas. `false` (nothing done) unless the tap tallies there, the
    /// merge votes, and [`FastMerge::all_models`] would take the block.
    #[inline(always)]
    fn vote_tallied<T: Tap>(&self, at: usize, b: &[f32], acc: &mut [f32], tap: &mut T) -> bool {
        #[cfg(target_arch = "x86_64")]
        if let (Some(dtype), true, true) = (
            self.dtype,
            self.votes() && self.p.sparsify != ops::SPARSIFY_RANDOM,
            lanes::avx2(),
        ) {
            match self.models.len() {
                2 => return self.vote_tallied_m::<2, T>(dtype, at, b, acc, tap),
                3 => return self.vote_tallied_m::<3, T>(dtype, at, b, acc, tap),
                4 => return self.vote_tallied_m::<4, T>(dtype, at, b, acc, tap),
                _ => {}
            }
        }
        let _ = (at, b, acc, tap);
        false
    }

    /// [`FastMerge::vote_tallied`] for `M` models of `dtype`.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn vote_tallied_m<const M: usize, T: Tap>(
        &self,
        dtype: DType,
        at: usize,
        b: &[f32],
        acc: &mut [f32],
        tap: &mut T,
    ) -> bool {
        let Some(brackets) = tap.brackets() else {
            return false;
        };
        let none = (u32::MAX, u32::MAX);
        let brackets = std::array::from_fn(|i| brackets.get(i).copied().flatten().unwrap_or(none));
        let len = acc.len();
        let mut undecided = [0u8; BLOCK / 8];
        let mut tally = ties::Tally {
            brackets,
            counts: [[0; 3]; M],
            undecided: &mut undecided,
        };
        let p = self.vote_params::<M>();
        let xs = std::array::from_fn(|i| bytes(self.inputs[i], at, len));
        let b = self.base.is_some().then_some(b);
        let t = Some(&mut tally);
        // SAFETY: `avx2` (the caller's test) says the CPU has AVX2 and F16C.
        unsafe {
            match dtype {
                DType::BF16 => ties::vote::<M, ties::Bf16>(xs, b, &p, acc, t),
                DType::F16 => ties::vote::<M, ties::F16>(xs, b, &p, acc, t),
                _ => ties::vote::<M, ties::F32>(xs, b, &p, acc, t),
            }
        }
        let counts = tally.counts;
        tap.tallied(at, len, &counts, &undecided[..len.div_ceil(8)]);
        true
    }

    /// Whether the combination is TIES' sign election.
    fn votes(&self) -> bool {
        let c = self.p.combine;
        c == ops::COMBINE_TIES_MEAN || c == ops::COMBINE_TIES_SUM
    }

    /// Whether the combined delta is the plain weighted sum of the deltas:
    /// no thinning and no vote.
    fn linear_unthinned(&self) -> bool {
        self.p.sparsify == ops::SPARSIFY_NONE && !self.votes()
    }

    /// [`FastMerge::all_models`] for `M` models of `dtype`.
    #[inline(always)]
    fn models_dtype<const M: usize>(
        &self,
        dtype: DType,
        at: usize,
        b: &[f32],
        acc: &mut [f32],
        ds: &mut [f32],
        bits: &mut Vec<u16>,
    ) {
        let len = acc.len();
        let raw = |i: usize| bytes(self.inputs[i], at, len);
        #[cfg(target_arch = "x86_64")]
        if self.votes() && lanes::avx2() {
            let p = self.vote_params::<M>();
            let (xs, b) = (std::array::from_fn(raw), self.base.is_some().then_some(b));
            // SAFETY: `avx2` says the CPU has AVX2 and F16C.
            unsafe {
                match dtype {
                    DType::BF16 => ties::vote::<M, ties::Bf16>(xs, b, &p, acc, None),
                    DType::F16 => ties::vote::<M, ties::F16>(xs, b, &p, acc, None),
                    // F32: `new` takes no other dtype.
                    _ => ties::vote::<M, ties::F32>(xs, b, &p, acc, None),
                }
            }
            return;
        }
        match dtype {
            DType::BF16 => {
                let xs = std::array::from_fn(|i| raw(i).as_chunks::<2>().0);
                self.models_thin::<M, 2>(xs, b, acc, |x| {
                    x.map(|c| lanes::bf16_to_f32(u16::from_le_bytes(c)))
                })
            }
            #[cfg(target_arch = "x86_64")]
            DType::F16 if lanes::f16c() && self.linear_unthinned() => {
                let w = std::array::from_fn(|i| self.models[i].weight);
                let b = self.base.is_some().then_some(b);
                // SAFETY: `f16c` says the CPU has F16C.
                unsafe { lanes::f16c::weighted_sum::<M>(std::array::from_fn(raw), b, w, acc) }
            }
            #[cfg(target_arch = "x86_64")]
            DType::F16 if lanes::f16c() => {
                let xs = std::array::from_fn(|i| raw(i).as_chunks::<2>().0);
                // SAFETY: `f16c` says the CPU has F16C.
                self.models_thin::<M, 2>(xs, b, acc, |x| unsafe { lanes::f16c::lanes(x) })
            }
            DType::F16 => {
                // Without F16C, F16 converts fastest a block at a time
                // (`half`): each model's block is decoded first.
                for (i, d) in ds.chunks_exact_mut(BLOCK).take(M).enumerate() {
                    lanes::decode(raw(i), dtype, &mut d[..len], bits);
                }
                let ds: &[f32] = ds;
                let xs = std::array::from_fn(|i| {
                    bytemuck::cast_slice::<f32, u8>(&ds[i * BLOCK..][..len])
                        .as_chunks::<4>()
                        .0
                });
                self.models_thin::<M, 4>(xs, b, acc, |x| x.map(f32::from_ne_bytes))
            }
            // F32: `new` takes no other dtype.
            _ => {
                let xs = std::array::from_fn(|i| raw(i).as_chunks::<4>().0);
                self.models_thin::<M, 4>(xs, b, acc, |x| x.map(f32::from_le_bytes))
            }
        }
    }

    /// The first `M` models' parameters for [`ties::vote`]: their trims
    /// (none keeps everything) and weights.
    #[cfg(target_arch = "x86_64")]
    fn vote_params<const M: usize>(&self) -> ties::Params<M> {
        let mp: [&ModelParams; M] = std::array::from_fn(|i| &self.models[i]);
        let trims = self.p.sparsify == ops::SPARSIFY_MAGNITUDE;
        ties::Params {
            weight: mp.map(|m| m.weight),
            threshold: mp.map(|m| if trims { m.threshold_bits } else { 0 }),
            upper: mp.map(|m| if trims { m.upper_bits } else { u32::MAX }),
            scale: mp.map(|m| if trims { m.scale } else { 1.0 }),
            sum_only: self.p.combine == ops::COMBINE_TIES_SUM,
        }
    }

    /// [`FastMerge::all_models`] for `M` models of elements of `S` bytes
    /// decoded [`LANES`] at a time by `get`, per sparsification (none or
    /// magnitude: random thinning is never fused, see
    /// [`FastMerge::chunk_impl`]).
    #[inline(always)]
    fn models_thin<const M: usize, const S: usize>(
        &self,
        xs: [&[[u8; S]]; M],
        b: &[f32],
        acc: &mut [f32],
        get: impl Fn(&[[u8; S]; LANES]) -> [f32; LANES],
    ) {
        let mp: [&ModelParams; M] = std::array::from_fn(|i| &self.models[i]);
        let w = mp.map(|m| m.weight);
        let c = self.p.combine;
        let l = AllModels {
            xs,
            b: self.base.is_some().then_some(b),
            w,
            vote: self.votes(),
            sum_only: c == ops::COMBINE_TIES_SUM,
        };
        match self.p.sparsify {
            ops::SPARSIFY_MAGNITUDE => {
                let (t, u, scale) = (
                    mp.map(|m| m.threshold_bits),
                    mp.map(|m| m.upper_bits),
                    mp.map(|m| m.scale),
                );
                l.run(acc, get, |i, v| by_magnitude(v, t[i], u[i], scale[i]));
            }
            _ => l.run(acc, get, |_, v| v),
        }
    }

    /// Model `i`'s thinned delta over the block at `at` into `d`, and
    /// weighted into `acc`: [`step`] for its dtype and sparsification (none
    /// or magnitude). With `keep`, `d` gets the thinned deltas (TIES' vote
    /// reads them).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn fused(
        &self,
        i: usize,
        at: usize,
        acc: &mut [f32],
        b: &[f32],
        d: &mut [f32],
        bits: &mut Vec<u16>,
        keep: bool,
    ) {
        let x = self.inputs[i];
        let src = bytes(x, at, d.len());
        let bf16 = |c: &[u8]| lanes::bf16_to_f32(u16::from_le_bytes([c[0], c[1]]));
        let f32_le = |c: &[u8]| f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        match (x.dtype, keep) {
            (DType::BF16, true) => self.thinned::<2, true>(i, acc, b, d, src, bf16),
            (DType::BF16, false) => self.thinned::<2, false>(i, acc, b, &mut [], src, bf16),
            // F16 converts fastest a block at a time (`half`, F16C where the
            // CPU has it): decoded into `d` first.
            (DType::F16, _) => {
                if keep {
                    self.delta(i, at, b, d, bits, &mut ());
                    self.sparsify(i, at, d);
                    let w = self.models[i].weight;
                    for (a, &v) in acc.iter_mut().zip(d.iter()) {
                        *a += w * v;
                    }
                } else {
                    lanes::decode(src, x.dtype, d, bits);
                    let f32_ne = |c: &[u8]| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
                    let d: &[f32] = d;
                    self.thinned::<4, false>(i, acc, b, &mut [], bytemuck::cast_slice(d), f32_ne);
                }
            }
            // F32: `new` takes no other dtype.
            (_, true) => self.thinned::<4, true>(i, acc, b, d, src, f32_le),
            (_, false) => self.thinned::<4, false>(i, acc, b, &mut [], src, f32_le),
        }
    }

    /// [`FastMerge::fused`] for elements of `S` bytes decoded by `get`;
    /// `KEEP` as [`step`]'s.
    #[inline(always)]
    fn thinned<const S: usize, const KEEP: bool>(
        &self,
        i: usize,
        acc: &mut [f32],
        b: &[f32],
        d: &mut [f32],
        src: &[u8],
        get: impl Fn(&[u8]) -> f32,
    ) {
        let mp = &self.models[i];
        let (w, has_base) = (mp.weight, self.base.is_some());
        match self.p.sparsify {
            ops::SPARSIFY_MAGNITUDE => {
                let (t, u, scale) = (mp.threshold_bits, mp.upper_bits, mp.scale);
                step::<S, KEEP>(acc, d, src, b, has_base, w, get, |v| {
                    by_magnitude(v, t, u, scale)
                });
            }
            _ => step::<S, KEEP>(acc, d, src, b, has_base, w, get, |v| v),
        }
    }

    /// Model `i`'s delta over the block at `at` into `d`, shown to `tap`.
    #[inline(always)]
    fn delta(
        &self,
        i: usize,
        at: usize,
        b: &[f32],
        d: &mut [f32],
        bits: &mut Vec<u16>,
        tap: &mut impl Tap,
    ) {
        let x = self.inputs[i];
        lanes::decode(bytes(x, at, d.len()), x.dtype, d, bits);
        if self.base.is_some() {
            for (v, &bv) in d.iter_mut().zip(b) {
                *v -= bv;
            }
        }
        tap.delta(i, at, d);
    }

    /// Thins model `i`'s deltas `d` of the block at `at`.
    #[inline(always)]
    fn sparsify(&self, i: usize, at: usize, d: &mut [f32]) {
        let mp = &self.models[i];
        match self.p.sparsify {
            ops::SPARSIFY_MAGNITUDE => {
                let (t, u, scale) = (mp.threshold_bits, mp.upper_bits, mp.scale);
                for v in d.iter_mut() {
                    *v = by_magnitude(*v, t, u, scale);
                }
            }
            ops::SPARSIFY_RANDOM if mp.keep_all == 0 => {
                let (key, below, inv) = (self.keys[i], mp.keep_below, mp.scale);
                let pick = |r: u32, v: f32| if r < below { v * inv } else { 0.0 };
                match high_word(at, d.len()) {
                    Some(hi) => {
                        let (h, lo) = (ops::mix32(key ^ hi), at as u32);
                        for (j, v) in d.iter_mut().enumerate() {
                            *v = pick(ops::mix32(h ^ lo.wrapping_add(j as u32)), *v);
                        }
                    }
                    None => {
                        for (j, v) in d.iter_mut().enumerate() {
                            *v = pick(ops::draw_at(key, (at + j) as u64), *v);
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

lanes::multiversion! {
    /// [`FastMerge::chunk_impl`] for the tier [`lanes::isa`] names.
    pub(super) fn chunk(fast: &FastMerge<'_>, s: &mut Scratch, start: usize, dst: &mut [u8]) {
        fast.chunk_impl(s, start, dst, &mut ())
    }
}

/// `acc += w·thin(x − b)` (or `w·thin(x)` without a base) over elements
/// of `S` bytes decoded by `get`, and with `KEEP` the thinned deltas into
/// `d` (unused, and may be empty, without): one model's steps of the merge
/// in one loop.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn step<const S: usize, const KEEP: bool>(
    acc: &mut [f32],
    d: &mut [f32],
    src: &[u8],
    b: &[f32],
    has_base: bool,
    w: f32,
    get: impl Fn(&[u8]) -> f32,
    thin: impl Fn(f32) -> f32,
) {
    let n = acc.len();
    // Equal lengths up front let the compiler drop the bounds checks.
    let d = if KEEP { &mut d[..n] } else { d };
    let each = acc.iter_mut().zip(src.chunks_exact(S)).enumerate();
    if has_base {
        let b = &b[..n];
        for (j, (a, c)) in each {
            let v = thin(get(c) - b[j]);
            if KEEP {
                d[j] = v;
            }
            *a += w * v;
        }
    } else {
        for (j, (a, c)) in each {
            let v = thin(get(c));
            if KEEP {
                d[j] = v;
            }
            *a += w * v;
        }
    }
}

/// [`ops::sparsify`]'s magnitude trim of a delta `v`: kept and scaled by
/// `scale` when its magnitude's bits lie in `[t, u)`, else 0. `&`, not
/// `&&`: no branch, so a loop of it vectorises.
#[inline(always)]
fn by_magnitude(v: f32, t: u32, u: u32, scale: f32) -> f32 {
    let a = v.to_bits() & 0x7fff_ffff;
    if (a >= t) & (a < u) { v * scale } else { 0.0 }
}

/// The high word shared by elements `at..at + len`, if they share one
/// (all but blocks that cross a multiple of 2^32): [`ops::draw_at`]'s first mix is
/// then one per model and block, and the rest is 32-bit arithmetic.
#[inline(always)]
fn high_word(at: usize, len: usize) -> Option<u32> {
    let (first, last) = (at as u64, (at + len.max(1) - 1) as u64);
    (first >> 32 == last >> 32).then_some((first >> 32) as u32)
}

/// TIES' election for one model's weighted delta `v` (weight `w`) given
/// the weighted sum `sum`: what it adds to the numerator and denominator.
/// The elected sign is the sum's, positive at zero; `-0.0` where the model
/// disagrees, since x + -0.0 is x for every x (-0.0 and NaN too), which is
/// the reference's skipped addition without a branch.
#[inline(always)]
fn elect(v: f32, w: f32, sum: f32) -> (f32, f32) {
    // `&` and `|`, not `&&` and `||`: no branches on signs.
    let agree = (v > 0.0) & (sum >= 0.0) | (v < 0.0) & (sum < 0.0);
    if agree { (v, w) } else { (-0.0, -0.0) }
}

/// Elements an [`AllModels`] loop takes at a time: two AVX2 registers of
/// f32.
const LANES: usize = 16;

/// One block of a merge of `M` models of `S`-byte elements, run per
/// element in [`ops::merge_element`]'s order up to the combined delta,
/// [`LANES`] elements at a time so that the compiler vectorises across
/// elements.
struct AllModels<'a, const M: usize, const S: usize> {
    xs: [&'a [[u8; S]]; M],
    b: Option<&'a [f32]>,
    w: [f32; M],
    /// TIES' sign election and disjoint mean (or sum); else the weighted
    /// sum is the combined delta.
    vote: bool,
    /// `COMBINE_TIES_SUM`: the agreeing deltas' sum, not their mean.
    sum_only: bool,
}

impl<const M: usize, const S: usize> AllModels<'_, M, S> {
    /// The combined deltas into `acc`; `get` decodes [`LANES`] elements,
    /// `thin(i, δ)` sparsifies a delta of model `i`.
    #[inline(always)]
    fn run(
        &self,
        acc: &mut [f32],
        get: impl Fn(&[[u8; S]; LANES]) -> [f32; LANES],
        thin: impl Fn(usize, f32) -> f32,
    ) {
        match (self.b, self.vote) {
            (Some(b), true) => self.each::<true>(acc, b, get, thin, |x, b| x - b),
            (Some(b), false) => self.each::<false>(acc, b, get, thin, |x, b| x - b),
            (None, true) => self.each::<true>(acc, &[], get, thin, |x, _| x),
            (None, false) => self.each::<false>(acc, &[], get, thin, |x, _| x),
        }
    }

    /// [`AllModels::run`] with `delta(x, b)` forming a delta from an
    /// element and the base's (`b` is empty without a base); `VOTE` is
    /// [`AllModels::vote`], a constant so that a linear merge's loop keeps
    /// no per-model deltas.
    #[inline(always)]
    fn each<const VOTE: bool>(
        &self,
        acc: &mut [f32],
        b: &[f32],
        get: impl Fn(&[[u8; S]; LANES]) -> [f32; LANES],
        thin: impl Fn(usize, f32) -> f32,
        delta: impl Fn(f32, f32) -> f32,
    ) {
        let n = acc.len();
        let full = n - n % LANES;
        let xs = self.xs.map(|x| x[..full].as_chunks::<LANES>().0);
        let bs = b.get(..full).unwrap_or_default().as_chunks::<LANES>().0;
        let zeros = [0f32; LANES];
        let (head, tail) = acc.split_at_mut(full);
        for (c, a) in head.as_chunks_mut::<LANES>().0.iter_mut().enumerate() {
            let x = xs.map(|x| &x[c]);
            *a = self.lanes::<VOTE>(x, bs.get(c).unwrap_or(&zeros), &get, &thin, &delta);
        }
        if !tail.is_empty() {
            // The last few elements, padded to a whole set of lanes.
            let r = tail.len();
            let mut x = [[[0u8; S]; LANES]; M];
            for (xi, src) in x.iter_mut().zip(self.xs) {
                xi[..r].copy_from_slice(&src[full..n]);
            }
            let mut bt = zeros;
            if let Some(src) = b.get(full..n) {
                bt[..r].copy_from_slice(src);
            }
            let out = self.lanes::<VOTE>(x.each_ref(), &bt, &get, &thin, &delta);
            tail.copy_from_slice(&out[..r]);
        }
    }

    /// [`LANES`] elements: the models' `x` and the base's `b`, combined.
    #[inline(always)]
    fn lanes<const VOTE: bool>(
        &self,
        x: [&[[u8; S]; LANES]; M],
        b: &[f32; LANES],
        get: &impl Fn(&[[u8; S]; LANES]) -> [f32; LANES],
        thin: &impl Fn(usize, f32) -> f32,
        delta: &impl Fn(f32, f32) -> f32,
    ) -> [f32; LANES] {
        let w = self.w;
        let mut v = [[0f32; LANES]; M];
        let mut sum = [0f32; LANES];
        for i in 0..M {
            let xi = get(x[i]);
            for l in 0..LANES {
                v[i][l] = thin(i, delta(xi[l], b[l]));
                sum[l] += w[i] * v[i][l];
            }
        }
        if !VOTE {
            return sum;
        }
        let mut num = [0f32; LANES];
        let mut den = [0f32; LANES];
        for i in 0..M {
            for l in 0..LANES {
                let (dn, de) = elect(w[i] * v[i][l], w[i], sum[l]);
                num[l] += dn;
                den[l] += de;
            }
        }
        if self.sum_only {
            num
        } else {
            std::array::from_fn(|l| num[l] / if den[l] == 0.0 { 1.0 } else { den[l] })
        }
    }
}

/// Elements `start..start + len` of `x`.
#[inline(always)]
pub(super) fn bytes<'a>(x: Input<'a>, start: usize, len: usize) -> &'a [u8] {
    let s = x.dtype.size();
    &x.bytes[start * s..(start + len) * s]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The block-wise draw (one first mix per block) is `ops::draw` for
    /// every element, at and around multiples of 2^32, and a block that
    /// crosses one takes the per-element draw.
    #[test]
    fn block_draws_match_the_per_element_draw() {
        let (seed, name, model) = (0x1234_5678_9abc_def0u64, ops::name_hash("w"), 2u32);
        let key = ops::draw_key(seed, name, model);
        let four_g = 1usize << 32;
        for at in [0, 1000, four_g - 64, four_g, 3 * four_g + 5] {
            let hi = high_word(at, 64).expect("the block shares its high word");
            let (h, lo) = (ops::mix32(key ^ hi), at as u32);
            for j in 0..64 {
                let want = ops::draw(seed, name, model, (at + j) as u64);
                assert_eq!(ops::draw_at(key, (at + j) as u64), want, "{at}+{j}");
                assert_eq!(ops::mix32(h ^ lo.wrapping_add(j as u32)), want, "{at}+{j}");
            }
        }
        assert_eq!(high_word(four_g - 1, 2), None);
        assert_eq!(high_word(four_g - 1, 1), Some(0));
        assert_eq!(high_word(four_g, 0), Some(1));
    }
}

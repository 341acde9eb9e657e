//! The merge's chunk loop for the parameter combinations it knows (no,
//! magnitude or random sparsification; linear or TIES combination): the
//! same f32 operations in the same order as [`ops::merge_element`], laid out
//! as one loop per step over a block so the compiler vectorises it.
//! Anything else goes through the per-element reference (`cpu.rs`).

use super::lanes::{self, BLOCK};
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
    /// Per model, `ops::draw`'s mixing of (seed, name, model), which does
    /// not depend on the element.
    keys: Vec<u32>,
}

/// What a chunk loop shows its caller between forming each model's delta
/// and thinning it: the one-pass trim (`trimmed.rs`) counts there.
pub(super) trait Tap {
    /// Whether the tap looks at deltas at all (the plain merge's does not,
    /// which lets an unthinned linear merge fuse its per-model loops).
    const LOOKS: bool = true;
    /// Model `i`'s delta over the block at `at`, before sparsification.
    fn delta(&mut self, i: usize, at: usize, d: &[f32]);
    /// Every model's delta of the block at `at` was shown: model `i`'s
    /// `len` deltas, still unthinned, are `ds[i * BLOCK..][..len]`.
    fn block(&mut self, at: usize, len: usize, ds: &[f32]);
}

/// The plain merge shows nothing.
impl Tap for () {
    const LOOKS: bool = false;
    #[inline(always)]
    fn delta(&mut self, _: usize, _: usize, _: &[f32]) {}
    #[inline(always)]
    fn block(&mut self, _: usize, _: usize, _: &[f32]) {}
}

/// Per-thread buffers, reused across chunks.
#[derive(Default)]
pub(super) struct Scratch {
    f: Vec<f32>,
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
            && models.len() == inputs.len();
        let seed = u64::from(p.seed_lo) | (u64::from(p.seed_hi) << 32);
        let keys = (0..models.len() as u32)
            .map(|i| {
                let h = ops::mix32(seed as u32 ^ 0x9e37_79b9);
                let h = ops::mix32(h ^ (seed >> 32) as u32);
                let h = ops::mix32(h ^ p.name_hash);
                ops::mix32(h ^ i)
            })
            .collect();
        handled.then_some(FastMerge {
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
            if let Some(x) = self.base {
                lanes::decode(bytes(x, at, len), x.dtype, b, &mut s.bits);
            }
            let c = self.p.combine;
            if !T::LOOKS
                && self.p.sparsify == ops::SPARSIFY_NONE
                && (c == ops::COMBINE_LINEAR || c == ops::COMBINE_LINEAR_MEAN)
            {
                // Nothing thins or votes on the deltas: each model's is
                // formed and added in one loop, `acc + w·(x − b)`, the same
                // operations in the same order as the steps below.
                acc.fill(0.0);
                let d = &mut ds[..len];
                for (i, x) in self.inputs.iter().enumerate() {
                    let w = self.models[i].weight;
                    let src = bytes(*x, at, len);
                    let has_base = self.base.is_some();
                    // BF16 (a shift) and F32 are decoded in the loop itself;
                    // F16 into the scratch block first (`half`, F16C).
                    let f32_le = |c: &[u8]| f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                    match x.dtype {
                        DType::BF16 => accumulate::<2>(acc, src, b, has_base, w, |c| {
                            f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16)
                        }),
                        DType::F32 => accumulate::<4>(acc, src, b, has_base, w, f32_le),
                        _ => {
                            lanes::decode(src, x.dtype, d, &mut s.bits);
                            let d: &[f32] = d;
                            accumulate::<4>(acc, bytemuck::cast_slice(d), b, has_base, w, f32_le);
                        }
                    }
                }
            } else {
                for (i, d) in ds.chunks_exact_mut(BLOCK).enumerate() {
                    self.delta(i, at, b, &mut d[..len], &mut s.bits, tap);
                }
                tap.block(at, len, ds);
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
            if c == ops::COMBINE_TIES_MEAN || c == ops::COMBINE_TIES_SUM {
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
                        let v = w * dv;
                        // `&` and `|`, not `&&` and `||`: no branches on signs.
                        let agree = (v > 0.0) & (sum >= 0.0) | (v < 0.0) & (sum < 0.0);
                        // x + -0.0 is x for every x (-0.0 and NaN too), so
                        // adding it is the reference's skipped addition.
                        *n += if agree { v } else { -0.0 };
                        *e += if agree { w } else { -0.0 };
                    }
                }
                if c == ops::COMBINE_TIES_SUM {
                    acc.copy_from_slice(num);
                } else {
                    for ((a, &n), &e) in acc.iter_mut().zip(num.iter()).zip(den.iter()) {
                        *a = n / if e == 0.0 { 1.0 } else { e };
                    }
                }
            } else if c == ops::COMBINE_LINEAR_MEAN {
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
            let lambda = self.p.lambda;
            if self.base.is_some() {
                for (a, &bv) in acc.iter_mut().zip(b.iter()) {
                    *a = bv + lambda * *a;
                }
            } else {
                for a in acc.iter_mut() {
                    *a = 0.0 + lambda * *a;
                }
            }
            lanes::encode(acc, out, self.out_dtype, &mut s.bits);
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
                    let a = v.to_bits() & 0x7fff_ffff;
                    *v = if (a >= t) & (a < u) { *v * scale } else { 0.0 };
                }
            }
            ops::SPARSIFY_RANDOM if mp.keep_all == 0 => {
                let (key, below, inv) = (self.keys[i], mp.keep_below, mp.scale);
                for (j, v) in d.iter_mut().enumerate() {
                    let index = (at + j) as u64;
                    let r = ops::mix32(ops::mix32(key ^ (index >> 32) as u32) ^ index as u32);
                    *v = if r < below { *v * inv } else { 0.0 };
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

/// `acc += w·(x − b)` (or `w·x` without a base) over elements of `S` bytes
/// decoded by `get`: the unthinned linear merge's per-model step.
#[inline(always)]
fn accumulate<const S: usize>(
    acc: &mut [f32],
    src: &[u8],
    b: &[f32],
    has_base: bool,
    w: f32,
    get: impl Fn(&[u8]) -> f32,
) {
    if has_base {
        for ((a, c), &bv) in acc.iter_mut().zip(src.chunks_exact(S)).zip(b) {
            *a += w * (get(c) - bv);
        }
    } else {
        for (a, c) in acc.iter_mut().zip(src.chunks_exact(S)) {
            *a += w * get(c);
        }
    }
}

/// Elements `start..start + len` of `x`.
#[inline(always)]
pub(super) fn bytes<'a>(x: Input<'a>, start: usize, len: usize) -> &'a [u8] {
    let s = x.dtype.size();
    &x.bytes[start * s..(start + len) * s]
}

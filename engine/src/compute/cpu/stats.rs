//! The statistics pass over one chunk, in blocks of [`BLOCK`] elements:
//! [`StatSums::push`]'s terms summed in f64 over 16 interleaved lanes (so
//! the loop fills a 512-bit vector of f32), the lanes then added in order
//! into the block's sums, the block's last `len % 16` elements pushed one by
//! one, and the blocks' sums added in order. The hot loop leaves out the
//! non-finite bookkeeping: a block whose Σa², Σb² and Σ(b−a)² are finite has
//! no NaN or ∞ among its inputs or differences, and only a block where one
//! is not is walked again for its finite max |b−a| and its non-finite
//! counts. Deterministic for a given chunking; see `docs/compute.md` for the
//! bound.

use super::lanes::{self, BLOCK};
use super::merge::bytes;
use crate::compute::Input;
use crate::compute::ops::StatSums;

const LANES: usize = 16;

/// Per-thread buffers, reused across chunks.
#[derive(Default)]
pub(super) struct Scratch {
    f: Vec<f32>,
    bits: Vec<u16>,
}

lanes::multiversion! {
    /// Sums over elements `start..start + len` of (a, b), relative to
    /// `base`: every one, or with `only_norms` Σa², Σb² and Σa·b alone (the
    /// same values; the rest left 0).
    pub(super) fn chunk(
        s: &mut Scratch,
        a: Input<'_>,
        b: Input<'_>,
        base: Option<Input<'_>>,
        start: usize,
        len: usize,
        only_norms: bool,
    ) -> StatSums {
        s.f.resize(3 * BLOCK, 0.0);
        let mut out = StatSums::default();
        let mut at = start;
        while at < start + len {
            let n = BLOCK.min(start + len - at);
            let (xa, rest) = s.f.split_at_mut(BLOCK);
            let (xb, xc) = rest.split_at_mut(BLOCK);
            let (xa, xb, xc) = (&mut xa[..n], &mut xb[..n], &mut xc[..n]);
            lanes::decode(bytes(a, at, n), a.dtype, xa, &mut s.bits);
            lanes::decode(bytes(b, at, n), b.dtype, xb, &mut s.bits);
            if let Some(c) = base {
                lanes::decode(bytes(c, at, n), c.dtype, xc, &mut s.bits);
                for ((u, v), &w) in xa.iter_mut().zip(xb.iter_mut()).zip(xc.iter()) {
                    *u -= w;
                    *v -= w;
                }
            }
            out.add(&if only_norms {
                norms(xa, xb)
            } else {
                block(xa, xb)
            });
            at += n;
        }
        out.n = len as u64;
        out
    }
}

/// Per lane, Σa², Σb² and Σa·b over the block's whole sets of
/// [`LANES`] elements: the first of [`block`]'s loops.
#[inline(always)]
fn lane_norms(xa: &[f32], xb: &[f32]) -> [[f64; LANES]; 3] {
    let [mut a2, mut b2, mut dot] = [[0f64; LANES]; 3];
    for (ua, ub) in xa.chunks_exact(LANES).zip(xb.chunks_exact(LANES)) {
        for l in 0..LANES {
            let (u64_, v64) = (f64::from(ua[l]), f64::from(ub[l]));
            a2[l] += u64_ * u64_;
            b2[l] += v64 * v64;
            dot[l] += u64_ * v64;
        }
    }
    [a2, b2, dot]
}

/// [`block`]'s Σa², Σb² and Σa·b alone (SLERP's norms and dot), the same
/// values; the other sums are left 0.
#[inline(always)]
fn norms(xa: &[f32], xb: &[f32]) -> StatSums {
    let [a2, b2, dot] = lane_norms(xa, xb);
    let mut out = StatSums::default();
    for l in 0..LANES {
        out.a2 += a2[l];
        out.b2 += b2[l];
        out.dot += dot[l];
    }
    let tail = xa.len() - xa.len() % LANES;
    for (&u, &v) in xa[tail..].iter().zip(&xb[tail..]) {
        let (u, v) = (f64::from(u), f64::from(v));
        out.a2 += u * u;
        out.b2 += v * v;
        out.dot += u * v;
    }
    out
}

/// The sums of one block of decoded elements (`n` is left 0).
#[inline(always)]
fn block(xa: &[f32], xb: &[f32]) -> StatSums {
    let [mut d2, mut sd] = [[0f64; LANES]; 2];
    let mut max = [0f32; LANES];
    let mut changed = [0u32; LANES];
    let (va, vb) = (xa.chunks_exact(LANES), xb.chunks_exact(LANES));
    let (ta, tb) = (va.remainder(), vb.remainder());
    // Two loops over the block (in L1), the sums of a and b, then those of
    // b − a: in one, the 16 lanes of five f64 sums and the rest need more
    // vector registers than AVX2 has, and the spills cost more than the
    // second read. Each sum adds the same terms in the same order either
    // way, so the results are the same.
    let [a2, b2, dot] = lane_norms(xa, xb);
    for (ua, ub) in va.zip(vb) {
        for l in 0..LANES {
            let (u, v) = (ua[l], ub[l]);
            let d = v - u;
            let d64 = f64::from(d);
            d2[l] += d64 * d64;
            sd[l] += d64;
            let ad = d.abs();
            // A NaN |d| is never taken; an infinite one makes Σ(b−a)²
            // infinite, and the block is walked again below.
            max[l] = if ad > max[l] { ad } else { max[l] };
            changed[l] += u32::from(u.to_bits() != v.to_bits());
        }
    }
    let mut out = StatSums::default();
    for l in 0..LANES {
        out.add(&StatSums {
            a2: a2[l],
            b2: b2[l],
            d2: d2[l],
            dot: dot[l],
            sum_d: sd[l],
            max_abs_d: max[l],
            changed: u64::from(changed[l]),
            ..StatSums::default()
        });
    }
    for (&u, &v) in ta.iter().zip(tb) {
        out.push(u, v);
    }
    out.n = 0;
    // Squares are never negative, so these sums are finite exactly when
    // every a, b and b − a of the block is.
    if !(out.a2.is_finite() && out.b2.is_finite() && out.d2.is_finite()) {
        let (mut max, mut bad_a, mut bad_b) = (0f32, 0u64, 0u64);
        for (&u, &v) in xa.iter().zip(xb) {
            let ad = (v - u).abs();
            if ad < f32::INFINITY && ad > max {
                max = ad;
            }
            bad_a += u64::from(!u.is_finite());
            bad_b += u64::from(!v.is_finite());
        }
        out.max_abs_d = max;
        out.nonfinite_a = bad_a;
        out.nonfinite_b = bad_b;
    }
    out
}

//! The statistics pass over one chunk: [`StatSums::push`]'s terms, summed
//! in f64 over 8 interleaved lanes (so the loop vectorises), the lanes then
//! added in order, the chunk's last `len % 8` elements pushed one by one.
//! Deterministic for a given chunking; see `docs/compute.md` for the bound.

use super::lanes::{self, BLOCK};
use super::merge::bytes;
use crate::compute::Input;
use crate::compute::ops::StatSums;

const LANES: usize = 8;

/// Per-thread buffers, reused across chunks.
#[derive(Default)]
pub(super) struct Scratch {
    f: Vec<f32>,
    bits: Vec<u16>,
}

lanes::multiversion! {
    /// Sums over elements `start..start + len` of (a, b), relative to `base`.
    pub(super) fn chunk(
        s: &mut Scratch,
        a: Input<'_>,
        b: Input<'_>,
        base: Option<Input<'_>>,
        start: usize,
        len: usize,
    ) -> StatSums {
        s.f.resize(3 * BLOCK, 0.0);
        let [mut a2, mut b2, mut d2, mut dot, mut sd] = [[0f64; LANES]; 5];
        let mut max = [0f32; LANES];
        let [mut changed, mut bad_a, mut bad_b] = [[0u32; LANES]; 3];
        let mut tail = StatSums::default();
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
            let (va, vb) = (xa.chunks_exact(LANES), xb.chunks_exact(LANES));
            let (ta, tb) = (va.remainder(), vb.remainder());
            for (ua, ub) in va.zip(vb) {
                for l in 0..LANES {
                    let (u, v) = (ua[l], ub[l]);
                    let d = v - u;
                    let (u64_, v64, d64) = (f64::from(u), f64::from(v), f64::from(d));
                    a2[l] += u64_ * u64_;
                    b2[l] += v64 * v64;
                    d2[l] += d64 * d64;
                    dot[l] += u64_ * v64;
                    sd[l] += d64;
                    let ad = d.abs();
                    // `ad < ∞` is false for NaN and ∞: only finite |d| count.
                    max[l] = if (ad < f32::INFINITY) & (ad > max[l]) {
                        ad
                    } else {
                        max[l]
                    };
                    changed[l] += u32::from(u.to_bits() != v.to_bits());
                    bad_a[l] += u32::from(!u.is_finite());
                    bad_b[l] += u32::from(!v.is_finite());
                }
            }
            for (&u, &v) in ta.iter().zip(tb) {
                tail.push(u, v);
            }
            at += n;
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
                nonfinite_a: u64::from(bad_a[l]),
                nonfinite_b: u64::from(bad_b[l]),
                n: 0,
            });
        }
        out.add(&tail);
        out.n = len as u64;
        out
    }
}

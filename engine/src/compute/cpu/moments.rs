//! One tensor's summary statistics (min, max, Σx, Σx² and counts over the
//! finite elements), as `git add` records them in a manifest: a vectorised
//! block loop like the diff statistics', on the CPU only (it runs beside
//! hashing and storing, where a GPU round trip would cost more than it
//! saves).
//!
//! Blocks of [`BLOCK`] elements are decoded to f32 and summed in f64 over 16
//! interleaved lanes, the lanes added in order, blocks in order, and
//! chunks of [`CHUNK`] elements (reduced in parallel) in order: the result
//! depends only on the elements. A block whose Σx² is not finite holds a
//! NaN or ∞ and is summed again element by element, leaving those out.

use rayon::prelude::*;

use super::lanes::{self, BLOCK};
use super::merge::bytes;
use crate::compute::Input;

const LANES: usize = 16;

/// Elements per parallel work item.
const CHUNK: usize = 1 << 16;

/// Statistics of a tensor's finite elements.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Moments {
    /// Smallest finite element (+∞ when there is none).
    pub min: f32,
    /// Largest finite element (−∞ when there is none).
    pub max: f32,
    /// Σx over finite elements.
    pub sum: f64,
    /// Σx² over finite elements.
    pub sumsq: f64,
    /// Finite elements.
    pub finite: u64,
    /// NaN and ±∞ elements.
    pub nonfinite: u64,
}

impl Default for Moments {
    fn default() -> Self {
        Moments {
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            sum: 0.0,
            sumsq: 0.0,
            finite: 0,
            nonfinite: 0,
        }
    }
}

impl Moments {
    /// Adds the statistics of later elements.
    pub fn add(&mut self, o: &Moments) {
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        self.sum += o.sum;
        self.sumsq += o.sumsq;
        self.finite += o.finite;
        self.nonfinite += o.nonfinite;
    }

    fn push(&mut self, x: f32) {
        if x.is_finite() {
            self.min = self.min.min(x);
            self.max = self.max.max(x);
            let x = f64::from(x);
            self.sum += x;
            self.sumsq += x * x;
            self.finite += 1;
        } else {
            self.nonfinite += 1;
        }
    }
}

/// The statistics of `x` (F32, F16 or BF16; other dtypes give the default).
pub fn moments(x: Input<'_>) -> Moments {
    let n = x.len();
    let parts: Vec<Moments> = (0..n.div_ceil(CHUNK))
        .into_par_iter()
        .map_init(Scratch::default, |s, c| {
            let start = c * CHUNK;
            chunk(s, x, start, CHUNK.min(n - start))
        })
        .collect();
    let mut total = Moments::default();
    for p in &parts {
        total.add(p);
    }
    total
}

#[derive(Default)]
struct Scratch {
    f: Vec<f32>,
    bits: Vec<u16>,
}

lanes::multiversion! {
    fn chunk(s: &mut Scratch, x: Input<'_>, start: usize, len: usize) -> Moments {
        s.f.resize(BLOCK, 0.0);
        let mut out = Moments::default();
        let mut at = start;
        while at < start + len {
            let n = BLOCK.min(start + len - at);
            let xs = &mut s.f[..n];
            lanes::decode(bytes(x, at, n), x.dtype, xs, &mut s.bits);
            out.add(&block(xs));
            at += n;
        }
        out
    }
}

#[inline(always)]
fn block(xs: &[f32]) -> Moments {
    let [mut sum, mut sq] = [[0f64; LANES]; 2];
    let mut min = [f32::INFINITY; LANES];
    let mut max = [f32::NEG_INFINITY; LANES];
    let v = xs.chunks_exact(LANES);
    let tail = v.remainder();
    for u in v {
        for l in 0..LANES {
            let x = u[l];
            // NaN compares false and is never taken; ±∞ is, and makes Σx²
            // infinite, which sends the block to the careful loop below.
            min[l] = if x < min[l] { x } else { min[l] };
            max[l] = if x > max[l] { x } else { max[l] };
            let x = f64::from(x);
            sum[l] += x;
            sq[l] += x * x;
        }
    }
    let mut out = Moments::default();
    for l in 0..LANES {
        out.add(&Moments {
            min: min[l],
            max: max[l],
            sum: sum[l],
            sumsq: sq[l],
            finite: 0,
            nonfinite: 0,
        });
    }
    out.finite = (xs.len() - tail.len()) as u64;
    for &x in tail {
        out.push(x);
    }
    if !out.sumsq.is_finite() {
        out = Moments::default();
        for &x in xs {
            out.push(x);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    /// Element by element, in f64: what the block loop must agree with.
    fn reference(xs: &[f32]) -> Moments {
        let mut m = Moments::default();
        for &x in xs {
            m.push(x);
        }
        m
    }

    #[test]
    fn agrees_with_the_element_loop_on_every_dtype_and_odd_lengths() {
        for len in [0, 1, 15, 17, 1023, 1025, 70_001, 200_000] {
            let xs: Vec<f32> = (0..len)
                .map(|i| (crate::compute::ops::mix32(i as u32) as f32 / u32::MAX as f32) - 0.4)
                .collect();
            for dtype in [DType::F32, DType::F16, DType::BF16] {
                let mut bytes = vec![0u8; len * dtype.size() + 1];
                // Unaligned on purpose.
                let b = &mut bytes[1..];
                crate::convert::encode_chunk(&xs, b, dtype);
                let mut back = vec![0f32; len];
                crate::convert::decode_chunk(b, dtype, &mut back);
                let got = moments(Input::new(dtype, b));
                let want = reference(&back);
                assert_eq!((got.min, got.max), (want.min, want.max), "{dtype} {len}");
                assert_eq!((got.finite, got.nonfinite), (want.finite, want.nonfinite));
                let tol = 1e-12 * want.sumsq.max(1.0);
                assert!((got.sum - want.sum).abs() <= tol, "{dtype} {len}");
                assert!((got.sumsq - want.sumsq).abs() <= tol, "{dtype} {len}");
            }
        }
    }

    #[test]
    fn leaves_nan_and_infinities_out() {
        let mut xs: Vec<f32> = (0..5000).map(|i| (i % 7) as f32 - 3.0).collect();
        xs[10] = f32::NAN;
        xs[2000] = f32::INFINITY;
        xs[4999] = f32::NEG_INFINITY;
        xs[3000] = 100.0;
        let got = moments(Input::f32(&xs));
        let want = reference(&xs);
        assert_eq!(got.nonfinite, 3);
        assert_eq!(got.finite, 4997);
        assert_eq!((got.min, got.max), (-3.0, 100.0));
        assert_eq!(got.sum, want.sum, "small integers sum exactly");
        assert_eq!(got.sumsq, want.sumsq);
        let none = moments(Input::f32(&[f32::NAN; 40]));
        assert_eq!((none.finite, none.nonfinite), (0, 40));
        assert_eq!(none.min, f32::INFINITY);
    }
}

//! The k-th largest |x − base| by radix select over the magnitudes' bits:
//! one pass counts the top 15 bits (the sign bit is clear) into a histogram,
//! which names the top half of the answer and how many larger elements lie
//! above it; a second pass counts the low 16 bits of the elements with that
//! top half. Linear time, two reads of the input, no per-element storage.

use rayon::prelude::*;

use super::lanes::{self, BLOCK};
use super::merge::bytes;
use crate::compute::Input;

/// Elements per parallel work item.
const CHUNK: usize = 1 << 16;

#[derive(Default)]
struct Scratch {
    f: Vec<f32>,
    bits: Vec<u16>,
}

/// Bits of the `k`-th largest |x − base|, `1 <= k <= x.len()`.
pub(super) fn kth_largest_abs(x: Input<'_>, base: Option<Input<'_>>, k: usize) -> u32 {
    let top = histogram(x, base, Digit::High);
    let (hi, k) = pick(&top, k as u64);
    let low = histogram(x, base, Digit::Low(hi));
    let (lo, _) = pick(&low, k);
    hi << 16 | lo
}

/// The bin holding the `k`-th largest element counted in `h`, and that
/// element's rank within the bin.
fn pick(h: &[u64], k: u64) -> (u32, u64) {
    let mut above = 0;
    for (d, &c) in h.iter().enumerate().rev() {
        if above + c >= k {
            return (d as u32, k - above);
        }
        above += c;
    }
    // Unreachable for 1 <= k <= n: the bins count every element.
    (0, k)
}

/// Which digit of the magnitudes' bits a pass counts.
#[derive(Clone, Copy)]
enum Digit {
    /// Bits 16..31 (bit 31, the sign, is clear).
    High,
    /// Bits 0..16 of the magnitudes whose high digit is this.
    Low(u32),
}

/// Counts the magnitudes' `digit`s.
fn histogram(x: Input<'_>, base: Option<Input<'_>>, digit: Digit) -> Vec<u64> {
    let bins = match digit {
        Digit::High => 1 << 15,
        Digit::Low(_) => 1 << 16,
    };
    let n = x.len();
    (0..n.div_ceil(CHUNK))
        .into_par_iter()
        .fold(
            || (vec![0u64; bins], Scratch::default()),
            |(mut h, mut s), c| {
                let start = c * CHUNK;
                let len = CHUNK.min(n - start);
                count(&mut s, x, base, start, len, &mut h, digit);
                (h, s)
            },
        )
        .map(|(h, _)| h)
        .reduce(
            || vec![0u64; bins],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        )
}

lanes::multiversion! {
    /// Adds the `digit`s of elements `start..start + len` to `h`.
    fn count(
        s: &mut Scratch,
        x: Input<'_>,
        base: Option<Input<'_>>,
        start: usize,
        len: usize,
        h: &mut [u64],
        digit: Digit,
    ) {
        s.f.resize(2 * BLOCK, 0.0);
        let mut at = start;
        while at < start + len {
            let n = BLOCK.min(start + len - at);
            let (v, w) = s.f.split_at_mut(BLOCK);
            let (v, w) = (&mut v[..n], &mut w[..n]);
            lanes::decode(bytes(x, at, n), x.dtype, v, &mut s.bits);
            if let Some(b) = base {
                lanes::decode(bytes(b, at, n), b.dtype, w, &mut s.bits);
                v.iter_mut().zip(w.iter()).for_each(|(a, b)| *a -= b);
            }
            match digit {
                Digit::High => {
                    for a in v.iter() {
                        h[((a.to_bits() & 0x7fff_ffff) >> 16) as usize] += 1;
                    }
                }
                Digit::Low(hi) => {
                    for a in v.iter() {
                        let m = a.to_bits() & 0x7fff_ffff;
                        if m >> 16 == hi {
                            h[(m & 0xffff) as usize] += 1;
                        }
                    }
                }
            }
            at += n;
        }
    }
}

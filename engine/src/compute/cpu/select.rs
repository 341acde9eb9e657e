//! The k-th largest |x − base|, exactly, in one read of the input.
//!
//! A strided sample brackets the answer's magnitude bits in a narrow range
//! `[lo, hi]`; one pass then counts the elements above `hi` (a compare and
//! add that vectorises) and gathers the few inside the bracket, among which
//! a selection finds the answer. When the bracket misses (the sample was
//! unlucky or the data adversarial) or gathers too much, a radix select over
//! the magnitudes' bits answers instead: one pass counts the top 15 bits
//! (the sign bit is clear) into a histogram, which names the top half of the
//! answer and how many larger elements lie above it; a second pass counts
//! the low 16 bits of the elements with that top half. Both compare the
//! magnitudes as bits, so NaNs rank above infinities, as on the GPU.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use rayon::prelude::*;

use super::lanes::{self, BLOCK};
use super::merge::bytes;
#[cfg(target_arch = "x86_64")]
use super::ties;
use crate::DType;
use crate::compute::Input;

/// Elements per parallel work item.
const CHUNK: usize = 1 << 16;

/// Shortest input worth a sample; shorter ones go straight to radix select.
pub(super) const MIN_SAMPLED: usize = 1 << 16;

/// Sample spans (one per `SAMPLE_DIV` elements, within these bounds), and
/// elements per span.
const SPANS: (usize, usize) = (8192, 65536);
const SAMPLE_DIV: usize = 512;
const SPAN: usize = 8;

/// Half the bracket's width, in standard deviations of the sample's rank
/// error.
const SIGMAS: f64 = 5.0;

/// Most elements the bracket may gather, as a fraction `1 / GATHER_DIV` of
/// the input, before it gives up for radix select.
pub(super) const GATHER_DIV: usize = 8;

#[derive(Default)]
struct Scratch {
    f: Vec<f32>,
    bits: Vec<u16>,
    /// Which of a block's elements [`scan`] gathers.
    flags: Vec<u8>,
    /// The magnitudes [`tally`] gathers from a block.
    got: Vec<u32>,
}

/// Bits of the `k`-th largest |x − base|, `1 <= k <= x.len()`.
pub(super) fn kth_largest_abs(x: Input<'_>, base: Option<Input<'_>>, k: usize) -> u32 {
    if x.len() >= MIN_SAMPLED {
        let (lo, hi) = bracket(x, base, k);
        if let Some(bits) = within(x, base, k, lo, hi) {
            return bits;
        }
    }
    radix(x, base, k)
}

/// Bits of each model's `ks[i]`-th largest |xs[i] − base| (`None` where
/// `ks[i]` is), as [`kth_largest_abs`] gives them, with the base read once
/// for all models: each model's threshold is bracketed from its sample,
/// then one pass over the base and every model counts and gathers for
/// each bracket. A model whose bracket missed or gathered too much, or
/// whose input is too short to sample, is answered by radix select.
pub(super) fn kth_largest_abs_each(
    xs: &[Input<'_>],
    base: Option<Input<'_>>,
    ks: &[Option<usize>],
) -> Vec<Option<u32>> {
    let n = xs.first().map_or(0, Input::len);
    let brackets: Vec<Option<(u32, u32)>> = ks
        .par_iter()
        .zip(xs)
        .map(|(k, x)| match *k {
            Some(k) if x.len() == n && n >= MIN_SAMPLED => Some(bracket(*x, base, k)),
            _ => None,
        })
        .collect();
    let limit = n / GATHER_DIV;
    let totals: Vec<AtomicUsize> = xs.iter().map(|_| AtomicUsize::new(0)).collect();
    let tallies: Vec<Vec<Tally>> = if brackets.iter().any(Option::is_some) {
        (0..n.div_ceil(CHUNK))
            .into_par_iter()
            .map_init(Scratch::default, |s, c| {
                // A model past its gather limit is dropped from the rest.
                let live: Vec<Option<(u32, u32)>> = brackets
                    .iter()
                    .zip(&totals)
                    .map(|(b, t)| b.filter(|_| t.load(Ordering::Relaxed) <= limit))
                    .collect();
                let mut t: Vec<Tally> = xs.iter().map(|_| Tally::default()).collect();
                let start = c * CHUNK;
                scan_each(s, xs, base, start, CHUNK.min(n - start), &live, &mut t);
                for (total, t) in totals.iter().zip(&t) {
                    total.fetch_add(t.gathered.len(), Ordering::Relaxed);
                }
                t
            })
            .collect()
    } else {
        Vec::new()
    };
    let from_pass = |i: usize, k: usize| {
        let (lo, hi) = brackets[i]?;
        if totals[i].load(Ordering::Relaxed) > limit {
            return None;
        }
        resolve_tallies(k, lo, hi, tallies.iter().map(|t| &t[i]))
    };
    ks.iter()
        .enumerate()
        .map(|(i, k)| {
            let k = (*k)?;
            Some(from_pass(i, k).unwrap_or_else(|| radix(xs[i], base, k)))
        })
        .collect()
}

/// Magnitude bits `[lo, hi]` that likely hold the `k`-th largest, from
/// the [`spans`]' sample, with a margin of [`SIGMAS`] standard deviations
/// of the sample's rank error either side.
pub(super) fn bracket(x: Input<'_>, base: Option<Input<'_>>, k: usize) -> (u32, u32) {
    let n = x.len();
    let mut s = Scratch::default();
    let mut sample: Vec<u32> = Vec::with_capacity(SPANS.1 * SPAN);
    let mut v = [0f32; SPAN];
    let mut w = [0f32; SPAN];
    for (at, len) in spans(n) {
        mags(&mut s, x, base, at, &mut v[..len], &mut w[..len]);
        sample.extend(v[..len].iter().map(|a| a.to_bits() & 0x7fff_ffff));
    }
    let m = sample.len();
    let p = k as f64 / n as f64;
    // The sample rank of the answer, counted from the top (0-based).
    let r = (p * m as f64) as isize;
    let margin = (SIGMAS * (m as f64 * p * (1.0 - p)).sqrt()) as isize + 16;
    // The sample's magnitudes by their top half (the sign bit is clear),
    // so each end is selected among one bin's elements only.
    let mut h = vec![0u32; 1 << 15];
    sample.iter().for_each(|&a| h[(a >> 16) as usize] += 1);
    let nth = |rank: usize| {
        let mut above = 0;
        for (bin, &c) in h.iter().enumerate().rev() {
            if above + c as usize > rank {
                let mut one: Vec<u32> = sample
                    .iter()
                    .copied()
                    .filter(|a| a >> 16 == bin as u32)
                    .collect();
                return *one.select_nth_unstable_by(rank - above, |a, b| b.cmp(a)).1;
            }
            above += c as usize;
        }
        0
    };
    let hi = match r - margin {
        i if i < 0 => u32::MAX,
        i => nth(i as usize),
    };
    let lo = match r + margin {
        i if i >= m as isize => 0,
        i => nth(i as usize),
    };
    (lo, hi)
}

/// The sample's runs: (start, length), `count` of them an odd stride
/// apart, so that the sample moves across the columns of a matrix whose
/// rows are a multiple of a power of two long (a constant stride, which
/// the hardware prefetches).
pub(super) fn spans(n: usize) -> impl Iterator<Item = (usize, usize)> {
    let count = (n / SAMPLE_DIV)
        .clamp(SPANS.0, SPANS.1)
        .min(n / SPAN)
        .max(1);
    let stride = (n / count).max(1);
    let stride = if stride.is_multiple_of(2) {
        stride - 1
    } else {
        stride
    };
    (0..count).map(move |i| (i * stride, SPAN.min(n - i * stride)))
}

/// Runs `body` on each block of `x − base` in `start..start + len`.
#[inline(always)]
fn blocks(
    s: &mut Scratch,
    x: Input<'_>,
    base: Option<Input<'_>>,
    start: usize,
    len: usize,
    mut body: impl FnMut(&[f32]),
) {
    let mut f = std::mem::take(&mut s.f);
    f.resize(2 * BLOCK, 0.0);
    let mut at = start;
    while at < start + len {
        let n = BLOCK.min(start + len - at);
        let (v, w) = f.split_at_mut(BLOCK);
        mags(s, x, base, at, &mut v[..n], &mut w[..n]);
        body(&v[..n]);
        at += n;
    }
    s.f = f;
}

/// Decodes elements `at..at + v.len()` into `v` as `x − base` (`w` holds
/// the base).
#[inline(always)]
fn mags(
    s: &mut Scratch,
    x: Input<'_>,
    base: Option<Input<'_>>,
    at: usize,
    v: &mut [f32],
    w: &mut [f32],
) {
    let n = v.len();
    lanes::decode(bytes(x, at, n), x.dtype, v, &mut s.bits);
    if let Some(b) = base {
        lanes::decode(bytes(b, at, n), b.dtype, w, &mut s.bits);
        v.iter_mut().zip(w.iter()).for_each(|(a, b)| *a -= b);
    }
}

/// One chunk's counts for [`within`]: elements above the bracket, equal
/// to its ends, and the gathered ones strictly inside it.
#[derive(Default)]
struct Tally {
    above: u64,
    at_hi: u64,
    at_lo: u64,
    gathered: Vec<u32>,
}

/// The `k`-th largest magnitude's bits if it lies in `[lo, hi]`; `None`
/// when it does not, or when more than `n / GATHER_DIV` elements lie
/// strictly inside the bracket. Elements equal to an end are counted, not
/// gathered, so heavy ties (zeros, say) cost nothing.
pub(super) fn within(
    x: Input<'_>,
    base: Option<Input<'_>>,
    k: usize,
    lo: u32,
    hi: u32,
) -> Option<u32> {
    let n = x.len();
    let limit = n / GATHER_DIV;
    let total = AtomicUsize::new(0);
    let full = AtomicBool::new(false);
    let tallies: Vec<Tally> = (0..n.div_ceil(CHUNK))
        .into_par_iter()
        .map_init(Scratch::default, |s, c| {
            let mut t = Tally::default();
            if full.load(Ordering::Relaxed) {
                return t;
            }
            let start = c * CHUNK;
            scan(s, x, base, start, CHUNK.min(n - start), lo, hi, &mut t);
            let g = t.gathered.len();
            if total.fetch_add(g, Ordering::Relaxed) + g > limit {
                full.store(true, Ordering::Relaxed);
            }
            t
        })
        .collect();
    if full.load(Ordering::Relaxed) {
        return None;
    }
    resolve_tallies(k, lo, hi, tallies.iter())
}

/// [`resolve`] over the chunks' tallies of one pass over `[lo, hi]`.
fn resolve_tallies<'a>(
    k: usize,
    lo: u32,
    hi: u32,
    tallies: impl Iterator<Item = &'a Tally> + Clone,
) -> Option<u32> {
    let sum = |f: fn(&Tally) -> u64| tallies.clone().map(f).sum::<u64>();
    let counts = Counts {
        above: sum(|t| t.above),
        at_hi: sum(|t| t.at_hi),
        at_lo: sum(|t| t.at_lo),
        inside: sum(|t| t.gathered.len() as u64),
    };
    resolve(k, lo, hi, &counts, || {
        let mut all = Vec::with_capacity(counts.inside as usize);
        tallies.for_each(|t| all.extend_from_slice(&t.gathered));
        all
    })
}

/// How many magnitudes lie above a bracket `[lo, hi]`, at either end and
/// strictly inside.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Counts {
    pub(super) above: u64,
    pub(super) at_hi: u64,
    pub(super) at_lo: u64,
    pub(super) inside: u64,
}

/// The `k`-th largest magnitude's bits from a pass's `counts` over `[lo,
/// hi]`, or `None` when it lies outside; `inside` gives the magnitudes
/// strictly inside when the answer is among them.
pub(super) fn resolve(
    k: usize,
    lo: u32,
    hi: u32,
    counts: &Counts,
    inside: impl FnOnce() -> Vec<u32>,
) -> Option<u32> {
    let above = counts.above;
    let at_hi = above + counts.at_hi;
    let within = at_hi + counts.inside;
    // With lo == hi the elements at lo were counted as at hi.
    let at_lo = within + if lo < hi { counts.at_lo } else { 0 };
    let k = k as u64;
    if k <= above || k > at_lo {
        None
    } else if k <= at_hi {
        Some(hi)
    } else if k > within {
        Some(lo)
    } else {
        let mut all = inside();
        let r = (k - at_hi - 1) as usize;
        Some(*all.select_nth_unstable_by(r, |a, b| b.cmp(a)).1)
    }
}

/// Counts elements `start..start + len` above `hi`, equal to `hi` and
/// equal to `lo` into `t`, and gathers those strictly between.
#[allow(clippy::too_many_arguments)]
fn scan(
    s: &mut Scratch,
    x: Input<'_>,
    base: Option<Input<'_>>,
    start: usize,
    len: usize,
    lo: u32,
    hi: u32,
    t: &mut Tally,
) {
    let (x, t) = (std::slice::from_ref(&x), std::slice::from_mut(t));
    scan_each(s, x, base, start, len, &[Some((lo, hi))], t);
}

lanes::multiversion! {
    /// [`scan`] for every model `i` with a bracket `brackets[i]`, into
    /// `t[i]`, decoding the base once per block for all of them.
    fn scan_each(
        s: &mut Scratch,
        xs: &[Input<'_>],
        base: Option<Input<'_>>,
        start: usize,
        len: usize,
        brackets: &[Option<(u32, u32)>],
        t: &mut [Tally],
    ) {
        s.f.resize(2 * BLOCK, 0.0);
        s.flags.resize(BLOCK, 0);
        s.got.resize(BLOCK, 0);
        let (v, w) = s.f.split_at_mut(BLOCK);
        let mut at = start;
        while at < start + len {
            let n = BLOCK.min(start + len - at);
            let (v, w) = (&mut v[..n], &mut w[..n]);
            if let Some(b) = base {
                lanes::decode(bytes(b, at, n), b.dtype, w, &mut s.bits);
            }
            let w = base.is_some().then_some(&*w);
            for ((x, bracket), t) in xs.iter().zip(brackets).zip(t.iter_mut()) {
                let Some((lo, hi)) = *bracket else {
                    continue;
                };
                let mut count = BlockCount {
                    lo,
                    hi,
                    flags: &mut s.flags,
                    got: &mut s.got,
                    t,
                };
                let raw = bytes(*x, at, n);
                #[cfg(target_arch = "x86_64")]
                if lanes::avx2() {
                    // SAFETY: `avx2` says the CPU has AVX2 and F16C.
                    unsafe {
                        match x.dtype {
                            DType::BF16 => count.avx2::<ties::Bf16, 2>(raw, w, |c| {
                                lanes::bf16_to_f32(u16::from_le_bytes(c))
                            }),
                            DType::F16 => count.avx2::<ties::F16, 2>(raw, w, |c| {
                                half::f16::from_le_bytes(c).to_f32()
                            }),
                            _ => count.avx2::<ties::F32, 4>(raw, w, f32::from_le_bytes),
                        }
                    }
                    continue;
                }
                // BF16 and F32 are decoded inside the counting loop; F16
                // a block at a time (`half`, F16C where the CPU has it).
                match x.dtype {
                    DType::BF16 => count.from(raw.as_chunks::<2>().0, w, |c| {
                        lanes::bf16_to_f32(u16::from_le_bytes(c))
                    }),
                    DType::F32 => count.from(raw.as_chunks::<4>().0, w, f32::from_le_bytes),
                    _ => {
                        lanes::decode(raw, x.dtype, v, &mut s.bits);
                        let v: &[f32] = v;
                        let v = bytemuck::cast_slice::<f32, u8>(v).as_chunks::<4>().0;
                        count.from(v, w, f32::from_ne_bytes);
                    }
                }
            }
            at += n;
        }
    }
}

/// One block's counting for [`scan`]: into `t`, the magnitudes above `hi`
/// and equal to either end, and those strictly between gathered (`flags`
/// and `got` are scratch, at least as long as the block).
struct BlockCount<'a> {
    lo: u32,
    hi: u32,
    flags: &'a mut [u8],
    got: &'a mut [u32],
    t: &'a mut Tally,
}

impl BlockCount<'_> {
    /// Counts the deltas of the elements `x` decoded by `get`, less the
    /// base's `w` when there is a base.
    #[inline(always)]
    fn from<const S: usize>(
        &mut self,
        x: &[[u8; S]],
        w: Option<&[f32]>,
        get: impl Fn([u8; S]) -> f32,
    ) {
        match w {
            Some(w) => {
                let w = &w[..x.len()];
                self.by(x.len(), |j| get(x[j]) - w[j]);
            }
            None => self.by(x.len(), |j| get(x[j])),
        }
    }

    /// [`BlockCount::from`] with the counts in AVX2 registers
    /// ([`ties::count`]), over the elements' bytes `raw`.
    ///
    /// # Safety
    /// The CPU has AVX2 and F16C.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn avx2<L: ties::Load, const S: usize>(
        &mut self,
        raw: &[u8],
        w: Option<&[f32]>,
        get: impl Fn([u8; S]) -> f32,
    ) {
        let x = raw.as_chunks::<S>().0;
        let n = x.len();
        let bits = &mut self.flags[..n.div_ceil(8)];
        // SAFETY: the caller's.
        let [above, at_hi, at_lo] = unsafe { ties::count::<L>(raw, w, self.lo, self.hi, bits) };
        let t = &mut *self.t;
        t.above += u64::from(above);
        t.at_hi += u64::from(at_hi);
        t.at_lo += u64::from(at_lo);
        // The magnitudes inside, again, for the few elements that are.
        let mag = |j: usize| {
            let d = match w {
                Some(w) => get(x[j]) - w[j],
                None => get(x[j]),
            };
            d.to_bits() & 0x7fff_ffff
        };
        let got = &mut *self.got;
        let mut c = 0;
        lanes::for_each_bit(bits, |j| {
            got[c] = mag(j);
            c += 1;
        });
        t.gathered.extend_from_slice(&got[..c]);
    }

    /// Counts the `n` deltas `delta(j)`.
    #[inline(always)]
    fn by(&mut self, n: usize, delta: impl Fn(usize) -> f32) {
        let (lo, hi) = (self.lo, self.hi);
        let mag = |j: usize| delta(j).to_bits() & 0x7fff_ffff;
        // m strictly inside (lo, hi) iff m − (lo + 1) < hi − lo − 1, wrapping.
        let (from, width) = (lo.wrapping_add(1), hi.saturating_sub(lo).saturating_sub(1));
        let (mut above, mut at_hi, mut at_lo, mut inside) = (0u32, 0u32, 0u32, 0u32);
        let flags = &mut self.flags[..n];
        for (j, g) in flags.iter_mut().enumerate() {
            let m = mag(j);
            let i = m.wrapping_sub(from) < width;
            above += u32::from(m > hi);
            at_hi += u32::from(m == hi);
            at_lo += u32::from(m == lo);
            inside += u32::from(i);
            *g = u8::from(i);
        }
        let t = &mut *self.t;
        t.above += u64::from(above);
        t.at_hi += u64::from(at_hi);
        t.at_lo += u64::from(at_lo);
        if inside > 0 {
            // Into scratch first: a push per element may grow the Vec, a
            // call that keeps the walk's counters on the stack.
            let got = &mut *self.got;
            let mut c = 0;
            lanes::for_each_set(flags, |j| {
                got[c] = mag(j);
                c += 1;
            });
            t.gathered.extend_from_slice(&got[..c]);
        }
    }
}

/// Radix select: exact for any input, two reads of it.
pub(super) fn radix(x: Input<'_>, base: Option<Input<'_>>, k: usize) -> u32 {
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
        blocks(s, x, base, start, len, #[inline(always)]
        |v| {
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
        });
    }
}

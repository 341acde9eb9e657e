//! TIES' magnitude trim inside the merge's own pass: one read of the
//! inputs instead of one per model for the thresholds and one more to merge.
//!
//! Each model's threshold is first bracketed from a sample
//! ([`select::bracket`]): the exact threshold t lies in `[lo, hi]`, so the
//! model's decision is already known for every delta with |δ| ≥ hi (kept)
//! or |δ| < lo (dropped). The pass merges every element with the
//! provisional thresholds hi, counts per model the magnitudes above hi and
//! at either end (as [`select::within`] does), and records the input bytes
//! of each element some model is undecided on. The counts and the recorded
//! magnitudes then give each exact threshold, and the recorded elements are
//! merged again with them, through the same loop, over their provisional
//! outputs. Every output is thus the plain merge's with the exact
//! thresholds, bit for bit. A bracket that misses, or more than
//! `n / GATHER_DIV` recorded elements, leaves it to the caller to find the
//! thresholds first and merge again. The CPU backend takes this path when
//! `THETA_CPU_TIES=one-pass` (see `docs/compute.md` for why not by default).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use rayon::prelude::*;

use super::CHUNK;
use super::lanes::{self, BLOCK};
use super::merge::{self, FastMerge, Tap};
use super::select::{self, Counts};
use crate::DType;
use crate::compute::Input;
use crate::compute::ops::{self, MergeParams, ModelParams};

/// Merges into `out` with each model `i` with `trims[i] = Some(k)` keeping
/// its `k` largest magnitudes, in one pass; `false` when this path does not
/// apply or the brackets missed (`out` then holds nothing of use).
pub(super) fn merge(
    p: &MergeParams,
    models: &[ModelParams],
    trims: &[Option<usize>],
    inputs: &[Input<'_>],
    base: Option<Input<'_>>,
    out: &mut [u8],
    out_dtype: DType,
) -> bool {
    let os = out_dtype.size();
    let n = out.len() / os;
    if n < select::MIN_SAMPLED
        || p.sparsify != ops::SPARSIFY_MAGNITUDE
        || trims.len() != models.len()
        || models.iter().any(|m| m.upper_bits != u32::MAX)
    {
        return false;
    }
    let brackets: Vec<Option<(u32, u32)>> = trims
        .par_iter()
        .zip(inputs)
        .map(|(k, x)| k.map(|k| select::bracket(*x, base, k)))
        .collect();
    let mut provisional = models.to_vec();
    for (m, b) in provisional.iter_mut().zip(&brackets) {
        if let Some((_, hi)) = *b {
            m.threshold_bits = hi;
        }
    }
    let Some(fast) = FastMerge::new(p, &provisional, inputs, base, out_dtype) else {
        return false;
    };
    let limit = n / select::GATHER_DIV;
    let total = AtomicUsize::new(0);
    let full = AtomicBool::new(false);
    let records: Vec<Records<'_>> = out
        .par_chunks_mut(CHUNK * os)
        .enumerate()
        .map_init(merge::Scratch::default, |s, (c, dst)| {
            let mut r = Records::new(&brackets, inputs, base, c * CHUNK);
            if !full.load(Ordering::Relaxed) {
                fused_chunk(&fast, s, &mut r, c * CHUNK, dst);
                let g = r.at.len();
                if total.fetch_add(g, Ordering::Relaxed) + g > limit {
                    full.store(true, Ordering::Relaxed);
                }
            }
            r
        })
        .collect();
    if full.load(Ordering::Relaxed) {
        return false;
    }
    let mut exact = models.to_vec();
    for (i, (m, k)) in exact.iter_mut().zip(trims).enumerate() {
        let (Some(k), Some((lo, hi))) = (*k, brackets[i]) else {
            continue;
        };
        let mut counts = Counts::default();
        for r in &records {
            counts.above += r.counts[i].above;
            counts.at_hi += r.counts[i].at_hi;
            counts.at_lo += r.counts[i].at_lo;
        }
        counts.inside = records.iter().map(|r| r.inside[i].len() as u64).sum();
        let inside = || {
            let mut all = Vec::with_capacity(counts.inside as usize);
            records
                .iter()
                .for_each(|r| all.extend_from_slice(&r.inside[i]));
            all
        };
        match select::resolve(k, lo, hi, &counts, inside) {
            Some(t) => m.threshold_bits = ops::threshold_for_k(k, Some(t)),
            None => return false,
        }
    }
    out.par_chunks_mut(CHUNK * os)
        .zip(records.par_iter())
        .for_each_init(merge::Scratch::default, |s, (dst, r)| {
            r.rewrite(p, &exact, s, dst, out_dtype)
        });
    true
}

/// Recorded elements a chunk makes room for at first (a few per cent).
const RESERVE: usize = CHUNK / 32;

/// One chunk's counts and recorded elements.
struct Records<'a> {
    /// Per model, its bracket when it is trimmed here.
    brackets: &'a [Option<(u32, u32)>],
    inputs: &'a [Input<'a>],
    base: Option<Input<'a>>,
    /// The chunk's first element.
    start: usize,
    /// Per model, magnitudes above and at the ends of its bracket
    /// (`inside` unused: [`Records::inside`] holds those).
    counts: Vec<Counts>,
    /// Per element of the current block, whether some model is undecided.
    flags: Vec<u8>,
    /// Per model, the recorded magnitudes strictly inside its bracket.
    inside: Vec<Vec<u32>>,
    /// The recorded elements, relative to `start`.
    at: Vec<u32>,
    /// Their bytes: per model, then the base's.
    bytes: Vec<Vec<u8>>,
    /// Scratch for decoding recorded elements.
    f: Vec<f32>,
    tmp: Vec<u16>,
}

impl<'a> Records<'a> {
    fn new(
        brackets: &'a [Option<(u32, u32)>],
        inputs: &'a [Input<'a>],
        base: Option<Input<'a>>,
        start: usize,
    ) -> Self {
        Records {
            brackets,
            inputs,
            base,
            start,
            counts: vec![Counts::default(); inputs.len()],
            flags: vec![0; BLOCK],
            inside: vec![Vec::new(); inputs.len()],
            at: Vec::with_capacity(RESERVE),
            bytes: inputs
                .iter()
                .chain(&base)
                .map(|x| Vec::with_capacity(RESERVE * x.dtype.size()))
                .collect(),
            f: Vec::new(),
            tmp: Vec::new(),
        }
    }

    /// Records the elements `at + j` for each `j` of `idx` (in order): their
    /// bytes, and each model's magnitude where it lies strictly inside its
    /// bracket, computed again from those bytes as the merge computed it.
    fn record(&mut self, at: usize, idx: &[u16]) {
        if idx.is_empty() {
            return;
        }
        let from = at - self.start;
        let old = self.at.len();
        self.at
            .extend(idx.iter().map(|&j| (from + usize::from(j)) as u32));
        for (x, bytes) in self.inputs.iter().chain(&self.base).zip(&mut self.bytes) {
            match x.dtype.size() {
                2 => gather::<2>(bytes, x.bytes, at, idx),
                _ => gather::<4>(bytes, x.bytes, at, idx),
            }
        }
        let n = idx.len();
        self.f.resize(2 * n, 0.0);
        let (d, b) = self.f.split_at_mut(n);
        let m = self.inputs.len();
        let new = |i: usize, x: &Input<'_>| &self.bytes[i][old * x.dtype.size()..];
        if let Some(base) = self.base {
            lanes::decode(new(m, &base), base.dtype, b, &mut self.tmp);
        }
        for (i, x) in self.inputs.iter().enumerate() {
            let Some((lo, hi)) = self.brackets[i] else {
                continue;
            };
            lanes::decode(new(i, x), x.dtype, d, &mut self.tmp);
            if self.base.is_some() {
                d.iter_mut().zip(b.iter()).for_each(|(v, b)| *v -= b);
            }
            self.inside[i].extend(
                d.iter()
                    .map(|v| v.to_bits() & 0x7fff_ffff)
                    .filter(|&m| m > lo && m < hi),
            );
        }
    }

    /// The recorded elements as inputs: the models', then the base.
    fn recorded(&self) -> (Vec<Input<'_>>, Option<Input<'_>>) {
        let m = self.inputs.len();
        let xs = (0..m)
            .map(|i| Input::new(self.inputs[i].dtype, &self.bytes[i]))
            .collect();
        (xs, self.base.map(|b| Input::new(b.dtype, &self.bytes[m])))
    }

    /// Merges the recorded elements with the `exact` thresholds and writes
    /// them over their places in `dst`, the chunk's output.
    fn rewrite(
        &self,
        p: &MergeParams,
        exact: &[ModelParams],
        s: &mut merge::Scratch,
        dst: &mut [u8],
        out_dtype: DType,
    ) {
        if self.at.is_empty() {
            return;
        }
        let (xs, base) = self.recorded();
        let fast = FastMerge::new(p, exact, &xs, base, out_dtype)
            .expect("the parameters took the fast merge for the whole tensor");
        let os = out_dtype.size();
        let mut res = vec![0u8; self.at.len() * os];
        merge::chunk(&fast, s, 0, &mut res);
        for (&j, v) in self.at.iter().zip(res.chunks_exact(os)) {
            let j = j as usize;
            dst[j * os..(j + 1) * os].copy_from_slice(v);
        }
    }
}

impl Tap for Records<'_> {
    #[inline(always)]
    fn delta(&mut self, i: usize, _at: usize, d: &[f32]) {
        let Some((lo, hi)) = self.brackets[i] else {
            return;
        };
        let (mut above, mut at_hi, mut at_lo) = (0u32, 0u32, 0u32);
        for (a, f) in d.iter().zip(self.flags.iter_mut()) {
            let m = a.to_bits() & 0x7fff_ffff;
            above += u32::from(m > hi);
            at_hi += u32::from(m == hi);
            at_lo += u32::from(m == lo);
            *f |= u8::from((m >= lo) & (m < hi));
        }
        let c = &mut self.counts[i];
        c.above += u64::from(above);
        c.at_hi += u64::from(at_hi);
        c.at_lo += u64::from(at_lo);
    }

    #[inline(always)]
    fn block(&mut self, at: usize, len: usize) {
        let mut idx = [0u16; BLOCK];
        let mut c = 0;
        lanes::for_each_set(&self.flags[..len], |j| {
            idx[c] = j as u16;
            c += 1;
        });
        self.flags[..len].fill(0);
        self.record(at, &idx[..c]);
    }

    fn brackets(&self) -> Option<&[Option<(u32, u32)>]> {
        Some(self.brackets)
    }

    #[inline(always)]
    fn tallied(&mut self, at: usize, _len: usize, counts: &[[u32; 3]], undecided: &[u8]) {
        for ((c, b), &[above, at_hi, at_lo]) in
            self.counts.iter_mut().zip(self.brackets).zip(counts)
        {
            if b.is_some() {
                c.above += u64::from(above);
                c.at_hi += u64::from(at_hi);
                c.at_lo += u64::from(at_lo);
            }
        }
        let mut idx = [0u16; BLOCK];
        let mut c = 0;
        lanes::for_each_bit(undecided, |j| {
            idx[c] = j as u16;
            c += 1;
        });
        self.record(at, &idx[..c]);
    }
}

/// Appends the `S`-byte elements `at + j` of `src`, for each `j` in `idx`.
#[inline(always)]
fn gather<const S: usize>(out: &mut Vec<u8>, src: &[u8], at: usize, idx: &[u16]) {
    let old = out.len();
    out.resize(old + idx.len() * S, 0);
    for (o, &j) in out[old..].chunks_exact_mut(S).zip(idx) {
        let e = at + usize::from(j);
        o.copy_from_slice(&src[e * S..][..S]);
    }
}

lanes::multiversion! {
    /// The merge of elements `start..` into `dst`, counting and recording
    /// into `r`.
    fn fused_chunk(
        fast: &FastMerge<'_>,
        s: &mut merge::Scratch,
        r: &mut Records<'_>,
        start: usize,
        dst: &mut [u8],
    ) {
        fast.chunk_impl(s, start, dst, r)
    }
}

//! The CPU backend: rayon over fixed chunks, each decoded to f32, run
//! through the scalar references in [`ops`], and encoded back.

use rayon::prelude::*;

use super::ops::{self, MergeParams, ModelParams, StatSums};
use super::{Backend, Input, Result};
use crate::DType;
use crate::convert::{decode_chunk, encode_chunk};

/// Elements per work item: a few hundred KiB per input, cache-sized.
const CHUNK: usize = 1 << 14;

/// The CPU backend.
pub(crate) struct Cpu;

fn slice<'a>(x: Input<'a>, start: usize, len: usize) -> &'a [u8] {
    let s = x.dtype.size();
    &x.bytes[start * s..(start + len) * s]
}

fn decode(x: Input<'_>, start: usize, buf: &mut [f32]) {
    decode_chunk(slice(x, start, buf.len()), x.dtype, buf);
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
        Ok(())
    }

    fn stats(
        &self,
        _tensor: &str,
        a: Input<'_>,
        b: Input<'_>,
        base: Option<Input<'_>>,
    ) -> Result<StatSums> {
        let n = a.len();
        let parts: Vec<StatSums> = (0..n.div_ceil(CHUNK))
            .into_par_iter()
            .map(|c| {
                let start = c * CHUNK;
                let len = CHUNK.min(n - start);
                let (mut xa, mut xb) = (vec![0f32; len], vec![0f32; len]);
                decode(a, start, &mut xa);
                decode(b, start, &mut xb);
                if let Some(bx) = base {
                    let mut xc = vec![0f32; len];
                    decode(bx, start, &mut xc);
                    for ((u, v), w) in xa.iter_mut().zip(xb.iter_mut()).zip(&xc) {
                        *u -= w;
                        *v -= w;
                    }
                }
                let mut s = StatSums::default();
                for (&u, &v) in xa.iter().zip(&xb) {
                    s.push(u, v);
                }
                s
            })
            .collect();
        let mut total = StatSums::default();
        for s in &parts {
            total.add(s);
        }
        Ok(total)
    }

    fn kth_largest_abs(
        &self,
        _tensor: &str,
        x: Input<'_>,
        base: Option<Input<'_>>,
        k: usize,
    ) -> Result<u32> {
        let n = x.len();
        let mut bits = vec![0u32; n];
        bits.par_chunks_mut(CHUNK).enumerate().for_each(|(c, dst)| {
            let start = c * CHUNK;
            let mut v = vec![0f32; dst.len()];
            decode(x, start, &mut v);
            if let Some(bx) = base {
                let mut w = vec![0f32; dst.len()];
                decode(bx, start, &mut w);
                v.iter_mut().zip(&w).for_each(|(a, b)| *a -= b);
            }
            dst.iter_mut()
                .zip(&v)
                .for_each(|(d, a)| *d = a.to_bits() & 0x7fff_ffff);
        });
        // Linear-time selection; the k-th largest is at n - k in ascending order.
        let (_, kth, _) = bits.select_nth_unstable(n - k);
        Ok(*kth)
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

//! Passes over one model's deltas that feed a merge's parameters: the L1
//! norms before and after sparsification, for mergekit's `rescale`.
//!
//! They run on the CPU whatever the device (the inputs are host memory),
//! through the same scalar [`ops::sparsify`] the kernels mirror, so the
//! mask they measure is the mask the merge applies.

use rayon::prelude::*;

use super::Input;
use super::ops::{self, MergeParams, ModelParams};
use crate::convert::decode_chunk;

const CHUNK: usize = 1 << 14;

/// Norms below this leave the kept deltas unscaled (mergekit's `eps`).
const EPS: f64 = 1e-7;

/// The factor that gives model `model`'s kept deltas the L1 norm of its
/// whole delta: Σ|δ| / Σ|kept δ|, or 1 when either is below 1e-7.
pub(crate) fn l1_scale(
    p: &MergeParams,
    m: &ModelParams,
    model: u32,
    x: Input<'_>,
    base: Option<Input<'_>>,
) -> f32 {
    let n = x.len();
    let unscaled = ModelParams { scale: 1.0, ..*m };
    // Per-chunk sums added in order, so the factor is the same every run.
    let parts: Vec<(f64, f64)> = (0..n.div_ceil(CHUNK))
        .into_par_iter()
        .map(|c| {
            let start = c * CHUNK;
            let len = CHUNK.min(n - start);
            let mut d = vec![0f32; len];
            let s = x.dtype.size();
            decode_chunk(&x.bytes[start * s..(start + len) * s], x.dtype, &mut d);
            if let Some(b) = base {
                let mut bv = vec![0f32; len];
                let s = b.dtype.size();
                decode_chunk(&b.bytes[start * s..(start + len) * s], b.dtype, &mut bv);
                d.iter_mut().zip(&bv).for_each(|(v, b)| *v -= b);
            }
            let (mut all, mut kept) = (0f64, 0f64);
            for (j, &v) in d.iter().enumerate() {
                all += f64::from(v.abs());
                let k = ops::sparsify(p, &unscaled, v, model, (start + j) as u64);
                kept += f64::from(k.abs());
            }
            (all, kept)
        })
        .collect();
    let (before, after) = parts
        .iter()
        .fold((0.0, 0.0), |acc, s| (acc.0 + s.0, acc.1 + s.1));
    if before < EPS || after < EPS {
        1.0
    } else {
        (before / after) as f32
    }
}

//! The arithmetic of `git theta diff`: pairing the old and new bytes of a
//! tensor piece by piece, reducing each pair with `Device::diff_stats`, and
//! adding the pieces' sums into the tensor's [`Stats`].

use theta_engine::DType;
use theta_engine::compute::{Device, Input};

use super::diff::{DiffError, Stats};

/// Bytes reduced in one job: large enough to amortise a kernel launch,
/// small enough to spread a big tensor over every core.
const JOB_BYTES: usize = 16 << 20;

/// Cuts two sequences of segments holding the same number of bytes at the
/// union of their boundaries (and every `max` bytes), so that each pair of
/// slices covers the same elements. Boundaries are multiples of `elem`
/// (objects hold whole rows).
pub fn aligned<'x>(a: &[&'x [u8]], b: &[&'x [u8]], elem: usize) -> Vec<(&'x [u8], &'x [u8])> {
    let max = (JOB_BYTES / elem.max(1)).max(1) * elem.max(1);
    let (mut i, mut j, mut oi, mut oj) = (0, 0, 0, 0);
    let mut out = Vec::new();
    while i < a.len() && j < b.len() {
        let n = (a[i].len() - oi).min(b[j].len() - oj).min(max);
        if n > 0 {
            out.push((&a[i][oi..oi + n], &b[j][oj..oj + n]));
        }
        oi += n;
        oj += n;
        if oi == a[i].len() {
            i += 1;
            oi = 0;
        }
        if oj == b[j].len() {
            j += 1;
            oj = 0;
        }
    }
    out
}

/// Sums over part of a tensor, added across parts.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sums {
    numel: u64,
    changed: u64,
    /// Whether the norms below mean anything (float tensors).
    norms: bool,
    a2: f64,
    b2: f64,
    d2: f64,
    dot: f64,
    max: f64,
}

impl Sums {
    /// Adds another part's sums.
    pub fn add(&mut self, o: &Sums) {
        self.numel += o.numel;
        self.changed += o.changed;
        self.norms |= o.norms;
        self.a2 += o.a2;
        self.b2 += o.b2;
        self.d2 += o.d2;
        self.dot += o.dot;
        self.max = self.max.max(o.max);
    }

    /// The statistics of a tensor of `numel` elements whose parts were added.
    pub fn stats(&self, numel: u64) -> Stats {
        let changed_fraction = if numel == 0 {
            0.0
        } else {
            self.changed as f64 / numel as f64
        };
        let mut s = Stats {
            numel,
            changed: self.changed,
            changed_fraction,
            ..Stats::default()
        };
        if self.norms {
            // The same formulas as theta_engine's DiffStats, over all parts.
            let (na, nb, nd) = (self.a2.sqrt(), self.b2.sqrt(), self.d2.sqrt());
            s.relative_change = Some(if na > 0.0 {
                nd / na
            } else if nd > 0.0 {
                f64::INFINITY
            } else {
                0.0
            });
            s.cosine = Some(if na * nb > 0.0 {
                self.dot / (na * nb)
            } else {
                0.0
            });
            s.max_abs_diff = Some(self.max);
            s.norm_diff = Some(nd);
            s.norm_old = Some(na);
            s.norm_new = Some(nb);
        }
        s
    }
}

/// Reduces one pair of slices (the same elements, old and new).
pub fn sums(
    device: &Device,
    tensor: &str,
    dtype: DType,
    a: &[u8],
    b: &[u8],
) -> Result<Sums, DiffError> {
    let compute = |message: String| DiffError::Compute {
        tensor: tensor.to_owned(),
        message,
    };
    let size = dtype.size().max(1);
    let numel = (a.len() / size) as u64;
    let from = |d: theta_engine::compute::DiffStats, changed: u64| Sums {
        numel,
        changed,
        norms: true,
        a2: d.norm_old * d.norm_old,
        b2: d.norm_new * d.norm_new,
        d2: d.norm_diff * d.norm_diff,
        dot: d.dot,
        max: f64::from(d.max_abs_diff),
    };
    match dtype {
        DType::F32 | DType::F16 | DType::BF16 => {
            let d = device
                .diff_stats(tensor, Input::new(dtype, a), Input::new(dtype, b))
                .map_err(|e| compute(e.to_string()))?;
            Ok(from(d, d.changed))
        }
        DType::F64 => {
            // The engine's math is f32: narrow, but count changes on the
            // f64 bits (a change below f32 precision is still a change).
            let (mut x, mut y) = (vec![0f32; numel as usize], vec![0f32; numel as usize]);
            theta_engine::convert::to_f32(tensor, a, dtype, &mut x)
                .and_then(|()| theta_engine::convert::to_f32(tensor, b, dtype, &mut y))
                .map_err(|e| compute(e.to_string()))?;
            let d = device
                .diff_stats(tensor, Input::f32(&x), Input::f32(&y))
                .map_err(|e| compute(e.to_string()))?;
            Ok(from(d, changed_elements(a, b, size)))
        }
        _ => Ok(Sums {
            numel,
            changed: changed_elements(a, b, size),
            ..Sums::default()
        }),
    }
}

/// Elements of `size` bytes that differ bitwise.
fn changed_elements(a: &[u8], b: &[u8], size: usize) -> u64 {
    a.chunks_exact(size)
        .zip(b.chunks_exact(size))
        .filter(|(p, q)| p != q)
        .count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_cut_at_both_sides_boundaries() {
        let a = [0u8; 24];
        let b = [1u8; 24];
        let (sa, sb): (Vec<&[u8]>, Vec<&[u8]>) =
            (vec![&a[..8], &a[8..24]], vec![&b[..4], &b[4..20], &b[20..]]);
        let pairs = aligned(&sa, &sb, 4);
        let lens: Vec<usize> = pairs
            .iter()
            .map(|(x, y)| {
                assert_eq!(x.len(), y.len());
                x.len()
            })
            .collect();
        assert_eq!(lens, [4, 4, 12, 4]);
        assert_eq!(pairs.iter().map(|p| p.0.len()).sum::<usize>(), 24);
    }
}

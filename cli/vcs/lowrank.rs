//! The factored update kinds: low-rank (`W + s·B·A`, a LoRA adapter merged)
//! and IA3 (`W ⊙ v`, a broadcast scale vector).
//!
//! Both have one object that every chunk of the tensor reads. Their result
//! is defined by one deterministic procedure, the CPU engine's: the tensor's
//! elements are widened to f32, the update computed in f32 by
//! [`Device::lowrank`] on [`Device::Cpu`] (rank index ascending) or by an f32
//! product, and rounded back to the tensor's dtype (nearest, ties to even).
//! A GPU could round differently, so rebuilding never uses one: `git theta
//! add --update-data` and checkout run this same code and agree bit for bit.

use theta_engine::compute::{Device, Input};
use theta_engine::{DType, convert};

use super::update::{Target, Update};

/// A low-rank update's factors: `B` is `[rows × rank]`, `A` is
/// `[rank × cols]` (f32), where `rows` is the tensor's first dimension and
/// `cols` the product of the others.
#[derive(Clone, Debug, PartialEq)]
pub struct Factors {
    /// The rank.
    pub rank: u32,
    /// The scale `s`.
    pub scale: f32,
    /// `B`, row-major.
    pub b: Vec<f32>,
    /// `A`, row-major.
    pub a: Vec<f32>,
}

/// `W + s·B·A`.
pub struct LowRank;

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn put_f32s(out: &mut Vec<u8>, v: &[f32]) {
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
}

fn float_dtype(t: &Target<'_>) -> Result<(), String> {
    match t.dtype {
        DType::F32 | DType::F16 | DType::BF16 => Ok(()),
        d => Err(format!(
            "factored updates apply to F32, F16 and BF16 tensors, not {d}"
        )),
    }
}

impl LowRank {
    /// The object of a low-rank step: rank (u32 LE), scale (f32 LE), then B
    /// and A as f32 LE, row-major.
    pub fn encode(f: &Factors) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 4 * (f.a.len() + f.b.len()));
        out.extend_from_slice(&f.rank.to_le_bytes());
        out.extend_from_slice(&f.scale.to_le_bytes());
        put_f32s(&mut out, &f.b);
        put_f32s(&mut out, &f.a);
        out
    }

    /// Parses a low-rank object for tensor `t`.
    pub fn decode(t: &Target<'_>, bytes: &[u8]) -> Result<Factors, String> {
        let (rows, cols) = (t.rows(), t.row_len());
        if bytes.len() < 8 {
            return Err("low-rank object shorter than its rank and scale".into());
        }
        let rank = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let scale = f32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        let want = u64::from(rank)
            .checked_mul(rows.saturating_add(cols))
            .and_then(|n| n.checked_mul(4))
            .and_then(|n| n.checked_add(8));
        if want != Some(bytes.len() as u64) {
            return Err(format!(
                "low-rank object of {} bytes does not hold rank-{rank} factors for [{rows} × {cols}]",
                bytes.len()
            ));
        }
        let split = 8 + 4 * (rows * u64::from(rank)) as usize;
        Ok(Factors {
            rank,
            scale,
            b: f32s(&bytes[8..split]),
            a: f32s(&bytes[split..]),
        })
    }

    /// `dense` (rows `row0..` of `t`) plus `s·B·A`, in place.
    pub fn apply_factors(
        t: &Target<'_>,
        row0: u64,
        f: &Factors,
        dense: &mut [u8],
    ) -> Result<(), String> {
        float_dtype(t)?;
        let cols = t.row_len() as usize;
        let rank = f.rank as usize;
        let n = dense.len() / t.dtype.size();
        if cols == 0 || n == 0 {
            return Ok(());
        }
        let rows = n / cols;
        let mut w = vec![0f32; n];
        convert::to_f32(t.name, dense, t.dtype, &mut w).map_err(|e| e.to_string())?;
        let w = bytemuck_f32(&w);
        let b_rows = &f.b[row0 as usize * rank..(row0 as usize + rows) * rank];
        let b = bytemuck_f32(b_rows);
        let a = bytemuck_f32(&f.a);
        Device::Cpu
            .lowrank(
                t.name,
                Input::new(DType::F32, &w),
                Input::new(DType::F32, &b),
                Input::new(DType::F32, &a),
                [rows, cols, rank],
                f.scale,
                dense,
                t.dtype,
            )
            .map_err(|e| e.to_string())
    }
}

fn bytemuck_f32(v: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * 4);
    put_f32s(&mut out, v);
    out
}

impl Update for LowRank {
    fn name(&self) -> &'static str {
        "low-rank"
    }

    fn per_chunk(&self) -> bool {
        false
    }

    fn apply(
        &self,
        t: &Target<'_>,
        row0: u64,
        payload: &[&[u8]],
        dense: &mut [u8],
    ) -> Result<(), String> {
        let [p] = payload else {
            return Err("a low-rank step has one object".into());
        };
        let f = Self::decode(t, p)?;
        Self::apply_factors(t, row0, &f, dense)
    }
}

/// Which axis an IA3 vector scales.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Axis {
    /// One factor per row (PEFT's attention modules: `[out, 1]`).
    Rows,
    /// One factor per column (PEFT's feed-forward modules: `[1, in]`).
    Cols,
}

/// `W ⊙ v`, `v` broadcast along rows or columns.
pub struct Ia3;

impl Ia3 {
    /// The object of an IA3 step: the axis (u32 LE: 0 rows, 1 columns), then
    /// the vector as f32 LE.
    pub fn encode(axis: Axis, v: &[f32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + 4 * v.len());
        out.extend_from_slice(&(axis as u32).to_le_bytes());
        put_f32s(&mut out, v);
        out
    }

    /// Parses an IA3 object for `t`.
    pub fn decode(t: &Target<'_>, bytes: &[u8]) -> Result<(Axis, Vec<f32>), String> {
        let axis = match bytes.get(..4) {
            Some([0, 0, 0, 0]) => Axis::Rows,
            Some([1, 0, 0, 0]) => Axis::Cols,
            _ => return Err("IA3 object without a valid axis".into()),
        };
        let len = match axis {
            Axis::Rows => t.rows(),
            Axis::Cols => t.row_len(),
        };
        if (bytes.len() as u64 - 4) != 4 * len {
            return Err(format!(
                "IA3 object of {} bytes does not hold {len} factors",
                bytes.len()
            ));
        }
        Ok((axis, f32s(&bytes[4..])))
    }

    /// `dense` (rows `row0..` of `t`) scaled by `v`, in place.
    pub fn apply_vector(
        t: &Target<'_>,
        row0: u64,
        axis: Axis,
        v: &[f32],
        dense: &mut [u8],
    ) -> Result<(), String> {
        float_dtype(t)?;
        let cols = t.row_len() as usize;
        let n = dense.len() / t.dtype.size();
        if cols == 0 || n == 0 {
            return Ok(());
        }
        let mut w = vec![0f32; n];
        convert::to_f32(t.name, dense, t.dtype, &mut w).map_err(|e| e.to_string())?;
        for (r, row) in w.chunks_exact_mut(cols).enumerate() {
            match axis {
                Axis::Rows => {
                    let s = v[row0 as usize + r];
                    row.iter_mut().for_each(|x| *x *= s);
                }
                Axis::Cols => row.iter_mut().zip(v).for_each(|(x, s)| *x *= s),
            }
        }
        convert::from_f32(t.name, &w, dense, t.dtype).map_err(|e| e.to_string())
    }
}

impl Update for Ia3 {
    fn name(&self) -> &'static str {
        "ia3"
    }

    fn per_chunk(&self) -> bool {
        false
    }

    fn apply(
        &self,
        t: &Target<'_>,
        row0: u64,
        payload: &[&[u8]],
        dense: &mut [u8],
    ) -> Result<(), String> {
        let [p] = payload else {
            return Err("an IA3 step has one object".into());
        };
        let (axis, v) = Self::decode(t, p)?;
        Self::apply_vector(t, row0, axis, &v, dense)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_rank_matches_the_definition_and_chunks_agree() {
        let shape = [4u64, 3];
        let t = Target {
            name: "w",
            dtype: DType::F32,
            shape: &shape,
        };
        let f = Factors {
            rank: 2,
            scale: 0.5,
            b: vec![1.0, 2.0, 0.0, 1.0, -1.0, 0.0, 3.0, 1.0],
            a: vec![1.0, 0.0, 2.0, 0.0, 1.0, -1.0],
        };
        let w: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let mut whole = bytemuck_f32(&w);
        let obj = LowRank::encode(&f);
        LowRank.apply(&t, 0, &[&obj], &mut whole).expect("apply");
        let got = f32s(&whole);
        for r in 0..4 {
            for c in 0..3 {
                let d: f32 = (0..2).map(|k| f.b[r * 2 + k] * f.a[k * 3 + c]).sum();
                assert_eq!(got[r * 3 + c], w[r * 3 + c] + 0.5 * d);
            }
        }
        // Rows 2..4 alone give the same bytes.
        let mut tail = bytemuck_f32(&w[6..]);
        LowRank.apply(&t, 2, &[&obj], &mut tail).expect("apply");
        assert_eq!(tail, whole[24..]);
        assert!(
            LowRank
                .apply(&t, 0, &[&obj[..obj.len() - 1]], &mut tail)
                .is_err()
        );
    }

    #[test]
    fn ia3_scales_rows_or_columns() {
        let shape = [2u64, 3];
        let t = Target {
            name: "w",
            dtype: DType::F32,
            shape: &shape,
        };
        let w = bytemuck_f32(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let mut rows = w.clone();
        Ia3.apply(&t, 0, &[&Ia3::encode(Axis::Rows, &[2.0, 0.5])], &mut rows)
            .expect("rows");
        assert_eq!(f32s(&rows), [2.0, 4.0, 6.0, 2.0, 2.5, 3.0]);
        let mut cols = w.clone();
        Ia3.apply(
            &t,
            0,
            &[&Ia3::encode(Axis::Cols, &[1.0, 0.0, -1.0])],
            &mut cols,
        )
        .expect("cols");
        assert_eq!(f32s(&cols), [1.0, 0.0, -3.0, 4.0, 0.0, -6.0]);
        assert!(
            Ia3.apply(&t, 0, &[&Ia3::encode(Axis::Cols, &[1.0])], &mut cols)
                .is_err()
        );
    }
}

//! Conversions between the floating-point dtypes F64, F32, F16 and BF16.
//!
//! Bytes are little-endian and may be unaligned (tensor data in a mapped
//! file need not be). Work is split into chunks converted in parallel with
//! rayon; within a chunk the `half` crate's slice conversions use the
//! processor's conversion instructions where it has them. Narrowing rounds
//! to nearest, ties to even; NaN stays NaN and infinities stay infinite.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

use crate::{DType, Error, Result};

/// Elements per parallel work item: large enough to amortise scheduling,
/// small enough to stay in cache.
const CHUNK: usize = 1 << 15;

fn check(tensor: &str, dtype: DType, op: &'static str) -> Result<()> {
    if dtype.is_float() {
        Ok(())
    } else {
        Err(Error::UnsupportedDType {
            tensor: tensor.to_owned(),
            dtype,
            op,
        })
    }
}

fn check_len(tensor: &str, src_bytes: usize, from: DType, dst_elems: usize) -> Result<()> {
    if src_bytes != dst_elems * from.size() {
        return Err(Error::usage(
            "<memory>",
            Some(tensor),
            format!("{src_bytes} bytes of {from} do not hold {dst_elems} elements"),
        ));
    }
    Ok(())
}

/// Decodes `src` (elements of `from`) into `dst`.
pub fn to_f32(tensor: &str, src: &[u8], from: DType, dst: &mut [f32]) -> Result<()> {
    check(tensor, from, "conversion to F32")?;
    check_len(tensor, src.len(), from, dst.len())?;
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK * from.size()))
        .for_each(|(d, s)| decode_chunk(s, from, d));
    Ok(())
}

/// Encodes `src` into `dst` as elements of `to`.
pub fn from_f32(tensor: &str, src: &[f32], dst: &mut [u8], to: DType) -> Result<()> {
    check(tensor, to, "conversion from F32")?;
    check_len(tensor, dst.len(), to, src.len())?;
    dst.par_chunks_mut(CHUNK * to.size())
        .zip(src.par_chunks(CHUNK))
        .for_each(|(d, s)| encode_chunk(s, d, to));
    Ok(())
}

/// Converts `src` (elements of `from`) into `dst` (elements of `to`).
pub fn convert(tensor: &str, src: &[u8], from: DType, dst: &mut [u8], to: DType) -> Result<()> {
    check(tensor, from, "dtype conversion")?;
    check(tensor, to, "dtype conversion")?;
    let n = src.len() / from.size();
    check_len(tensor, src.len(), from, n)?;
    check_len(tensor, dst.len(), to, n)?;
    if from == to {
        dst.copy_from_slice(src);
        return Ok(());
    }
    dst.par_chunks_mut(CHUNK * to.size())
        .zip(src.par_chunks(CHUNK * from.size()))
        .for_each(|(d, s)| {
            if from == DType::F64 {
                // Narrow straight from f64: going through f32 would round twice.
                let wide: Vec<f64> = s
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().unwrap_or_default()))
                    .collect();
                encode_f64_chunk(&wide, d, to);
            } else {
                let mut mid = vec![0f32; s.len() / from.size()];
                decode_chunk(s, from, &mut mid);
                encode_chunk(&mid, d, to);
            }
        });
    Ok(())
}

pub(crate) fn decode_chunk(src: &[u8], from: DType, dst: &mut [f32]) {
    match from {
        DType::F32 => match bytemuck::try_cast_slice::<u8, f32>(src) {
            Ok(s) => dst.copy_from_slice(s),
            Err(_) => dst
                .iter_mut()
                .zip(src.chunks_exact(4))
                .for_each(|(d, b)| *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        },
        DType::F16 => with_u16(src, |bits| {
            bytemuck::cast_slice::<u16, f16>(bits).convert_to_f32_slice(dst)
        }),
        DType::BF16 => with_u16(src, |bits| {
            bytemuck::cast_slice::<u16, bf16>(bits).convert_to_f32_slice(dst)
        }),
        DType::F64 => dst
            .iter_mut()
            .zip(src.chunks_exact(8))
            .for_each(|(d, b)| *d = f64::from_le_bytes(b.try_into().unwrap_or_default()) as f32),
        _ => {}
    }
}

pub(crate) fn encode_chunk(src: &[f32], dst: &mut [u8], to: DType) {
    match to {
        DType::F32 => dst.copy_from_slice(bytemuck::cast_slice(src)),
        DType::F16 => with_u16_mut(dst, |bits| {
            bytemuck::cast_slice_mut::<u16, f16>(bits).convert_from_f32_slice(src)
        }),
        DType::BF16 => with_u16_mut(dst, |bits| {
            bytemuck::cast_slice_mut::<u16, bf16>(bits).convert_from_f32_slice(src)
        }),
        DType::F64 => dst
            .chunks_exact_mut(8)
            .zip(src)
            .for_each(|(d, &x)| d.copy_from_slice(&f64::from(x).to_le_bytes())),
        _ => {}
    }
}

fn encode_f64_chunk(src: &[f64], dst: &mut [u8], to: DType) {
    match to {
        DType::F32 => dst
            .chunks_exact_mut(4)
            .zip(src)
            .for_each(|(d, &x)| d.copy_from_slice(&(x as f32).to_le_bytes())),
        DType::F16 => with_u16_mut(dst, |bits| {
            bytemuck::cast_slice_mut::<u16, f16>(bits).convert_from_f64_slice(src)
        }),
        DType::BF16 => with_u16_mut(dst, |bits| {
            bytemuck::cast_slice_mut::<u16, bf16>(bits).convert_from_f64_slice(src)
        }),
        DType::F64 => dst.copy_from_slice(bytemuck::cast_slice(src)),
        _ => {}
    }
}

/// Runs `f` on `bytes` seen as `u16`s, copying through an aligned buffer
/// when the bytes are not 2-aligned.
fn with_u16(bytes: &[u8], f: impl FnOnce(&[u16])) {
    match bytemuck::try_cast_slice::<u8, u16>(bytes) {
        Ok(bits) => f(bits),
        Err(_) => {
            let bits: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect();
            f(&bits)
        }
    }
}

fn with_u16_mut(bytes: &mut [u8], f: impl FnOnce(&mut [u16])) {
    match bytemuck::try_cast_slice_mut::<u8, u16>(bytes) {
        Ok(bits) => f(bits),
        Err(_) => {
            let mut bits = vec![0u16; bytes.len() / 2];
            f(&mut bits);
            bytes.copy_from_slice(bytemuck::cast_slice(&bits));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of(dtype: DType, xs: &[f32]) -> Vec<u8> {
        let mut out = vec![0u8; xs.len() * dtype.size()];
        from_f32("t", xs, &mut out, dtype).expect("encode");
        out
    }

    #[test]
    fn round_trips_exactly_representable_values() {
        // At most 8 significant bits: exact in every float dtype.
        let xs: Vec<f32> = (0..100_003)
            .map(|i| ((i % 255) as f32 - 127.0) / 8.0)
            .collect();
        for dtype in [DType::F64, DType::F32, DType::F16, DType::BF16] {
            let b = bytes_of(dtype, &xs);
            let mut back = vec![0f32; xs.len()];
            to_f32("t", &b, dtype, &mut back).expect("decode");
            assert!(back == xs, "{dtype} round trip differs");
        }
    }

    #[test]
    fn narrowing_rounds_to_nearest_even_and_keeps_specials() {
        let xs = [
            1.0 + f32::EPSILON,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
            70000.0,
        ];
        let b = bytes_of(DType::F16, &xs);
        let mut back = [0f32; 6];
        to_f32("t", &b, DType::F16, &mut back).expect("decode");
        assert_eq!(back[0], 1.0);
        assert!(back[1].is_nan());
        assert_eq!(back[2], f32::INFINITY);
        assert_eq!(back[3], f32::NEG_INFINITY);
        assert!(back[4] == 0.0 && back[4].is_sign_negative());
        assert_eq!(back[5], f32::INFINITY, "overflow saturates to infinity");
        // 1 + 2^-8 is a tie between two bf16 values: it rounds to the even one (1.0).
        let b = bytes_of(DType::BF16, &[1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0]);
        let mut back = [0f32; 2];
        to_f32("t", &b, DType::BF16, &mut back).expect("decode");
        assert_eq!(back, [1.0, 1.0 + 4.0 / 256.0]);
    }

    #[test]
    fn unaligned_sources_and_all_pairs_agree() {
        let xs: Vec<f32> = (0..70_001).map(|i| (i as f32).sin()).collect();
        for from in [DType::F64, DType::F32, DType::F16, DType::BF16] {
            let b = bytes_of(from, &xs);
            let mut shifted = vec![0u8; b.len() + 1];
            shifted[1..].copy_from_slice(&b);
            for to in [DType::F64, DType::F32, DType::F16, DType::BF16] {
                let mut aligned = vec![0u8; xs.len() * to.size()];
                let mut unaligned = vec![0u8; xs.len() * to.size()];
                convert("t", &b, from, &mut aligned, to).expect("convert");
                convert("t", &shifted[1..], from, &mut unaligned, to).expect("convert");
                assert_eq!(aligned, unaligned, "{from}->{to}");
            }
        }
    }

    #[test]
    fn integer_dtypes_are_refused_with_the_tensor_name() {
        let err = to_f32("model.ids", &[0u8; 8], DType::I64, &mut [0f32; 1]).expect_err("refused");
        assert!(
            err.to_string().contains("model.ids") && err.to_string().contains("I64"),
            "{err}"
        );
    }
}

//! Tensor descriptions and zero-copy views of tensor bytes.

use crate::convert;
use crate::{DType, Error, Result};

/// Ordered `key → value` string pairs, as in safetensors' `__metadata__`.
pub type Metadata = Vec<(String, String)>;

/// A tensor's name, element type and shape: everything but its bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorInfo {
    /// The tensor's name in its checkpoint.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Dimensions, outermost first. Empty for a scalar.
    pub shape: Vec<u64>,
}

impl TensorInfo {
    /// A tensor description.
    pub fn new(name: impl Into<String>, dtype: DType, shape: impl Into<Vec<u64>>) -> Self {
        TensorInfo {
            name: name.into(),
            dtype,
            shape: shape.into(),
        }
    }

    /// Number of elements, or `None` if it overflows `u64`.
    pub fn checked_numel(&self) -> Option<u64> {
        self.shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
    }

    /// Byte size, or `None` if it overflows `u64`.
    pub fn checked_nbytes(&self) -> Option<u64> {
        self.checked_numel()?.checked_mul(self.dtype.size() as u64)
    }

    /// Number of elements. Shapes read from files are checked for overflow
    /// when parsed, so this saturates only for hand-made infos.
    pub fn numel(&self) -> u64 {
        self.checked_numel().unwrap_or(u64::MAX)
    }

    /// Byte size (see [`TensorInfo::numel`] on overflow).
    pub fn nbytes(&self) -> u64 {
        self.checked_nbytes().unwrap_or(u64::MAX)
    }
}

/// A tensor's description with its bytes, borrowed from a memory map.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    /// What the bytes are.
    pub info: &'a TensorInfo,
    /// Little-endian element bytes, `info.nbytes()` long.
    pub data: &'a [u8],
}

impl TensorView<'_> {
    /// The elements converted to `f32` (exact for F16 and BF16; F64 rounds).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        self.require_float("conversion to F32")?;
        let mut out = vec![0f32; self.data.len() / self.info.dtype.size()];
        convert::to_f32(&self.info.name, self.data, self.info.dtype, &mut out)?;
        Ok(out)
    }

    /// The bytes of this tensor converted to `dtype` (a copy; same bytes when
    /// the dtype is unchanged).
    pub fn to_dtype(&self, dtype: DType) -> Result<Vec<u8>> {
        if dtype == self.info.dtype {
            return Ok(self.data.to_vec());
        }
        let n = self.data.len() / self.info.dtype.size();
        let mut out = vec![0u8; n * dtype.size()];
        convert::convert(&self.info.name, self.data, self.info.dtype, &mut out, dtype)?;
        Ok(out)
    }

    fn require_float(&self, op: &'static str) -> Result<()> {
        if self.info.dtype.is_float() {
            Ok(())
        } else {
            Err(Error::UnsupportedDType {
                tensor: self.info.name.clone(),
                dtype: self.info.dtype,
                op,
            })
        }
    }
}

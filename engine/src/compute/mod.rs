//! The compute engine: the tensor math of merges, diffs and updates, on the
//! CPU (rayon) or a GPU (wgpu), with the same results.
//!
//! - [`Device`]: where kernels run; [`Device::auto`] picks a GPU adapter when
//!   there is one, else the CPU, and says why ([`Device::from_env`] and
//!   [`DeviceChoice`] for `--device` and `THETA_DEVICE`).
//! - [`ops`]: each op's parameter block and scalar CPU reference, beside its
//!   WGSL entry point in `theta-shaders`.
//! - Ops: [`Device::merge`] (weighted sums, task arithmetic, TIES, DARE),
//!   [`Device::diff_stats`], [`Device::slerp`], [`Device::pairwise_cosine`],
//!   [`Device::lowrank`], [`Device::kth_largest_abs`]; and on the CPU only,
//!   [`moments`] (a tensor's min, max, Σx, Σx²: manifest statistics).
//!
//! Inputs and outputs are F32, F16 or BF16 bytes (little-endian, any
//! alignment); the math is f32. See `docs/compute.md` for the error bounds.

mod cpu;
mod device;
mod error;
#[cfg_attr(feature = "gpu", path = "gpu/mod.rs")]
#[cfg_attr(not(feature = "gpu"), path = "gpu_disabled.rs")]
mod gpu;
mod masks;
pub mod ops;
mod run;

pub use cpu::{Moments, moments};
pub use device::{Device, DeviceChoice, GpuInfo};
pub use error::{ComputeError, Result};
pub use gpu::GpuContext;
pub use run::{Combine, DiffStats, MergeOptions, MergeSpec, NormsDot, Rescale, Sparsify, Term};

use crate::DType;

/// A tensor's bytes as a kernel input.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    /// F32, F16 or BF16.
    pub dtype: DType,
    /// Little-endian elements, any alignment.
    pub bytes: &'a [u8],
}

impl<'a> Input<'a> {
    /// Wraps bytes of `dtype`.
    pub fn new(dtype: DType, bytes: &'a [u8]) -> Self {
        Input { dtype, bytes }
    }

    /// Wraps f32 values.
    pub fn f32(values: &'a [f32]) -> Self {
        Input::new(DType::F32, bytemuck::cast_slice(values))
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.bytes.len() / self.dtype.size().max(1)
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Code of a kernel dtype in the shaders (`DT_*` in `common.wgsl`).
pub(crate) fn dtype_code(tensor: &str, dtype: DType) -> Result<u32> {
    match dtype {
        DType::F32 => Ok(0),
        DType::F16 => Ok(1),
        DType::BF16 => Ok(2),
        _ => Err(ComputeError::DType {
            tensor: tensor.to_owned(),
            dtype,
        }),
    }
}

/// What each backend implements; [`Device`] adds the logic shared by both
/// (resolving densities into thresholds, SLERP's coefficients, ...).
pub(crate) trait Backend {
    /// Runs `merge.wgsl` / [`ops::merge_element`] over every element.
    #[allow(clippy::too_many_arguments)]
    fn merge(
        &self,
        tensor: &str,
        p: &ops::MergeParams,
        models: &[ops::ModelParams],
        inputs: &[Input<'_>],
        base: Option<Input<'_>>,
        out: &mut [u8],
        out_dtype: DType,
    ) -> Result<()>;

    /// [`Backend::merge`] after each model `i` with `trims[i] = Some(k)`
    /// gets the threshold that keeps its `k` largest |xᵢ − base|. The
    /// default finds each threshold with [`Backend::kth_largest_abs`]
    /// first; the CPU can find them inside the merge's own pass
    /// (`THETA_CPU_TIES=one-pass`).
    #[allow(clippy::too_many_arguments)]
    fn merge_trimmed(
        &self,
        tensor: &str,
        p: &ops::MergeParams,
        models: &[ops::ModelParams],
        trims: &[Option<usize>],
        inputs: &[Input<'_>],
        base: Option<Input<'_>>,
        out: &mut [u8],
        out_dtype: DType,
    ) -> Result<()> {
        let mut models = models.to_vec();
        trim(self, tensor, &mut models, trims, inputs, base)?;
        self.merge(tensor, p, &models, inputs, base, out, out_dtype)
    }

    /// Sums of `stats.wgsl` over (a, b), optionally relative to a base.
    fn stats(
        &self,
        tensor: &str,
        a: Input<'_>,
        b: Input<'_>,
        base: Option<Input<'_>>,
    ) -> Result<ops::StatSums>;

    /// Σa², Σb² and Σa·b over (a, b) relative to `base`, the values
    /// [`Backend::stats`] gives them (the other sums unspecified): the
    /// norms and dot of SLERP and model_stock's cosines. The CPU sums these
    /// alone; by default the whole statistics pass runs.
    fn norms_dot(
        &self,
        tensor: &str,
        a: Input<'_>,
        b: Input<'_>,
        base: Option<Input<'_>>,
    ) -> Result<ops::StatSums> {
        self.stats(tensor, a, b, base)
    }

    /// Bits of the `k`-th largest |x − base| (1-based; `1 <= k <= len`).
    fn kth_largest_abs(
        &self,
        tensor: &str,
        x: Input<'_>,
        base: Option<Input<'_>>,
        k: usize,
    ) -> Result<u32>;

    /// `W + s·B·A`.
    #[allow(clippy::too_many_arguments)]
    fn lowrank(
        &self,
        tensor: &str,
        w: Input<'_>,
        b: Input<'_>,
        a: Input<'_>,
        shape: [usize; 3],
        scale: f32,
        out: &mut [u8],
        out_dtype: DType,
    ) -> Result<()>;
}

/// Sets the threshold of each model `i` with `trims[i] = Some(k)` to keep
/// its `k` largest |xᵢ − base| (ties with the k-th all kept).
pub(crate) fn trim<B: Backend + ?Sized>(
    backend: &B,
    tensor: &str,
    models: &mut [ops::ModelParams],
    trims: &[Option<usize>],
    inputs: &[Input<'_>],
    base: Option<Input<'_>>,
) -> Result<()> {
    for ((m, k), x) in models.iter_mut().zip(trims).zip(inputs) {
        if let Some(k) = *k {
            let kth = backend.kth_largest_abs(tensor, *x, base, k)?;
            m.threshold_bits = ops::threshold_for_k(k, Some(kth));
        }
    }
    Ok(())
}

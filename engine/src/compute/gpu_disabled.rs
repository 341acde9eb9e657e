//! Stand-in for the GPU backend in builds without the `gpu` feature: the
//! same API, which reports that GPU support was not compiled in.

use std::sync::Arc;

use super::device::GpuInfo;
use super::{Backend, ComputeError, DType, Input, Result, ops};

/// A GPU context; none can exist in this build.
#[derive(Debug)]
pub enum GpuContext {}

impl GpuContext {
    /// Always [`ComputeError::NotCompiled`].
    pub fn shared() -> Result<Arc<GpuContext>> {
        Err(ComputeError::NotCompiled)
    }

    /// The adapter's description.
    pub fn info(&self) -> &GpuInfo {
        match *self {}
    }

    /// A context with smaller limits (for tests).
    pub fn with_limits(&self, _binding_bytes: u64, _max_groups: u32) -> GpuContext {
        match *self {}
    }

    /// Waits for submitted work.
    pub fn sync(&self) -> Result<()> {
        match *self {}
    }
}

impl Backend for GpuContext {
    fn merge(
        &self,
        _: &str,
        _: &ops::MergeParams,
        _: &[ops::ModelParams],
        _: &[Input<'_>],
        _: Option<Input<'_>>,
        _: &mut [u8],
        _: DType,
    ) -> Result<()> {
        match *self {}
    }
    fn stats(
        &self,
        _: &str,
        _: Input<'_>,
        _: Input<'_>,
        _: Option<Input<'_>>,
    ) -> Result<ops::StatSums> {
        match *self {}
    }
    fn kth_largest_abs(
        &self,
        _: &str,
        _: Input<'_>,
        _: Option<Input<'_>>,
        _: usize,
    ) -> Result<u32> {
        match *self {}
    }
    fn lowrank(
        &self,
        _: &str,
        _: Input<'_>,
        _: Input<'_>,
        _: Input<'_>,
        _: [usize; 3],
        _: f32,
        _: &mut [u8],
        _: DType,
    ) -> Result<()> {
        match *self {}
    }
}

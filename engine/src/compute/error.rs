//! Errors of the compute engine.

use crate::DType;

/// What can go wrong choosing a device or running a kernel. Variants about
/// data name the tensor involved.
#[derive(Debug, thiserror::Error)]
pub enum ComputeError {
    /// The GPU was asked for but this build has no GPU support.
    #[error("not compiled with GPU support (rebuild with the `gpu` feature)")]
    NotCompiled,
    /// The GPU was asked for (or required) but none could be opened.
    #[error("no GPU adapter: {reason}")]
    NoAdapter {
        /// Why none was usable.
        reason: String,
    },
    /// A device name that is not `auto`, `gpu` or `cpu`.
    #[error("unknown device `{0}` (expected auto, gpu or cpu)")]
    UnknownDevice(String),
    /// Inputs whose sizes, dtypes or parameters do not fit together.
    #[error("tensor `{tensor}`: {detail}")]
    Invalid {
        /// The tensor involved.
        tensor: String,
        /// What does not fit.
        detail: String,
    },
    /// A dtype the kernels do not handle (they take F32, F16 and BF16).
    #[error("tensor `{tensor}`: {dtype} is not supported by the compute kernels (F32, F16, BF16)")]
    DType {
        /// The tensor involved.
        tensor: String,
        /// Its dtype.
        dtype: DType,
    },
    /// The GPU failed while running a kernel on a tensor.
    #[error("tensor `{tensor}`: GPU error: {detail}")]
    Gpu {
        /// The tensor involved.
        tensor: String,
        /// wgpu's description.
        detail: String,
    },
    /// A shader failed to compile into a pipeline.
    #[error("shader {shader}::{entry}: {detail}")]
    Shader {
        /// The shader module.
        shader: &'static str,
        /// The entry point.
        entry: &'static str,
        /// The compiler's message.
        detail: String,
    },
}

/// Results of the compute engine.
pub type Result<T, E = ComputeError> = std::result::Result<T, E>;

pub(crate) fn invalid(tensor: &str, detail: impl Into<String>) -> ComputeError {
    ComputeError::Invalid {
        tensor: tensor.to_owned(),
        detail: detail.into(),
    }
}

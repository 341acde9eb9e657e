//! theta-engine: the tensor side of git-theta.
//!
//! It reads and writes checkpoints and does the arithmetic on them; it knows
//! nothing of git or of the command line.
//!
//! - [`DType`], [`TensorInfo`], [`TensorView`]: what a tensor is.
//! - [`safetensors`]: zero-copy reading ([`safetensors::SafetensorsFile`],
//!   sharded folders) and streaming, byte-exact writing.
//! - [`checkpoint`]: format-independent access ([`checkpoint::open`]) behind
//!   the [`checkpoint::CheckpointFormat`] registry.
//! - [`compute`]: merge, diff and low-rank kernels on the CPU or a GPU.
//! - [`convert`]: F64/F32/F16/BF16 conversions, vectorised and parallel.
//! - [`merge`]: mergekit configurations, parameters and method specs.
//! - [`synth`]: deterministic Llama-shaped models for examples and benches.
//! - [`io`]: atomic file writes.
//! - [`Error`]: every error names the file and tensor involved.

pub mod checkpoint;
pub mod compute;
pub mod convert;
mod dtype;
mod error;
pub mod io;
pub mod merge;
pub mod safetensors;
pub mod synth;
mod tensor;

pub use dtype::{DType, UnknownDType, parse_user_dtype};
pub use error::{Error, FormatProblem, Result, ShardProblem};
pub use tensor::{Metadata, TensorInfo, TensorView};

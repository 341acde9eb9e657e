//! The safetensors format: a little-endian u64 header length, a JSON header
//! (`{"name": {"dtype", "shape", "data_offsets"}, "__metadata__": {...}}`),
//! then the tensors' bytes, which tile the data section exactly.
//!
//! [`SafetensorsFile`] reads a file through a memory map; [`HeaderPlan`] and
//! [`SafetensorsWriter`] write one tensor at a time; [`ShardedSafetensors`]
//! and [`ShardedWriter`] do the same for Hugging Face sharded folders.

mod file;
pub mod header;
mod sharded;
mod writer;

pub use file::SafetensorsFile;
pub use header::MAX_HEADER_LEN;
pub use sharded::{INDEX_SUFFIX, ShardIndex, ShardPlan, ShardedSafetensors, ShardedWriter};
pub use writer::{HeaderPlan, SafetensorsWriter};

//! theta-shaders: git-theta's WGSL compute kernels and their registry.
//!
//! Each [`Shader`] is one kernel file from `wgsl/` with the shared prelude
//! (`wgsl/common.wgsl`: dtype decoding and encoding, the 2-D dispatch index,
//! the counter-based random generator) prepended, and for the elementwise
//! kernels the shared output store (`wgsl/store.wgsl`). [`ALL`] lists every shader;
//! a test validates each with naga and fails if a file on disk is missing
//! from the registry.
//!
//! The kernels use no optional WGSL capability: F16 and BF16 are unpacked
//! from `u32` words with integer bit operations, so any adapter runs them.

/// One compute shader module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shader {
    /// Short name, used in pipeline cache keys and error messages.
    pub name: &'static str,
    /// The files (under `wgsl/`) the source is made of, in order: the
    /// prelude, shared pieces such as `store.wgsl`, then the kernel.
    pub files: &'static [&'static str],
    /// The full WGSL source: prelude plus kernel.
    pub source: &'static str,
    /// Its entry points.
    pub entries: &'static [&'static str],
}

macro_rules! shader {
    ($name:literal, [$($file:literal),+], [$($entry:literal),+]) => {
        Shader {
            name: $name,
            files: &["common.wgsl", $($file),+],
            source: concat!(
                include_str!("../wgsl/common.wgsl"),
                $(include_str!(concat!("../wgsl/", $file))),+
            ),
            entries: &[$($entry),+],
        }
    };
}

/// Weighted sums, task arithmetic, TIES and DARE.
pub const MERGE: Shader = shader!("merge", ["store.wgsl", "merge.wgsl"], ["merge"]);
/// Fused statistics over a pair of tensors.
pub const STATS: Shader = shader!("stats", ["stats.wgsl"], ["stats"]);
/// Radix-select histogram for TIES' magnitude trim.
pub const SELECT: Shader = shader!("select", ["select.wgsl"], ["histogram"]);
/// `W + s·B·A`.
pub const LOWRANK: Shader = shader!(
    "lowrank",
    ["store.wgsl", "lowrank.wgsl"],
    ["lowrank", "lowrank_tiled"]
);

/// Every shader, for validation and for warming the pipeline cache.
pub const ALL: &[Shader] = &[MERGE, STATS, SELECT, LOWRANK];

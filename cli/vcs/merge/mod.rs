//! `git merge` of tracked checkpoints: the three-way merge of manifests that
//! the merge driver (`merge.theta.driver`) and `git theta mergetool` run.
//! User documentation and the `.theta.toml` format: `docs/git-merge.md`.
//!
//! - [`three_way`]: tensor by tensor against the base; conflicts.
//! - [`policy`]: which strategy each tensor gets (`.theta.toml`, overrides).
//! - [`strategy`]: the strategies (ours, theirs, average, ties, ...).
//! - [`prompt`]: `mergetool`'s questions, conflict by conflict.

pub mod policy;
pub mod prompt;
pub mod strategy;
pub mod three_way;

pub use policy::Policy;
pub use three_way::{Conflict, Context, Merged, Summary, merge};

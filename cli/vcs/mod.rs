//! Versioning checkpoints in git: the manifest git stores for a tracked
//! checkpoint, the object store (Git LFS's layout), and the conversions and
//! protocols between them.
//!
//! - [`manifest`]: the on-disk format (spec: `docs/manifest.md`).
//! - [`store`]: content-addressed objects under `.git/lfs/objects`.
//! - [`codec`]: how an object encodes its bytes.
//! - [`update`] / [`lowrank`]: update kinds (dense, sparse, low-rank, IA3)
//!   and [`choose`], which picks one for each changed tensor at `git add`.
//! - [`compare`]: which tensors differ between two manifests.
//! - [`diff`] / [`diff_sums`] / [`diff_render`] / [`diff_html`]: how far each tensor moved,
//!   printed for people, `--stat`, JSON and HTML.
//! - [`clean`] / [`smudge`]: checkpoint → manifest + objects and back.
//! - [`pktline`] / [`filter`]: git's long-running filter protocol.
//! - [`transport`] / [`hooks`]: pushing and fetching objects through git-lfs.
//! - [`merge`]: three-way merges of manifests (`git merge`'s driver).
//! - [`git`]: running git.

pub mod choose;
pub mod clean;
pub mod codec;
pub mod compare;
pub mod diff;
pub mod diff_html;
pub mod diff_render;
pub mod diff_sums;
pub mod filter;
pub mod git;
pub mod hooks;
pub mod lowrank;
pub mod manifest;
pub mod merge;
pub mod peft;
pub mod pktline;
pub mod smudge;
pub mod store;
pub mod transport;
pub mod update;
pub mod verified;

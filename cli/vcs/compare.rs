//! Tensor-by-tensor comparison of two manifests, from object ids alone
//! (no tensor bytes are read).

use std::collections::HashMap;

use super::manifest::{FileFormat, Manifest};

/// How a tensor differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// Only in the new version.
    Added,
    /// Only in the old version.
    Removed,
    /// Same dtype and shape, different bytes.
    Modified,
    /// Different shape or dtype.
    Reshaped,
}

impl ChangeKind {
    /// A short label.
    pub fn label(self) -> &'static str {
        match self {
            ChangeKind::Added => "added",
            ChangeKind::Removed => "removed",
            ChangeKind::Modified => "modified",
            ChangeKind::Reshaped => "reshaped",
        }
    }
}

/// One tensor that differs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The tensor.
    pub name: String,
    /// How.
    pub kind: ChangeKind,
}

/// The tensors that differ from `old` to `new`: in `new`'s order, then the
/// removed ones in `old`'s order. Opaque files differ as a whole (a single
/// change named `<file>`).
pub fn compare(old: &Manifest, new: &Manifest) -> Vec<Change> {
    if old.head.format == FileFormat::Opaque || new.head.format == FileFormat::Opaque {
        return if old.head.objects == new.head.objects && old.head.format == new.head.format {
            vec![]
        } else {
            vec![Change {
                name: "<file>".into(),
                kind: ChangeKind::Modified,
            }]
        };
    }
    let by_name: HashMap<&str, _> = old.tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut out = Vec::new();
    for t in &new.tensors {
        let kind = match by_name.get(t.name.as_str()) {
            None => Some(ChangeKind::Added),
            Some(o) if o.dtype != t.dtype || o.shape != t.shape => Some(ChangeKind::Reshaped),
            Some(o) if !o.same_contents(t) => Some(ChangeKind::Modified),
            Some(_) => None,
        };
        if let Some(kind) = kind {
            out.push(Change {
                name: t.name.clone(),
                kind,
            });
        }
    }
    let new_names: std::collections::HashSet<&str> =
        new.tensors.iter().map(|t| t.name.as_str()).collect();
    for t in &old.tensors {
        if !new_names.contains(t.name.as_str()) {
            out.push(Change {
                name: t.name.clone(),
                kind: ChangeKind::Removed,
            });
        }
    }
    out
}

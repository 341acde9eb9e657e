//! Diffing two versions of a checkpoint tensor by tensor: which tensors were
//! added, removed, reshaped or retyped, and for each modified one how far it
//! moved (relative change, cosine, max |Δ|, share of elements changed, ‖Δ‖),
//! summed per layer and in total. Rendered by [`super::diff_render`].
//!
//! A version is a manifest whose tensors are read from the object store, or
//! a checkpoint in the working tree, hashed without storing (the clean path
//! with [`DryRun`]) and read through a memory map. Tensors whose objects are
//! the same on both sides are skipped without reading a byte; the others are
//! read one tensor at a time (through [`smudge::read_tensor`] for stored
//! ones: no file is rebuilt) and reduced by [`Device::diff_stats`].

use std::collections::BTreeMap;
use std::io::BufReader;
use std::path::Path;

use rayon::prelude::*;
use serde::Serialize;
use theta_engine::DType;
use theta_engine::compute::Device;
use theta_engine::merge::layer_index;
use theta_engine::safetensors::SafetensorsFile;

use super::clean::{CleanOptions, clean};
use super::diff_sums::{Sums, aligned, sums};
use super::manifest::{FileFormat, Manifest, TensorEntry};
use super::smudge::{self, Fetcher, Piece, SmudgeError};
use super::store::{DryRun, Store};

/// Why a diff could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    /// A stored tensor could not be read (missing or corrupt object, ...).
    #[error(transparent)]
    Object(#[from] SmudgeError),
    /// The working-tree checkpoint could not be read.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The compute engine refused a tensor.
    #[error("tensor `{tensor}`: {message}")]
    Compute {
        /// The tensor.
        tensor: String,
        /// What went wrong.
        message: String,
    },
}

/// Where a version's tensor bytes come from.
enum Source<'a> {
    /// Objects in the local store.
    Store(&'a Store),
    /// A checkpoint file, memory-mapped.
    File(Box<SafetensorsFile>),
    /// A file that is not a checkpoint: compared by object ids only.
    Opaque,
}

/// One side of a diff: a manifest and where its tensors' bytes are.
pub struct Version<'a> {
    /// The tensors (from the stored manifest, or computed from the file).
    pub manifest: Manifest,
    source: Source<'a>,
}

impl<'a> Version<'a> {
    /// A stored version: tensors are read from `store`.
    pub fn stored(manifest: Manifest, store: &'a Store) -> Version<'a> {
        Version {
            manifest,
            source: Source::Store(store),
        }
    }

    /// A checkpoint file (the working tree, or a file git handed a driver):
    /// its object ids are computed as `git add` would with `options`, storing
    /// nothing, and its tensors are read through a memory map.
    pub fn file(path: &Path, options: &CleanOptions) -> Result<Version<'static>, DiffError> {
        let err = |message: String| DiffError::File {
            path: path.display().to_string(),
            message,
        };
        let f = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
        let mut bytes = Vec::new();
        // Only the object ids are compared: no statistics.
        let options = CleanOptions {
            stats: false,
            ..options.clone()
        };
        clean(
            &mut BufReader::with_capacity(1 << 20, f),
            &mut bytes,
            &DryRun,
            &options,
        )
        .map_err(|e| err(e.to_string()))?;
        let manifest = Manifest::parse(&bytes).map_err(|e| err(e.to_string()))?;
        let source = match manifest.head.format {
            FileFormat::Safetensors => Source::File(Box::new(
                SafetensorsFile::open(path).map_err(|e| err(e.to_string()))?,
            )),
            FileFormat::Opaque => Source::Opaque,
        };
        Ok(Version { manifest, source })
    }

    /// A file that is not a checkpoint (a plain blob), compared as a whole
    /// by its git blob id `id`.
    pub fn not_checkpoint(id: &str) -> Version<'static> {
        let manifest = Manifest {
            head: super::manifest::Head {
                git_theta_manifest: super::manifest::VERSION,
                format: FileFormat::Opaque,
                size: 0,
                header: None,
                objects: vec![super::manifest::ObjectRef {
                    oid: id.to_owned(),
                    size: 0,
                }],
                tensors: 0,
            },
            tensors: vec![],
        };
        Version {
            manifest,
            source: Source::Opaque,
        }
    }

    /// The bytes of tensor `t` of this version, mapped, not copied.
    fn held(&self, t: &TensorEntry) -> Result<Held<'_>, DiffError> {
        match &self.source {
            Source::Store(store) => Ok(Held::Pieces(smudge::tensor_pieces(t, store)?)),
            Source::File(file) => file
                .get(&t.name)
                .map(|v| Held::Slice(v.data))
                .ok_or_else(|| DiffError::File {
                    path: file.path().display().to_string(),
                    message: format!("tensor `{}` vanished from the file", t.name),
                }),
            Source::Opaque => Err(DiffError::File {
                path: String::new(),
                message: format!("tensor `{}` of a file that is not a checkpoint", t.name),
            }),
        }
    }
}

/// A tensor's bytes as one side holds them: stored pieces, or a slice of a
/// mapped file.
enum Held<'v> {
    Pieces(Vec<Piece>),
    Slice(&'v [u8]),
}

impl Held<'_> {
    fn segments(&self) -> Vec<&[u8]> {
        match self {
            Held::Pieces(p) => p.iter().map(|p| &p[..]).collect(),
            Held::Slice(s) => vec![s],
        }
    }
}

/// How a tensor differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// Only in the new version.
    Added,
    /// Only in the old version.
    Removed,
    /// Another shape (the dtype may differ too).
    Reshaped,
    /// Same shape, another dtype.
    Retyped,
    /// Same dtype and shape, other values.
    Modified,
}

impl Change {
    /// The word printed and written in JSON.
    pub fn label(self) -> &'static str {
        match self {
            Change::Added => "added",
            Change::Removed => "removed",
            Change::Reshaped => "reshaped",
            Change::Retyped => "retyped",
            Change::Modified => "modified",
        }
    }
}

/// A tensor's dtype and shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Layout {
    /// Safetensors dtype name.
    pub dtype: String,
    /// Dimensions.
    pub shape: Vec<u64>,
}

impl Layout {
    fn of(t: &TensorEntry) -> Layout {
        Layout {
            dtype: t.dtype.clone(),
            shape: t.shape.clone(),
        }
    }

    /// Number of elements.
    pub fn numel(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// How far a modified tensor moved. Norm-based fields are `None` for
/// integer and 8-bit float tensors, where only changed elements are counted.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Stats {
    /// Elements.
    pub numel: u64,
    /// Elements whose value changed (bitwise).
    pub changed: u64,
    /// `changed / numel`.
    pub changed_fraction: f64,
    /// ‖new − old‖ / ‖old‖ (infinite when old is zero and new is not).
    pub relative_change: Option<f64>,
    /// cos(old, new) (0 when either is zero).
    pub cosine: Option<f64>,
    /// Largest finite |new − old|.
    pub max_abs_diff: Option<f64>,
    /// ‖new − old‖₂.
    pub norm_diff: Option<f64>,
    /// ‖old‖₂.
    pub norm_old: Option<f64>,
    /// ‖new‖₂.
    pub norm_new: Option<f64>,
}

/// One tensor that differs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TensorDiff {
    /// Its name.
    pub name: String,
    /// How it differs.
    pub change: Change,
    /// Its layer index (`layers.N.`, `h.N.`, ...), if it has one.
    pub layer: Option<u64>,
    /// Before (absent when added).
    pub old: Option<Layout>,
    /// After (absent when removed).
    pub new: Option<Layout>,
    /// For modified tensors.
    pub stats: Option<Stats>,
}

/// Modified tensors of one layer (or of none), summed.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    /// The layer index; `None`: tensors outside numbered layers (embeddings,
    /// final norm, head), or the total.
    pub layer: Option<u64>,
    /// Tensors modified.
    pub modified: u64,
    /// Tensors added, removed, reshaped or retyped.
    pub other_changes: u64,
    /// Elements of the modified tensors.
    pub numel: u64,
    /// Elements that changed.
    pub changed: u64,
    /// √Σ‖Δ‖² over the modified tensors with norms.
    pub norm_diff: f64,
    /// √Σ‖old‖² over the same tensors.
    pub norm_old: f64,
    /// `norm_diff / norm_old` (`None` when there is nothing to compare).
    pub relative_change: Option<f64>,
}

impl Summary {
    fn add(&mut self, t: &TensorDiff) {
        let Some(s) = &t.stats else {
            self.other_changes += 1;
            return;
        };
        self.modified += 1;
        self.numel += s.numel;
        self.changed += s.changed;
        if let (Some(d), Some(o)) = (s.norm_diff, s.norm_old) {
            self.norm_diff = (self.norm_diff.powi(2) + d * d).sqrt();
            self.norm_old = (self.norm_old.powi(2) + o * o).sqrt();
        }
    }

    fn finish(mut self) -> Summary {
        self.relative_change = if self.norm_old > 0.0 {
            Some(self.norm_diff / self.norm_old)
        } else if self.norm_diff > 0.0 {
            Some(f64::INFINITY)
        } else if self.modified > 0 {
            Some(0.0)
        } else {
            None
        };
        self
    }
}

/// What happened to a file as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileStatus {
    /// Present on both sides.
    Modified,
    /// Only on the new side.
    Added,
    /// Only on the old side.
    Deleted,
    /// Not a safetensors checkpoint on one side: compared as a whole.
    NotCheckpoint,
}

/// The diff of one file.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FileDiff {
    /// Path in the repository.
    pub path: String,
    /// What happened to it.
    pub status: FileStatus,
    /// Tensors on the old side.
    pub tensors_old: u64,
    /// Tensors on the new side.
    pub tensors_new: u64,
    /// Tensors present on both sides with the same contents (not listed).
    pub unchanged: u64,
    /// The tensors that differ, in the requested order.
    pub tensors: Vec<TensorDiff>,
    /// Per layer, in layer order; tensors outside layers last.
    pub layers: Vec<Summary>,
    /// Everything.
    pub total: Summary,
}

impl FileDiff {
    /// Whether nothing differs.
    pub fn is_empty(&self) -> bool {
        self.status == FileStatus::Modified && self.tensors.is_empty()
    }
}

/// The order tensors are listed in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Order {
    /// By name, numbers compared as numbers (`layers.2` before `layers.10`).
    #[default]
    Name,
    /// Largest relative change first; added, removed and reshaped first of all.
    Change,
}

/// Diffs `old` against `new` (`None`: the file is absent on that side).
/// `fetcher` gets the objects of modified tensors missing locally.
pub fn diff(
    path: &str,
    old: Option<&Version<'_>>,
    new: Option<&Version<'_>>,
    device: &Device,
    order: Order,
    fetcher: &mut dyn Fetcher,
) -> Result<FileDiff, DiffError> {
    let empty = Manifest {
        head: super::manifest::Head {
            git_theta_manifest: super::manifest::VERSION,
            format: FileFormat::Safetensors,
            size: 0,
            header: None,
            objects: vec![],
            tensors: 0,
        },
        tensors: vec![],
    };
    let om = old.map_or(&empty, |v| &v.manifest);
    let nm = new.map_or(&empty, |v| &v.manifest);
    let status = match (old, new) {
        (None, _) => FileStatus::Added,
        (_, None) => FileStatus::Deleted,
        _ if om.head.format == FileFormat::Opaque || nm.head.format == FileFormat::Opaque => {
            if om.head.format == nm.head.format && om.head.objects == nm.head.objects {
                // Equal (non-checkpoint) files: nothing to list.
                FileStatus::Modified
            } else {
                FileStatus::NotCheckpoint
            }
        }
        _ => FileStatus::Modified,
    };
    let mut out = FileDiff {
        path: path.to_owned(),
        status,
        tensors_old: om.tensors.len() as u64,
        tensors_new: nm.tensors.len() as u64,
        unchanged: 0,
        tensors: vec![],
        layers: vec![],
        total: Summary::default(),
    };
    if status == FileStatus::NotCheckpoint {
        return Ok(out);
    }
    let old_by_name: BTreeMap<&str, &TensorEntry> =
        om.tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    let new_names: std::collections::HashSet<&str> =
        nm.tensors.iter().map(|t| t.name.as_str()).collect();
    let mut modified = Vec::new();
    for t in &nm.tensors {
        let entry = |change, old: Option<&TensorEntry>| TensorDiff {
            name: t.name.clone(),
            change,
            layer: layer_index(&t.name),
            old: old.map(Layout::of),
            new: Some(Layout::of(t)),
            stats: None,
        };
        match old_by_name.get(t.name.as_str()) {
            None => out.tensors.push(entry(Change::Added, None)),
            Some(o) if o.shape != t.shape => out.tensors.push(entry(Change::Reshaped, Some(o))),
            Some(o) if o.dtype != t.dtype => out.tensors.push(entry(Change::Retyped, Some(o))),
            Some(o) if o.same_contents(t) => out.unchanged += 1,
            Some(o) => modified.push((*o, t)),
        }
    }
    for t in om
        .tensors
        .iter()
        .filter(|t| !new_names.contains(t.name.as_str()))
    {
        out.tensors.push(TensorDiff {
            name: t.name.clone(),
            change: Change::Removed,
            layer: layer_index(&t.name),
            old: Some(Layout::of(t)),
            new: None,
            stats: None,
        });
    }
    if let (Some(o), Some(n)) = (old, new) {
        prefetch(o, modified.iter().map(|m| m.0), fetcher)?;
        prefetch(n, modified.iter().map(|m| m.1), fetcher)?;
        let held = modified
            .par_iter()
            .map(|(a, b)| {
                let (x, y) = rayon::join(|| o.held(a), || n.held(b));
                Ok((x?, y?))
            })
            .collect::<Result<Vec<_>, DiffError>>()?;
        let mut jobs = Vec::new();
        for (k, ((a, b), (x, y))) in modified.iter().zip(&held).enumerate() {
            let dtype = dtype_of(b)?;
            let (sx, sy) = (x.segments(), y.segments());
            let (lx, ly) = (total(&sx), total(&sy));
            if lx != ly || lx as u64 != b.size || a.size != b.size {
                return Err(DiffError::Compute {
                    tensor: b.name.clone(),
                    message: format!(
                        "{lx} bytes before and {ly} after where {} were expected",
                        b.size
                    ),
                });
            }
            jobs.extend(
                aligned(&sx, &sy, dtype.size())
                    .into_iter()
                    .map(|(p, q)| (k, dtype, p, q)),
            );
        }
        let parts = jobs
            .par_iter()
            .map(|&(k, dtype, p, q)| Ok((k, sums(device, &modified[k].1.name, dtype, p, q)?)))
            .collect::<Result<Vec<_>, DiffError>>()?;
        let mut per = vec![Sums::default(); modified.len()];
        for (k, s) in parts {
            per[k].add(&s);
        }
        for ((a, b), s) in modified.iter().zip(per) {
            out.tensors.push(TensorDiff {
                name: b.name.clone(),
                change: Change::Modified,
                layer: layer_index(&b.name),
                old: Some(Layout::of(a)),
                new: Some(Layout::of(b)),
                stats: Some(s.stats(Layout::of(b).numel())),
            });
        }
    }
    sort(&mut out.tensors, order);
    let mut layers: BTreeMap<(bool, u64), Summary> = BTreeMap::new();
    let mut total = Summary::default();
    for t in &out.tensors {
        let key = (t.layer.is_none(), t.layer.unwrap_or(0));
        layers
            .entry(key)
            .or_insert_with(|| Summary {
                layer: t.layer,
                ..Summary::default()
            })
            .add(t);
        total.add(t);
    }
    out.layers = layers.into_values().map(Summary::finish).collect();
    out.total = total.finish();
    Ok(out)
}

/// Makes the objects of `tensors` local (fetching them in one batch), or
/// names the first missing one.
fn prefetch<'t>(
    v: &Version<'_>,
    tensors: impl Iterator<Item = &'t TensorEntry>,
    fetcher: &mut dyn Fetcher,
) -> Result<(), DiffError> {
    let Source::Store(store) = v.source else {
        return Ok(());
    };
    let tensors: Vec<TensorEntry> = tensors.cloned().collect();
    if tensors.is_empty() {
        return Ok(());
    }
    let mut wanted = v.manifest.clone();
    wanted.head.header = None;
    wanted.head.tensors = tensors.len() as u64;
    wanted.tensors = tensors;
    Ok(smudge::ensure_present(&wanted, store, fetcher)?)
}

fn total(segments: &[&[u8]]) -> usize {
    segments.iter().map(|s| s.len()).sum()
}

fn dtype_of(t: &TensorEntry) -> Result<DType, DiffError> {
    t.dtype
        .parse()
        .map_err(|e: theta_engine::UnknownDType| DiffError::Compute {
            tensor: t.name.clone(),
            message: e.to_string(),
        })
}

fn sort(tensors: &mut [TensorDiff], order: Order) {
    match order {
        Order::Name => tensors.sort_by(|a, b| natural_cmp(&a.name, &b.name)),
        Order::Change => tensors.sort_by(|a, b| {
            let key = |t: &TensorDiff| {
                t.stats.as_ref().map_or(f64::INFINITY, |s| {
                    s.relative_change.unwrap_or(s.changed_fraction)
                })
            };
            (a.change != Change::Modified)
                .cmp(&(b.change != Change::Modified))
                .reverse()
                .then(key(b).total_cmp(&key(a)))
                .then_with(|| natural_cmp(&a.name, &b.name))
        }),
    }
}

/// Compares names with runs of digits compared as numbers.
pub fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let (mut x, mut y) = (a.as_bytes(), b.as_bytes());
    loop {
        match (x.first(), y.first()) {
            (None, None) => return std::cmp::Ordering::Equal,
            (None, _) => return std::cmp::Ordering::Less,
            (_, None) => return std::cmp::Ordering::Greater,
            (Some(p), Some(q)) if p.is_ascii_digit() && q.is_ascii_digit() => {
                let dx = x.iter().take_while(|c| c.is_ascii_digit()).count();
                let dy = y.iter().take_while(|c| c.is_ascii_digit()).count();
                let (nx, ny) = (trim_zeros(&x[..dx]), trim_zeros(&y[..dy]));
                let ord = nx.len().cmp(&ny.len()).then(nx.cmp(ny));
                if ord != std::cmp::Ordering::Equal {
                    return ord;
                }
                x = &x[dx..];
                y = &y[dy..];
            }
            (Some(p), Some(q)) if p != q => return p.cmp(q),
            _ => {
                x = &x[1..];
                y = &y[1..];
            }
        }
    }
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let z = d.iter().take_while(|&&c| c == b'0').count();
    &d[z..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vcs::smudge::NoFetch;
    use theta_engine::TensorInfo;
    use theta_engine::safetensors::HeaderPlan;

    /// A checkpoint of `w` (F64 [4]), `n` (I32 [3]) and `e` (F32 [0]).
    fn checkpoint(w: [f64; 4], n: [i32; 3]) -> Vec<u8> {
        let tensors = [
            TensorInfo::new("layers.1.w", DType::F64, [4]),
            TensorInfo::new("n", DType::I32, [3]),
            TensorInfo::new("e", DType::F32, [0]),
        ];
        let plan = HeaderPlan::new(&tensors, &Vec::new()).expect("plan");
        let mut out = (plan.header_bytes().len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(plan.header_bytes());
        out.extend(w.iter().flat_map(|x| x.to_le_bytes()));
        out.extend(n.iter().flat_map(|x| x.to_le_bytes()));
        out
    }

    fn stored<'s>(file: &[u8], store: &'s Store) -> Version<'s> {
        let mut m = Vec::new();
        clean(&mut &file[..], &mut m, store, &CleanOptions::default()).expect("clean");
        Version::stored(Manifest::parse(&m).expect("manifest"), store)
    }

    #[test]
    fn f64_and_integer_tensors_and_layer_sums() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path().join("lfs"));
        // 1e-12 is lost in f32 but is still a changed element.
        let a = stored(&checkpoint([3.0, 4.0, 0.0, 1.0], [1, 2, 3]), &store);
        let b = stored(&checkpoint([3.0, 4.0, 1.0, 1.0 + 1e-12], [1, 5, 6]), &store);
        let d = diff(
            "x",
            Some(&a),
            Some(&b),
            &Device::Cpu,
            Order::Name,
            &mut NoFetch,
        )
        .expect("diff");
        assert_eq!(d.unchanged, 1, "the empty tensor");
        let w = d
            .tensors
            .iter()
            .find(|t| t.name == "layers.1.w")
            .expect("w");
        let s = w.stats.as_ref().expect("stats");
        assert_eq!((s.numel, s.changed), (4, 2));
        let rel = s.relative_change.expect("rel");
        assert!((rel - 1.0 / 26f64.sqrt()).abs() < 1e-6, "{rel}");
        let n = d.tensors.iter().find(|t| t.name == "n").expect("n");
        let s = n.stats.as_ref().expect("stats");
        assert_eq!((s.changed, s.relative_change), (2, None));
        assert_eq!(d.layers.len(), 2);
        assert_eq!(d.layers[0].layer, Some(1));
        assert_eq!(d.total.modified, 2);
        assert!((d.total.relative_change.expect("total") - rel).abs() < 1e-9);
        // The same version on both sides: nothing to list.
        let same = diff(
            "x",
            Some(&a),
            Some(&a),
            &Device::Cpu,
            Order::Name,
            &mut NoFetch,
        )
        .expect("diff");
        assert!(same.is_empty());
    }

    #[test]
    fn natural_order() {
        let mut v = vec![
            "layers.10.w",
            "layers.2.w",
            "embed",
            "layers.2.b",
            "layers.02.c",
        ];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            v,
            [
                "embed",
                "layers.2.b",
                "layers.02.c",
                "layers.2.w",
                "layers.10.w"
            ]
        );
    }
}

//! The manifest: the small text blob git stores in place of a tracked
//! checkpoint. Specified in `docs/manifest.md`.
//!
//! It is JSON Lines: a first line ([`Head`]) saying what the file is and how
//! to rebuild its header, then one line per tensor ([`TensorEntry`]) in the
//! order of the tensors' bytes in the file. Serialization is deterministic
//! (fixed field order, no maps), so cleaning the same file twice gives the
//! same blob and `git status` stays clean.

use serde::{Deserialize, Serialize};

/// The newest version this build reads and writes. Writers use the lowest
/// version that can express a manifest ([`Manifest::required_version`]):
/// a manifest of dense tensors only is version 1, byte for byte what earlier
/// builds wrote, so upgrading git-theta leaves `git status` clean; one with
/// update chains (`base`) is version 2, which version-1 readers refuse with a
/// clear message rather than misread.
pub const VERSION: u32 = 2;

/// The version of manifests that hold dense tensors only.
pub const VERSION_DENSE: u32 = 1;

/// The bytes every manifest begins with. A safetensors file cannot begin
/// with them (they would claim a header of more than 100 MB).
pub const MAGIC: &[u8] = b"{\"git_theta_manifest\":";

/// Largest manifest accepted when reading (a hostile blob cannot make us
/// allocate more).
pub const MAX_LEN: usize = 256 << 20;

/// What the tracked file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    /// A safetensors checkpoint, stored tensor by tensor.
    Safetensors,
    /// A file git-theta could not read as a checkpoint, stored as opaque
    /// chunks so that it still round-trips byte for byte.
    Opaque,
}

/// A stored object: its id (SHA-256 of its bytes) and size.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectRef {
    /// Lowercase hex SHA-256 of the object's bytes.
    pub oid: String,
    /// Size of the object in bytes.
    pub size: u64,
}

/// The first line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    /// Format version ([`VERSION`]).
    pub git_theta_manifest: u32,
    /// What the file is.
    pub format: FileFormat,
    /// Size of the checked-out file in bytes.
    pub size: u64,
    /// Safetensors: the exact JSON header bytes (padding included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<ObjectRef>,
    /// Opaque: the file's bytes, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<ObjectRef>,
    /// Number of tensor lines that follow.
    pub tensors: u64,
}

/// The update kind of a dense step: its objects are the tensor's bytes.
/// Other kinds are registered in [`super::update`].
pub const DENSE: &str = "dense";

/// An earlier step of a tensor's update chain: an update kind (a
/// [`super::update`] name) and its objects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// The update kind.
    pub update: String,
    /// Its objects.
    pub objects: Vec<ObjectRef>,
}

/// Summary statistics of a floating-point tensor, over its finite elements.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stats {
    /// Smallest finite element.
    pub min: f32,
    /// Largest finite element.
    pub max: f32,
    /// Mean of the finite elements.
    pub mean: f32,
    /// Population standard deviation of the finite elements.
    pub std: f32,
    /// Number of NaN and infinite elements.
    pub nonfinite: u64,
}

/// One tensor line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorEntry {
    /// Name in the checkpoint.
    pub name: String,
    /// Safetensors dtype name (`BF16`, `F32`, ...).
    pub dtype: String,
    /// Dimensions, outermost first.
    pub shape: Vec<u64>,
    /// Size of the tensor's bytes.
    pub size: u64,
    /// How the objects make the tensor from the chain in `base`: a
    /// [`super::update`] name (`dense`, `sparse`, `low-rank`, `ia3`).
    pub update: String,
    /// How each object is encoded (a [`super::codec`] name).
    pub encoding: String,
    /// Rows (first dimension) per object when the tensor is split in
    /// several; the last object holds the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_rows: Option<u64>,
    /// The objects, in order.
    pub objects: Vec<ObjectRef>,
    /// The steps this entry's update applies to, oldest first: the first is
    /// dense, each later one applies to the bytes the earlier ones make.
    /// Empty for a dense entry. They name objects, not commits, so rebase,
    /// amend and squash keep every chain readable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub base: Vec<Step>,
    /// Summary statistics (floating-point tensors with finite elements).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<Stats>,
}

impl TensorEntry {
    /// Whether `other` has the same contents (dtype, shape and objects),
    /// whatever the statistics say.
    pub fn same_contents(&self, other: &TensorEntry) -> bool {
        self.dtype == other.dtype
            && self.shape == other.shape
            && self.update == other.update
            && self.encoding == other.encoding
            && self.objects == other.objects
            && self.base == other.base
    }

    /// The whole chain, oldest first: the base steps, then this entry's own.
    pub fn steps(&self) -> impl Iterator<Item = (&str, &[ObjectRef])> {
        self.base
            .iter()
            .map(|s| (s.update.as_str(), &s.objects[..]))
            .chain(std::iter::once((self.update.as_str(), &self.objects[..])))
    }

    /// Updates on top of the dense base (0 for a dense entry).
    pub fn chain_len(&self) -> usize {
        self.base.len()
    }
}

/// A whole manifest.
#[derive(Clone, Debug, PartialEq)]
pub struct Manifest {
    /// The first line.
    pub head: Head,
    /// The tensors, in the order of their bytes in the file.
    pub tensors: Vec<TensorEntry>,
}

/// A blob that is not a manifest this build can read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not a manifest at all.
    #[error("not a git-theta manifest")]
    NotAManifest,
    /// Larger than [`MAX_LEN`].
    #[error("manifest of {0} bytes is larger than the {MAX_LEN}-byte limit")]
    TooLarge(usize),
    /// Written by a newer git-theta.
    #[error(
        "manifest version {0} is newer than this git-theta understands ({VERSION}); upgrade git-theta"
    )]
    Version(u32),
    /// A line that does not parse.
    #[error("manifest line {line}: {message}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// Whether `bytes` begin like a manifest.
pub fn looks_like_manifest(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

impl Manifest {
    /// The lowest format version that expresses this manifest: 1 when every
    /// tensor is dense, else 2.
    pub fn required_version(&self) -> u32 {
        if self
            .tensors
            .iter()
            .all(|t| t.update == DENSE && t.base.is_empty())
        {
            VERSION_DENSE
        } else {
            VERSION
        }
    }

    /// The manifest's bytes: one JSON object per line, each ending in `\n`.
    /// The first line carries [`Manifest::required_version`], whatever
    /// `head.git_theta_manifest` says.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 * (1 + self.tensors.len()));
        let head = Head {
            git_theta_manifest: self.required_version(),
            ..self.head.clone()
        };
        // Serializing these plain structs cannot fail; non-finite floats
        // never reach here (statistics cover finite elements only).
        let _ = serde_json::to_writer(&mut out, &head);
        out.push(b'\n');
        for t in &self.tensors {
            let _ = serde_json::to_writer(&mut out, t);
            out.push(b'\n');
        }
        out
    }

    /// Parses a manifest.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        if bytes.len() > MAX_LEN {
            return Err(ManifestError::TooLarge(bytes.len()));
        }
        if !looks_like_manifest(bytes) {
            return Err(ManifestError::NotAManifest);
        }
        let mut lines = bytes
            .split(|&b| b == b'\n')
            .enumerate()
            .filter(|(_, l)| !l.is_empty());
        let bad = |line: usize, e: &dyn std::fmt::Display| ManifestError::Line {
            line: line + 1,
            message: e.to_string(),
        };
        let Some((_, first)) = lines.next() else {
            return Err(ManifestError::NotAManifest);
        };
        #[derive(Deserialize)]
        struct VersionOnly {
            git_theta_manifest: u32,
        }
        let version: VersionOnly = serde_json::from_slice::<serde_json::Value>(first)
            .and_then(serde_json::from_value)
            .map_err(|e| bad(0, &e))?;
        if !(VERSION_DENSE..=VERSION).contains(&version.git_theta_manifest) {
            return Err(ManifestError::Version(version.git_theta_manifest));
        }
        let head: Head = serde_json::from_slice(first).map_err(|e| bad(0, &e))?;
        let mut tensors = Vec::new();
        for (i, line) in lines {
            tensors.push(serde_json::from_slice::<TensorEntry>(line).map_err(|e| bad(i, &e))?);
        }
        if head.git_theta_manifest < VERSION
            && let Some(t) = tensors
                .iter()
                .find(|t| t.update != DENSE || !t.base.is_empty())
        {
            return Err(bad(
                0,
                &format!(
                    "version {} manifests hold dense tensors only, but `{}` is `{}`",
                    head.git_theta_manifest, t.name, t.update
                ),
            ));
        }
        if tensors.len() as u64 != head.tensors {
            return Err(bad(
                0,
                &format!(
                    "the first line announces {} tensors but {} follow",
                    head.tensors,
                    tensors.len()
                ),
            ));
        }
        Ok(Manifest { head, tensors })
    }

    /// Every object the manifest refers to (header first), each once, with
    /// the tensor it belongs to (`None` for the header or opaque data).
    pub fn objects(&self) -> Vec<(Option<&str>, &ObjectRef)> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        let all = self
            .head
            .header
            .iter()
            .chain(&self.head.objects)
            .map(|o| (None, o))
            .chain(self.tensors.iter().flat_map(|t| {
                t.steps()
                    .flat_map(|(_, objects)| objects)
                    .map(move |o| (Some(t.name.as_str()), o))
            }));
        for (t, o) in all {
            if seen.insert(&o.oid) {
                out.push((t, o));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_need_version_2_and_list_base_objects() {
        let mut m = sample();
        let dense = m.to_bytes();
        assert!(dense.starts_with(b"{\"git_theta_manifest\":1,"));
        let t = &mut m.tensors[0];
        t.base = vec![Step {
            update: DENSE.into(),
            objects: std::mem::take(&mut t.objects),
        }];
        t.update = "sparse".into();
        t.objects = vec![ObjectRef {
            oid: "c".repeat(64),
            size: 20,
        }];
        let bytes = m.to_bytes();
        assert!(bytes.starts_with(b"{\"git_theta_manifest\":2,"));
        let back = Manifest::parse(&bytes).expect("parse");
        assert_eq!(back.to_bytes(), bytes);
        let oids: Vec<_> = back.objects().iter().map(|(_, o)| o.oid.clone()).collect();
        assert!(oids.contains(&"b".repeat(64)), "base object listed");
        assert!(oids.contains(&"c".repeat(64)));
        // A version-1 first line cannot carry a chain.
        let text = String::from_utf8(bytes).expect("utf-8");
        let v1 = text.replacen("\"git_theta_manifest\":2", "\"git_theta_manifest\":1", 1);
        assert!(Manifest::parse(v1.as_bytes()).is_err());
    }

    fn sample() -> Manifest {
        Manifest {
            head: Head {
                git_theta_manifest: VERSION_DENSE,
                format: FileFormat::Safetensors,
                size: 1234,
                header: Some(ObjectRef {
                    oid: "a".repeat(64),
                    size: 120,
                }),
                objects: vec![],
                tensors: 1,
            },
            tensors: vec![TensorEntry {
                name: "layers.0.w".into(),
                dtype: "BF16".into(),
                shape: vec![2, 3],
                size: 12,
                update: DENSE.into(),
                encoding: "raw".into(),
                chunk_rows: None,
                objects: vec![ObjectRef {
                    oid: "b".repeat(64),
                    size: 12,
                }],
                base: vec![],
                stats: Some(Stats {
                    min: -1.5,
                    max: 2.0,
                    mean: 0.25,
                    std: 1.0,
                    nonfinite: 0,
                }),
            }],
        }
    }

    #[test]
    fn round_trips_and_is_deterministic_text() {
        let m = sample();
        let bytes = m.to_bytes();
        let text = String::from_utf8(bytes.clone()).expect("utf-8");
        assert!(text.starts_with("{\"git_theta_manifest\":1,\"format\":\"safetensors\""));
        assert_eq!(text.lines().count(), 2);
        assert_eq!(Manifest::parse(&bytes).expect("parse"), m);
        assert_eq!(Manifest::parse(&bytes).expect("parse").to_bytes(), bytes);
    }

    #[test]
    fn rejects_newer_versions_and_garbage() {
        let newer = b"{\"git_theta_manifest\":3,\"whatever\":true}\n";
        assert!(matches!(
            Manifest::parse(newer),
            Err(ManifestError::Version(3))
        ));
        assert!(matches!(
            Manifest::parse(b"\x10\0\0\0\0\0\0\0{}"),
            Err(ManifestError::NotAManifest)
        ));
        let mut truncated = sample().to_bytes();
        truncated.truncate(truncated.len() - 20);
        assert!(matches!(
            Manifest::parse(&truncated),
            Err(ManifestError::Line { line: 2, .. })
        ));
    }
}

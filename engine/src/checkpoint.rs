//! Checkpoints independent of their file format.
//!
//! A [`CheckpointFormat`] recognises and opens one kind of checkpoint; the
//! registry [`formats`] lists them, and [`open`] asks each in turn. Adding a
//! format (a plug-in, GGUF, ...) means adding one implementation to the
//! registry; nothing else matches on formats.

use std::path::{Path, PathBuf};

use crate::error::ShardProblem;
use crate::safetensors::{INDEX_SUFFIX, SafetensorsFile, ShardedSafetensors};
use crate::tensor::{Metadata, TensorInfo, TensorView};
use crate::{Error, Result};

/// One file of a checkpoint on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSummary {
    /// The file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Size of its header (for safetensors, the JSON header).
    pub header_bytes: u64,
    /// Number of tensors it holds.
    pub tensors: usize,
    /// The metadata it carries.
    pub metadata: Metadata,
}

/// An opened checkpoint: a set of named tensors with zero-copy access.
pub trait Checkpoint: Send + Sync {
    /// The path it was opened from (a file or a folder).
    fn path(&self) -> &Path;
    /// The name of its format (`"safetensors"`, `"safetensors-sharded"`).
    fn format(&self) -> &'static str;
    /// Its tensors, in storage order.
    fn tensors(&self) -> &[TensorInfo];
    /// A tensor's bytes, by name.
    fn get(&self, name: &str) -> Option<TensorView<'_>>;
    /// The files that make it up.
    fn files(&self) -> Vec<FileSummary>;
    /// Model-level metadata (a sharded index's `metadata`, a file's own).
    fn metadata(&self) -> Metadata;

    /// Lets the operating system drop this process's resident copy of a
    /// tensor's bytes once a streaming pass is done with them (they are read
    /// again from the file if needed). Does nothing by default.
    fn release(&self, name: &str) {
        let _ = name;
    }

    /// A tensor's bytes, or an error naming the checkpoint and the tensor.
    fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        self.get(name).ok_or_else(|| Error::NoSuchTensor {
            path: self.path().to_path_buf(),
            tensor: name.to_owned(),
        })
    }
}

/// A kind of checkpoint git-theta can read.
pub trait CheckpointFormat: Send + Sync {
    /// Short name, as shown to users.
    fn name(&self) -> &'static str;
    /// Whether `path` looks like this format (cheap: names, not contents).
    fn detect(&self, path: &Path) -> bool;
    /// Opens `path`.
    fn open(&self, path: &Path) -> Result<Box<dyn Checkpoint>>;
}

/// The formats known to this build, asked in order.
pub fn formats() -> &'static [&'static dyn CheckpointFormat] {
    &[&SafetensorsFormat, &ShardedSafetensorsFormat]
}

/// Opens the checkpoint at `path`: a file, or a folder holding one.
pub fn open(path: impl AsRef<Path>) -> Result<Box<dyn Checkpoint>> {
    let path = path.as_ref();
    if !path.exists() {
        let e = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder");
        return Err(Error::io(path, e));
    }
    for format in formats() {
        if format.detect(path) {
            return format.open(path);
        }
    }
    let names: Vec<&str> = formats().iter().map(|f| f.name()).collect();
    Err(Error::Shards {
        path: path.to_path_buf(),
        problem: ShardProblem::NotAModel(format!(
            "not a checkpoint git-theta can read (formats: {})",
            names.join(", ")
        )),
    })
}

/// A single `.safetensors` file, or a folder holding exactly one and no index.
struct SafetensorsFormat;

impl CheckpointFormat for SafetensorsFormat {
    fn name(&self) -> &'static str {
        "safetensors"
    }

    fn detect(&self, path: &Path) -> bool {
        if path.is_dir() {
            return find_index(path).ok().flatten().is_none() && lone_safetensors(path).is_some();
        }
        path.extension().is_some_and(|e| e == "safetensors") || sniff_safetensors(path)
    }

    fn open(&self, path: &Path) -> Result<Box<dyn Checkpoint>> {
        let file = if path.is_dir() {
            lone_safetensors(path).ok_or_else(|| Error::Shards {
                path: path.to_path_buf(),
                problem: ShardProblem::NotAModel("no .safetensors file in folder".into()),
            })?
        } else {
            path.to_path_buf()
        };
        Ok(Box::new(Single {
            root: path.to_path_buf(),
            file: SafetensorsFile::open(file)?,
        }))
    }
}

/// A folder (or index file) of a sharded Hugging Face checkpoint.
struct ShardedSafetensorsFormat;

impl CheckpointFormat for ShardedSafetensorsFormat {
    fn name(&self) -> &'static str {
        "safetensors-sharded"
    }

    fn detect(&self, path: &Path) -> bool {
        path.to_string_lossy().ends_with(INDEX_SUFFIX)
            || (path.is_dir() && find_index(path).ok().flatten().is_some())
    }

    fn open(&self, path: &Path) -> Result<Box<dyn Checkpoint>> {
        let index = if path.is_dir() {
            find_index(path)?.ok_or_else(|| Error::Shards {
                path: path.to_path_buf(),
                problem: ShardProblem::NotAModel(format!("no *{INDEX_SUFFIX} in folder")),
            })?
        } else {
            path.to_path_buf()
        };
        Ok(Box::new(Sharded {
            root: path.to_path_buf(),
            model: ShardedSafetensors::open(index)?,
        }))
    }
}

/// Whether a file of another name starts like safetensors: a plausible
/// header length followed by `{`.
fn sniff_safetensors(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 9];
    let read = std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head));
    let len = u64::from_le_bytes([
        head[0], head[1], head[2], head[3], head[4], head[5], head[6], head[7],
    ]);
    read.is_ok() && head[8] == b'{' && len <= crate::safetensors::MAX_HEADER_LEN
}

/// The folder's one `*.safetensors.index.json`; several is an error.
fn find_index(dir: &Path) -> Result<Option<PathBuf>> {
    let found = list_dir(dir, |n| n.ends_with(INDEX_SUFFIX))?;
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.into_iter().next()),
        _ => Err(Error::Shards {
            path: dir.to_path_buf(),
            problem: ShardProblem::NotAModel(format!(
                "several *{INDEX_SUFFIX} files; name the one to use"
            )),
        }),
    }
}

fn lone_safetensors(dir: &Path) -> Option<PathBuf> {
    let found = list_dir(dir, |n| n.ends_with(".safetensors")).ok()?;
    (found.len() == 1)
        .then(|| found.into_iter().next())
        .flatten()
}

fn list_dir(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        if entry.file_name().to_str().is_some_and(&keep) && entry.path().is_file() {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

fn summary(f: &SafetensorsFile) -> FileSummary {
    FileSummary {
        path: f.path().to_path_buf(),
        bytes: f.len(),
        header_bytes: f.header_bytes().len() as u64,
        tensors: f.tensors().len(),
        metadata: f.metadata().clone(),
    }
}

struct Single {
    root: PathBuf,
    file: SafetensorsFile,
}

impl Checkpoint for Single {
    fn path(&self) -> &Path {
        &self.root
    }
    fn format(&self) -> &'static str {
        "safetensors"
    }
    fn tensors(&self) -> &[TensorInfo] {
        self.file.tensors()
    }
    fn get(&self, name: &str) -> Option<TensorView<'_>> {
        self.file.get(name)
    }
    fn release(&self, name: &str) {
        if let Some(i) = self.file.tensors().iter().position(|t| t.name == name) {
            self.file.release(i);
        }
    }
    fn files(&self) -> Vec<FileSummary> {
        vec![summary(&self.file)]
    }
    fn metadata(&self) -> Metadata {
        self.file.metadata().clone()
    }
}

struct Sharded {
    root: PathBuf,
    model: ShardedSafetensors,
}

impl Checkpoint for Sharded {
    fn path(&self) -> &Path {
        &self.root
    }
    fn format(&self) -> &'static str {
        "safetensors-sharded"
    }
    fn tensors(&self) -> &[TensorInfo] {
        self.model.tensors()
    }
    fn get(&self, name: &str) -> Option<TensorView<'_>> {
        self.model.get(name)
    }
    fn release(&self, name: &str) {
        self.model.release(name);
    }
    fn files(&self) -> Vec<FileSummary> {
        self.model.shards().iter().map(summary).collect()
    }
    fn metadata(&self) -> Metadata {
        self.model
            .index()
            .metadata
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                )
            })
            .collect()
    }
}

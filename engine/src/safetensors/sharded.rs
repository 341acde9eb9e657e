//! Hugging Face sharded checkpoints: `model.safetensors.index.json` naming
//! shards `model-00001-of-0000N.safetensors`, read as one model and written
//! with a shard size chosen by the caller.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::file::SafetensorsFile;
use super::writer::{HeaderPlan, SafetensorsWriter};
use crate::error::ShardProblem;
use crate::io::write_atomic;
use crate::tensor::{Metadata, TensorInfo, TensorView};
use crate::{Error, Result};

/// Suffix of a sharded checkpoint's index file.
pub const INDEX_SUFFIX: &str = ".safetensors.index.json";

/// The JSON index of a sharded checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ShardIndex {
    /// Free-form metadata; Hugging Face writes `total_size`.
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Tensor name → shard file name.
    pub weight_map: BTreeMap<String, String>,
}

/// A sharded safetensors checkpoint, opened as one model.
#[derive(Debug)]
pub struct ShardedSafetensors {
    index_path: PathBuf,
    index: ShardIndex,
    shards: Vec<SafetensorsFile>,
    tensors: Vec<TensorInfo>,
    locate: HashMap<String, (usize, usize)>,
}

impl ShardedSafetensors {
    /// Opens the checkpoint described by the index file `index_path`, and
    /// checks that the index and the shards agree tensor for tensor.
    pub fn open(index_path: impl AsRef<Path>) -> Result<Self> {
        let index_path = index_path.as_ref().to_path_buf();
        let bad = |problem| Error::Shards {
            path: index_path.clone(),
            problem,
        };
        let text = std::fs::read(&index_path).map_err(|e| Error::io(&index_path, e))?;
        let index: ShardIndex = serde_json::from_slice(&text)
            .map_err(|e| bad(ShardProblem::BadIndex(e.to_string())))?;
        let dir = index_path.parent().unwrap_or(Path::new("."));

        // Shards in order of their names (00001, 00002, ...).
        let mut shard_names: Vec<&String> = index.weight_map.values().collect();
        shard_names.sort();
        shard_names.dedup();
        let mut shards = Vec::with_capacity(shard_names.len());
        for name in &shard_names {
            if !is_plain_file_name(name) {
                return Err(bad(ShardProblem::BadShardName {
                    shard: name.to_string(),
                }));
            }
            let path = dir.join(name);
            if !path.is_file() {
                return Err(bad(ShardProblem::MissingShard {
                    shard: name.to_string(),
                }));
            }
            shards.push(SafetensorsFile::open(&path)?);
        }

        let mut locate = HashMap::new();
        let mut tensors = Vec::with_capacity(index.weight_map.len());
        for (s, shard) in shards.iter().enumerate() {
            for (i, t) in shard.tensors().iter().enumerate() {
                let shard_name = shard_names[s];
                match index.weight_map.get(&t.name) {
                    None => {
                        let problem = ShardProblem::UnlistedTensor {
                            tensor: t.name.clone(),
                            shard: shard_name.clone(),
                        };
                        return Err(bad(problem));
                    }
                    Some(listed) if listed != shard_name => {
                        let problem = ShardProblem::TensorInTwoShards {
                            tensor: t.name.clone(),
                            first: listed.clone(),
                            second: shard_name.clone(),
                        };
                        return Err(bad(problem));
                    }
                    Some(_) => {}
                }
                locate.insert(t.name.clone(), (s, i));
                tensors.push(t.clone());
            }
        }
        if let Some((tensor, shard)) = index
            .weight_map
            .iter()
            .find(|(t, _)| !locate.contains_key(*t))
        {
            return Err(bad(ShardProblem::TensorNotInShard {
                tensor: tensor.clone(),
                shard: shard.clone(),
            }));
        }
        Ok(ShardedSafetensors {
            index_path,
            index,
            shards,
            tensors,
            locate,
        })
    }

    /// The index file's path.
    pub fn index_path(&self) -> &Path {
        &self.index_path
    }

    /// The parsed index.
    pub fn index(&self) -> &ShardIndex {
        &self.index
    }

    /// The shards, in name order.
    pub fn shards(&self) -> &[SafetensorsFile] {
        &self.shards
    }

    /// All tensors: shard by shard, in the order of their bytes.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Looks a tensor up by name.
    pub fn get(&self, name: &str) -> Option<TensorView<'_>> {
        self.locate.get(name).map(|&(s, i)| self.shards[s].view(i))
    }

    /// [`SafetensorsFile::release`] for the tensor called `name`.
    pub fn release(&self, name: &str) {
        if let Some(&(s, i)) = self.locate.get(name) {
            self.shards[s].release(i);
        }
    }
}

fn is_plain_file_name(name: &str) -> bool {
    let p = Path::new(name);
    p.file_name().is_some_and(|f| f == p.as_os_str()) && name != "." && name != ".."
}

/// The file names and layouts of a checkpoint split into shards.
#[derive(Clone, Debug)]
pub struct ShardPlan {
    /// `(file name, layout)` per shard, in writing order.
    pub shards: Vec<(String, HeaderPlan)>,
    /// Name of the index file, when there is more than one shard.
    pub index_name: Option<String>,
}

impl ShardPlan {
    /// Splits `tensors` (kept in order) into shards of at most
    /// `max_shard_bytes` of tensor data each; a tensor larger than that gets
    /// a shard of its own. One shard is named `{stem}.safetensors` with no
    /// index, as Hugging Face does; several are `{stem}-00001-of-0000N.safetensors`
    /// with `{stem}.safetensors.index.json`. Each shard carries `metadata`.
    pub fn new(
        stem: &str,
        tensors: &[TensorInfo],
        metadata: &Metadata,
        max_shard_bytes: u64,
    ) -> Result<Self, Error> {
        let mut groups: Vec<Vec<TensorInfo>> = vec![Vec::new()];
        let mut size = 0u64;
        for t in tensors {
            let n = t.nbytes();
            let current = groups
                .last_mut()
                .filter(|g| !g.is_empty() && size.saturating_add(n) > max_shard_bytes);
            if current.is_some() {
                groups.push(Vec::new());
                size = 0;
            }
            size = size.saturating_add(n);
            if let Some(g) = groups.last_mut() {
                g.push(t.clone());
            }
        }
        let count = groups.len();
        let mut shards = Vec::with_capacity(count);
        for (i, group) in groups.iter().enumerate() {
            let name = if count == 1 {
                format!("{stem}.safetensors")
            } else {
                format!("{stem}-{:05}-of-{count:05}.safetensors", i + 1)
            };
            let plan = HeaderPlan::new(group, metadata)
                .map_err(|(t, p)| Error::format(Path::new(&name), t.as_deref(), p))?;
            shards.push((name, plan));
        }
        let index_name = (count > 1).then(|| format!("{stem}{INDEX_SUFFIX}"));
        Ok(ShardPlan { shards, index_name })
    }

    /// Tensors in writing order, across shards.
    pub fn tensors(&self) -> impl Iterator<Item = &TensorInfo> {
        self.shards.iter().flat_map(|(_, p)| p.tensors())
    }
}

/// Writes a [`ShardPlan`] into a folder tensor by tensor. Each shard appears
/// atomically when complete, and the index last, so a folder with an index
/// is a complete checkpoint.
pub struct ShardedWriter {
    dir: PathBuf,
    plan: ShardPlan,
    shard: usize,
    current: Option<SafetensorsWriter>,
}

impl ShardedWriter {
    /// Starts writing `plan` into the existing folder `dir`.
    pub fn create(dir: impl AsRef<Path>, plan: ShardPlan) -> Result<Self> {
        Ok(ShardedWriter {
            dir: dir.as_ref().to_path_buf(),
            plan,
            shard: 0,
            current: None,
        })
    }

    /// Writes all of tensor `name`'s bytes (tensors in plan order).
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<()> {
        self.writer_for(name)?.write_tensor(name, data)
    }

    /// Writes the next part of tensor `name`'s bytes.
    pub fn write_part(&mut self, name: &str, part: &[u8]) -> Result<()> {
        self.writer_for(name)?.write_part(name, part)
    }

    fn writer_for(&mut self, name: &str) -> Result<&mut SafetensorsWriter> {
        loop {
            if let Some(w) = &self.current {
                if w.plan().tensors().any(|t| t.name == name) {
                    break;
                }
                if let Some(done) = self.current.take() {
                    done.finish()?;
                }
                self.shard += 1;
            }
            let Some((file, plan)) = self.plan.shards.get(self.shard) else {
                return Err(Error::usage(
                    &self.dir,
                    Some(name),
                    "not in the shard plan, or written out of order",
                ));
            };
            self.current = Some(SafetensorsWriter::create(
                self.dir.join(file),
                plan.clone(),
            )?);
        }
        self.current
            .as_mut()
            .ok_or_else(|| Error::usage(&self.dir, Some(name), "no shard open"))
    }

    /// Finishes the last shard and writes the index. Returns the paths written.
    pub fn finish(mut self) -> Result<Vec<PathBuf>> {
        if let Some(w) = self.current.take() {
            w.finish()?;
            self.shard += 1;
        }
        // Shards with nothing but empty tensors never saw a write.
        while let Some((file, plan)) = self.plan.shards.get(self.shard) {
            SafetensorsWriter::create(self.dir.join(file), plan.clone())?.finish()?;
            self.shard += 1;
        }
        let mut written: Vec<PathBuf> = self
            .plan
            .shards
            .iter()
            .map(|(f, _)| self.dir.join(f))
            .collect();
        if let Some(index_name) = &self.plan.index_name {
            let mut index = ShardIndex::default();
            let total: u64 = self.plan.shards.iter().map(|(_, p)| p.data_len()).sum();
            index.metadata.insert("total_size".into(), total.into());
            for (file, plan) in &self.plan.shards {
                for t in plan.tensors() {
                    index.weight_map.insert(t.name.clone(), file.clone());
                }
            }
            let mut json = serde_json::to_vec_pretty(&index).map_err(|e| {
                Error::usage(&self.dir, None, format!("cannot serialize index: {e}"))
            })?;
            json.push(b'\n');
            let path = self.dir.join(index_name);
            write_atomic(&path, &json)?;
            written.push(path);
        }
        Ok(written)
    }
}

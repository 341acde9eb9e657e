//! Running a [`MergePlan`]: output tensors computed one at a time and
//! streamed into shards, so memory stays near (inputs + 2) × the largest
//! tensor whatever the model size.
//!
//! Files are written into a hidden staging folder inside the output folder
//! and moved into place when every tensor is done, the index last: a merge
//! that fails or is killed leaves nothing that looks like a finished model.

use std::path::{Path, PathBuf};

use super::plan::{MergePlan, Models, TensorPlan};
use crate::safetensors::{ShardPlan, ShardedWriter};
use crate::tensor::TensorView;
use crate::{Error, Metadata, Result};

/// Computes one output tensor from its inputs' bytes (in plan order), as
/// little-endian bytes of `plan.output.dtype`.
pub trait TensorMerge {
    /// Merges one tensor.
    fn merge(&self, plan: &TensorPlan, inputs: &[TensorView<'_>]) -> Result<Vec<u8>>;
}

/// Where and how to write the result.
#[derive(Clone, Debug)]
pub struct OutputOptions {
    /// The output folder (created if missing).
    pub dir: PathBuf,
    /// Largest shard, in bytes of tensor data.
    pub max_shard_bytes: u64,
    /// `__metadata__` of each shard.
    pub metadata: Metadata,
}

/// Writes the merged model; `progress` is told the bytes of each tensor
/// written. Returns the files put in place.
pub fn run(
    plan: &MergePlan,
    models: &Models<'_>,
    merger: &dyn TensorMerge,
    out: &OutputOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<Vec<PathBuf>> {
    refuse_input_folder(models, &out.dir)?;
    let tensors: Vec<_> = plan.tensors.iter().map(|t| t.output.clone()).collect();
    let shard_plan = ShardPlan::new("model", &tensors, &out.metadata, out.max_shard_bytes)?;
    std::fs::create_dir_all(&out.dir).map_err(|e| Error::io(&out.dir, e))?;
    let staging = Staging::new(&out.dir)?;
    let mut writer = ShardedWriter::create(staging.path(), shard_plan)?;
    // Writing tensor i overlaps computing tensor i + 1. The channel holds
    // nothing (a hand-over), so at most two merged tensors exist at once.
    let written = std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(&str, Vec<u8>)>(0);
        let writing = scope.spawn(move || {
            for (name, bytes) in rx {
                writer.write_tensor(name, &bytes)?;
            }
            writer.finish()
        });
        let computed = compute(plan, models, merger, &out.dir, progress, &tx);
        drop(tx);
        let written = writing
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        // A compute error comes first; a write error stopped the computing.
        computed.and(written)
    })?;
    staging.publish(&written)
}

/// Merges every tensor of `plan` in order and hands each to `tx`; stops
/// early (without error) when the writer has stopped, whose error then wins.
fn compute<'p>(
    plan: &'p MergePlan,
    models: &Models<'_>,
    merger: &dyn TensorMerge,
    out_dir: &Path,
    progress: &mut dyn FnMut(u64),
    tx: &std::sync::mpsc::SyncSender<(&'p str, Vec<u8>)>,
) -> Result<()> {
    for t in &plan.tensors {
        let views = t
            .inputs
            .iter()
            .map(|i| {
                let (_, ckpt) = models[i.model];
                let view = ckpt.tensor(&i.tensor)?;
                Ok(match i.rows {
                    Some(rows) => common_rows(view, rows),
                    None => view,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let bytes = merger.merge(t, &views)?;
        if bytes.len() as u64 != t.output.nbytes() {
            let msg = format!(
                "merge produced {} bytes for a tensor of {}",
                bytes.len(),
                t.output.nbytes()
            );
            return Err(Error::usage(out_dir, Some(&t.output.name), msg));
        }
        drop(views);
        // Resident memory stays near (inputs + 2) × the largest tensor
        // rather than growing with the mapped inputs.
        for i in &t.inputs {
            models[i.model].1.release(&i.tensor);
        }
        let n = bytes.len() as u64;
        if tx.send((&t.output.name, bytes)).is_err() {
            return Ok(());
        }
        progress(n);
    }
    Ok(())
}

/// Writing into an input's own folder would replace the model being read.
fn refuse_input_folder(models: &Models<'_>, out: &Path) -> Result<()> {
    let Ok(out_real) = out.canonicalize() else {
        return Ok(());
    };
    for (name, ckpt) in models {
        let p = ckpt.path();
        let folder = if p.is_dir() {
            p.to_path_buf()
        } else {
            p.parent().unwrap_or(Path::new(".")).to_path_buf()
        };
        if folder.canonicalize().is_ok_and(|f| f == out_real) {
            let msg = format!("is the folder of input model {name}; choose another output folder");
            return Err(Error::usage(out, None, msg));
        }
    }
    Ok(())
}

/// Copies the input tensor (the method's single input), scaled by its
/// `scale` parameter when set, in the output dtype.
#[derive(Clone, Copy, Debug, Default)]
pub struct Passthrough;

impl TensorMerge for Passthrough {
    fn merge(&self, plan: &TensorPlan, inputs: &[TensorView<'_>]) -> Result<Vec<u8>> {
        let (Some(view), Some(input)) = (inputs.first(), plan.inputs.first()) else {
            return Err(Error::usage(
                "<merge>",
                Some(&plan.output.name),
                "passthrough needs one input",
            ));
        };
        let out = &plan.output;
        match input.params.get("scale").map(|v| v.as_f64()) {
            None => view.to_dtype(out.dtype),
            Some(scale) => {
                let mut xs = view.to_f32()?;
                xs.iter_mut()
                    .for_each(|x| *x = (f64::from(*x) * scale) as f32);
                let mut bytes = vec![0u8; xs.len() * out.dtype.size()];
                crate::convert::from_f32(&out.name, &xs, &mut bytes, out.dtype)?;
                Ok(bytes)
            }
        }
    }
}

/// The first `rows` rows of a tensor.
fn common_rows(view: TensorView<'_>, rows: u64) -> TensorView<'_> {
    let row_bytes = view.info.shape.iter().skip(1).product::<u64>() * view.info.dtype.size() as u64;
    let len = (rows * row_bytes).min(view.data.len() as u64) as usize;
    TensorView {
        info: view.info,
        data: &view.data[..len],
    }
}

/// A hidden folder inside the output folder, removed unless published.
struct Staging {
    dir: PathBuf,
    out: PathBuf,
    published: bool,
}

impl Staging {
    fn new(out: &Path) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(".git-theta-merge-")
            .tempdir_in(out)
            .map_err(|e| Error::io(out, e))?
            .keep();
        Ok(Staging {
            dir,
            out: out.to_path_buf(),
            published: false,
        })
    }

    fn path(&self) -> &Path {
        &self.dir
    }

    /// Moves the files into the output folder, index last, replacing older
    /// files of the same names and removing shards of an older merge that
    /// this one does not have.
    fn publish(mut self, files: &[PathBuf]) -> Result<Vec<PathBuf>> {
        let mut placed = Vec::with_capacity(files.len());
        let (index, shards): (Vec<&PathBuf>, Vec<&PathBuf>) = files
            .iter()
            .partition(|f| f.to_string_lossy().ends_with(".index.json"));
        let new_names: Vec<_> = files
            .iter()
            .filter_map(|f| f.file_name().map(ToOwned::to_owned))
            .collect();
        // An older model's index and stray shards would describe a different model.
        for entry in std::fs::read_dir(&self.out)
            .map_err(|e| Error::io(&self.out, e))?
            .flatten()
        {
            let name = entry.file_name();
            let s = name.to_string_lossy();
            let ours = s.starts_with("model")
                && (s.ends_with(".safetensors") || s.ends_with(".safetensors.index.json"));
            if ours && !new_names.contains(&name) {
                std::fs::remove_file(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
            }
        }
        for f in shards.into_iter().chain(index) {
            let target = self.out.join(f.file_name().unwrap_or_default());
            std::fs::rename(f, &target).map_err(|e| Error::io(&target, e))?;
            placed.push(target);
        }
        self.published = true;
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(placed)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{self, Checkpoint};
    use crate::merge::{MergeConfig, plan};
    use crate::synth::{self, LlamaShape};
    use crate::{DType, TensorInfo};

    fn model(dir: &Path, name: &str, seed: u64) -> PathBuf {
        let folder = dir.join(name);
        let tensors = LlamaShape::MICRO.tensors(DType::BF16);
        synth::write_model(&folder, &tensors, seed, None, u64::MAX).expect("write model");
        folder
    }

    struct Failing;
    impl TensorMerge for Failing {
        fn merge(&self, plan: &TensorPlan, _: &[TensorView<'_>]) -> Result<Vec<u8>> {
            if plan.output.name.contains("layers.2") {
                Err(Error::usage("<test>", Some(&plan.output.name), "boom"))
            } else {
                Ok(vec![0; plan.output.nbytes() as usize])
            }
        }
    }

    type Opened = Vec<(String, Box<dyn Checkpoint>)>;

    fn setup(dir: &Path, yaml_extra: &str) -> (MergeConfig, Opened) {
        let a = model(dir, "a", 1);
        let b = model(dir, "b", 2);
        let yaml = format!(
            "slices:\n  - sources: [{{model: {}, layer_range: [0, 2]}}]\n  - sources: [{{model: {}, layer_range: [1, 3]}}]\nmerge_method: passthrough\n{yaml_extra}",
            a.display(),
            b.display()
        );
        let config = MergeConfig::from_yaml(&yaml, "t.yml").expect("config");
        let models = config
            .referenced_models()
            .iter()
            .map(|m| (m.to_string(), checkpoint::open(m).expect("open")))
            .collect();
        (config, models)
    }

    #[test]
    fn passthrough_frankenmerge_writes_the_chosen_layers_in_shards() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (config, models) = setup(dir.path(), "dtype: float32\n");
        let refs: Vec<(&str, &dyn Checkpoint)> = models
            .iter()
            .map(|(n, c)| (n.as_str(), c.as_ref()))
            .collect();
        let p = plan(&config, &refs).expect("plan");
        let out = OutputOptions {
            dir: dir.path().join("out"),
            max_shard_bytes: 2000,
            metadata: vec![("format".into(), "pt".into())],
        };
        let mut total = 0;
        let files = run(&p, &refs, &Passthrough, &out, &mut |n| total += n).expect("merge");
        assert!(
            files.len() > 2
                && files
                    .last()
                    .is_some_and(|f| f.ends_with("model.safetensors.index.json"))
        );
        let merged = checkpoint::open(&out.dir).expect("open merged");
        assert_eq!(merged.tensors().len(), p.tensors.len());
        assert_eq!(
            total,
            merged.tensors().iter().map(TensorInfo::nbytes).sum::<u64>()
        );
        let got = merged
            .tensor("model.layers.3.self_attn.q_proj.weight")
            .expect("layer 3");
        assert_eq!(got.info.dtype, DType::F32);
        let want = refs[1]
            .1
            .tensor("model.layers.2.self_attn.q_proj.weight")
            .expect("b layer 2")
            .to_f32()
            .expect("f32");
        assert_eq!(got.to_f32().expect("f32"), want);
        let leftovers: Vec<_> = std::fs::read_dir(&out.dir)
            .expect("ls")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "staging removed");

        // A second, single-file merge into the same folder replaces the sharded one.
        let out1 = OutputOptions {
            max_shard_bytes: u64::MAX,
            ..out.clone()
        };
        run(&p, &refs, &Passthrough, &out1, &mut |_| {}).expect("merge again");
        let names: Vec<String> = std::fs::read_dir(&out.dir)
            .expect("ls")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["model.safetensors"]);
    }

    #[test]
    fn a_failed_merge_leaves_nothing_that_looks_finished() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (config, models) = setup(dir.path(), "");
        let refs: Vec<(&str, &dyn Checkpoint)> = models
            .iter()
            .map(|(n, c)| (n.as_str(), c.as_ref()))
            .collect();
        let p = plan(&config, &refs).expect("plan");
        let out = OutputOptions {
            dir: dir.path().join("out"),
            max_shard_bytes: 2000,
            metadata: Vec::new(),
        };
        let e = run(&p, &refs, &Failing, &out, &mut |_| {}).expect_err("fails");
        assert!(
            e.to_string().contains("layers.2") && e.to_string().contains("boom"),
            "{e}"
        );
        assert_eq!(
            std::fs::read_dir(&out.dir).expect("ls").count(),
            0,
            "no shards, no index, no staging"
        );

        let into_input = OutputOptions {
            dir: dir.path().join("a"),
            ..out
        };
        let e = run(&p, &refs, &Passthrough, &into_input, &mut |_| {}).expect_err("refused");
        assert!(e.to_string().contains("folder of input model"), "{e}");
    }
}

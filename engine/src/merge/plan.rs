//! Planning a merge: every output tensor with its inputs and parameter
//! values, checked against the models before any byte is written.
//!
//! A `models` configuration merges the reference model's tensors (the base,
//! else the first model) across all models. A `slices` configuration builds
//! the output's layers slice by slice (layer `start + i` of each source
//! becomes output layer `offset + i`), taking embeddings from the first
//! slice's sources and the other non-layer tensors from the last slice's.

use std::collections::BTreeMap;

use super::config::{MergeConfig, OutputSlice, Parameters};
use super::methods::{BasePolicy, MethodSpec, Scope};
use super::params::Value;
use super::{check, gradient_position, layer_index, resolve};
use crate::checkpoint::Checkpoint;
use crate::{DType, TensorInfo, parse_user_dtype};

/// One input of a merged tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedInput {
    /// Index of the model in [`MergePlan::models`].
    pub model: usize,
    /// The tensor's name in that model.
    pub tensor: String,
    /// Rows to use when the inputs disagree on the first dimension
    /// (embeddings of different vocabularies): the common rows.
    pub rows: Option<u64>,
    /// Per-model parameter values for this input.
    pub params: BTreeMap<&'static str, Value>,
}

/// How one output tensor is made.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorPlan {
    /// Name, dtype and shape of the result.
    pub output: TensorInfo,
    /// The tensors merged, base included when the method uses one.
    pub inputs: Vec<PlannedInput>,
    /// Position of the base among `inputs`.
    pub base: Option<usize>,
    /// Shared parameter values.
    pub params: BTreeMap<&'static str, Value>,
}

/// A checked merge, ready to run.
#[derive(Clone, Debug)]
pub struct MergePlan {
    /// The method.
    pub method: &'static MethodSpec,
    /// The models, as named in the configuration.
    pub models: Vec<String>,
    /// Index of the base model in `models`.
    pub base: Option<usize>,
    /// Output tensors, in writing order.
    pub tensors: Vec<TensorPlan>,
    /// Things the user should know (e.g. vocabularies cut to common rows).
    pub warnings: Vec<String>,
}

/// Opened models by name, in [`MergeConfig::referenced_models`] order.
pub type Models<'a> = [(&'a str, &'a dyn Checkpoint)];

/// Plans `config` over the opened `models`. Errors name the model and tensor.
pub fn plan(config: &MergeConfig, models: &Models<'_>) -> Result<MergePlan, String> {
    let method = check(config)?;
    let index = |name: &str| {
        models
            .iter()
            .position(|(n, _)| *n == name)
            .ok_or_else(|| format!("model {name} was not opened"))
    };
    let out_dtype = match config.out_dtype.as_deref().or(config.dtype.as_deref()) {
        Some(d) => Some(parse_user_dtype(d).map_err(|e| format!("dtype: {e}"))?),
        None => None,
    };
    let mut planner = Planner {
        config,
        method,
        models,
        out_dtype,
        tensors: Vec::new(),
        warnings: Vec::new(),
    };
    let base = config.base_model.as_deref().map(index).transpose()?;

    if let Some(list) = &config.models {
        let inputs: Vec<(usize, Option<&Parameters>)> = list
            .iter()
            .map(|m| Ok((index(&m.model)?, m.parameters.as_ref())))
            .collect::<Result<_, String>>()?;
        let reference = base.or(inputs.first().map(|i| i.0)).ok_or("no models")?;
        let ref_ckpt = models[reference].1;
        let layers = num_layers(ref_ckpt);
        for t in ref_ckpt.tensors() {
            let sources: Vec<(usize, Option<&Parameters>, String)> = inputs
                .iter()
                .map(|&(m, p)| (m, p, t.name.clone()))
                .collect();
            planner.tensor(
                &t.name,
                &sources,
                base,
                None,
                gradient_position(&t.name, layers),
            )?;
        }
    } else if let Some(slices) = &config.slices {
        plan_slices(&mut planner, slices, base, &index)?;
    }
    Ok(MergePlan {
        method,
        models: models.iter().map(|(n, _)| n.to_string()).collect(),
        base,
        tensors: planner.tensors,
        warnings: planner.warnings,
    })
}

type Index<'a> = dyn Fn(&str) -> Result<usize, String> + 'a;

/// Each source of a slice: its model's index and parameters.
fn sources_of<'s>(
    s: &'s OutputSlice,
    index: &Index<'_>,
) -> Result<Vec<(usize, Option<&'s Parameters>)>, String> {
    s.sources
        .iter()
        .map(|src| Ok((index(&src.model)?, src.parameters.as_ref())))
        .collect()
}

fn plan_slices(
    planner: &mut Planner<'_>,
    slices: &[OutputSlice],
    top_base: Option<usize>,
    index: &Index<'_>,
) -> Result<(), String> {
    let slice_base = |s: &OutputSlice| -> Result<Option<usize>, String> {
        s.base_model
            .as_deref()
            .map(index)
            .transpose()
            .map(|b| b.or(top_base))
    };
    let (first, last) = match (slices.first(), slices.last()) {
        (Some(f), Some(l)) => (f, l),
        _ => return Err("no slices".into()),
    };
    let non_layer: Vec<TensorInfo> = {
        let m = planner.models[sources_of(first, index)?[0].0].1;
        m.tensors()
            .iter()
            .filter(|t| layer_index(&t.name).is_none())
            .cloned()
            .collect()
    };
    let (pre, post): (Vec<_>, Vec<_>) = non_layer
        .into_iter()
        .partition(|t| t.name.contains("embed"));
    let whole =
        |planner: &mut Planner<'_>, s: &OutputSlice, t: &TensorInfo| -> Result<(), String> {
            let srcs: Vec<_> = sources_of(s, index)?
                .into_iter()
                .map(|(m, p)| (m, p, t.name.clone()))
                .collect();
            planner.tensor(&t.name, &srcs, slice_base(s)?, s.parameters.as_ref(), 0.0)
        };
    for t in &pre {
        whole(planner, first, t)?;
    }
    let mut out_layer = 0u64;
    for s in slices {
        let srcs = sources_of(s, index)?;
        let (start, end) = s.sources[0].layer_range;
        let len = end - start;
        for i in 0..len {
            let t = if len > 1 {
                i as f64 / (len - 1) as f64
            } else {
                1.0
            };
            let first_model = planner.models[srcs[0].0].1;
            let in_layer: Vec<String> = first_model
                .tensors()
                .iter()
                .filter(|x| layer_index(&x.name) == Some(start + i))
                .map(|x| x.name.clone())
                .collect();
            if in_layer.is_empty() {
                return Err(format!(
                    "model {}: no tensors of layer {}",
                    planner.models[srcs[0].0].0,
                    start + i
                ));
            }
            for name in in_layer {
                let out_name = rename_layer(&name, start + i, out_layer);
                let per_source: Vec<_> = srcs
                    .iter()
                    .zip(&s.sources)
                    .map(|(&(m, p), src)| {
                        (m, p, rename_layer(&name, start + i, src.layer_range.0 + i))
                    })
                    .collect();
                planner.tensor(
                    &out_name,
                    &per_source,
                    slice_base(s)?,
                    s.parameters.as_ref(),
                    t,
                )?;
            }
            out_layer += 1;
        }
    }
    for t in &post {
        whole(planner, last, t)?;
    }
    Ok(())
}

/// `model.layers.7.mlp.w` with layer 7 renumbered `to`.
fn rename_layer(name: &str, from: u64, to: u64) -> String {
    let parts: Vec<String> = name.split('.').map(str::to_owned).collect();
    let mut done = false;
    let renamed: Vec<String> = parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let is_layer = !done
                && i > 0
                && matches!(parts[i - 1].as_str(), "layers" | "h" | "blocks" | "layer")
                && p.parse::<u64>() == Ok(from);
            if is_layer {
                done = true;
                to.to_string()
            } else {
                p.clone()
            }
        })
        .collect();
    renamed.join(".")
}

/// Layers of a model: one past the highest layer index in its tensor names.
pub fn num_layers(ckpt: &dyn Checkpoint) -> u64 {
    ckpt.tensors()
        .iter()
        .filter_map(|t| layer_index(&t.name))
        .max()
        .map_or(0, |m| m + 1)
}

struct Planner<'a> {
    config: &'a MergeConfig,
    method: &'static MethodSpec,
    models: &'a Models<'a>,
    out_dtype: Option<DType>,
    tensors: Vec<TensorPlan>,
    warnings: Vec<String>,
}

impl Planner<'_> {
    /// Plans output tensor `out_name` from `sources` (model, its parameters,
    /// tensor name there), adding the base when the method uses one.
    fn tensor(
        &mut self,
        out_name: &str,
        sources: &[(usize, Option<&Parameters>, String)],
        base: Option<usize>,
        slice_params: Option<&Parameters>,
        t: f64,
    ) -> Result<(), String> {
        let mut srcs: Vec<(usize, Option<&Parameters>, String)> = sources.to_vec();
        let uses_base = self.method.base != BasePolicy::Ignored;
        if let (true, Some(b)) = (uses_base, base)
            && !srcs.iter().any(|s| s.0 == b)
        {
            let name = srcs
                .first()
                .map_or_else(|| out_name.to_owned(), |s| s.2.clone());
            srcs.insert(0, (b, None, name));
        }
        let base_pos = if uses_base {
            base.and_then(|b| srcs.iter().position(|s| s.0 == b))
        } else {
            None
        };

        let mut infos = Vec::with_capacity(srcs.len());
        for (m, _, name) in &srcs {
            let (model_name, ckpt) = self.models[*m];
            let view = ckpt
                .get(name)
                .ok_or_else(|| format!("model {model_name} has no tensor `{name}`"))?;
            infos.push((model_name, view.info.clone()));
        }
        let (ref_model, reference) = infos[base_pos.unwrap_or(0)].clone();
        let mut rows = None;
        for (model_name, info) in &infos {
            if !info.dtype.is_float() && info.dtype != reference.dtype {
                return Err(format!(
                    "tensor `{out_name}`: {model_name} has dtype {} but {ref_model} has {}",
                    info.dtype, reference.dtype
                ));
            }
            if info.shape == reference.shape {
                continue;
            }
            let same_tail = info.shape.len() == reference.shape.len()
                && info.shape[1..] == reference.shape[1..];
            if same_tail && is_embedding(out_name) {
                let r = rows.unwrap_or(reference.shape[0]).min(info.shape[0]);
                rows = Some(r);
            } else {
                return Err(format!(
                    "tensor `{out_name}`: {model_name} has shape {:?} but {ref_model} has {:?}",
                    info.shape, reference.shape
                ));
            }
        }
        let mut shape = reference.shape.clone();
        if let Some(r) = rows {
            self.warnings.push(format!(
                "tensor `{out_name}`: vocabularies differ ({}); merging the {r} rows all models share",
                infos.iter().map(|(m, i)| format!("{m}: {}", i.shape[0])).collect::<Vec<_>>().join(", ")
            ));
            shape[0] = r;
        }
        let dtype = if reference.dtype.is_float() {
            self.out_dtype.unwrap_or(reference.dtype)
        } else {
            reference.dtype
        };

        let top = self.config.parameters.as_ref();
        let mut params = BTreeMap::new();
        for spec in self
            .method
            .params
            .iter()
            .filter(|p| p.scope == Scope::Shared)
        {
            if let Some(v) = resolve(spec, None, slice_params, top, out_name, t)
                .map_err(|e| format!("tensor `{out_name}`: {e}"))?
            {
                params.insert(spec.name, v);
            }
        }
        let mut inputs = Vec::with_capacity(srcs.len());
        for (i, (m, own, name)) in srcs.iter().enumerate() {
            let mut per = BTreeMap::new();
            for spec in self.method.params.iter() {
                let applies = match spec.scope {
                    Scope::Shared => false,
                    Scope::PerInput => true,
                    Scope::PerNonBase => Some(i) != base_pos,
                };
                if !applies {
                    continue;
                }
                let v = resolve(spec, *own, slice_params, top, out_name, t).map_err(|e| {
                    format!("model {}, tensor `{out_name}`: {e}", self.models[*m].0)
                })?;
                if let Some(v) = v {
                    per.insert(spec.name, v);
                }
            }
            inputs.push(PlannedInput {
                model: *m,
                tensor: name.clone(),
                rows,
                params: per,
            });
        }
        self.tensors.push(TensorPlan {
            output: TensorInfo::new(out_name, dtype, shape),
            inputs,
            base: base_pos,
            params,
        });
        Ok(())
    }
}

fn is_embedding(name: &str) -> bool {
    [
        "embed_tokens",
        "lm_head",
        "wte",
        "embed_out",
        "word_embeddings",
        "output.weight",
    ]
    .iter()
    .any(|k| name.contains(k))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint;
    use crate::synth::{self, LlamaShape};

    const SHAPE: LlamaShape = LlamaShape::MICRO;

    fn write(dir: &std::path::Path, name: &str, tensors: &[TensorInfo], seed: u64) -> String {
        let folder = dir.join(name);
        synth::write_model(&folder, tensors, seed, None, u64::MAX).expect("write model");
        folder.to_string_lossy().into_owned()
    }

    fn run(yaml: &str, models: &[(String, Box<dyn Checkpoint>)]) -> Result<MergePlan, String> {
        let config = MergeConfig::from_yaml(yaml, "t.yml").map_err(|e| e.to_string())?;
        let refs: Vec<(&str, &dyn Checkpoint)> = models
            .iter()
            .map(|(n, c)| (n.as_str(), c.as_ref()))
            .collect();
        plan(&config, &refs)
    }

    fn open_all(paths: &[String]) -> Vec<(String, Box<dyn Checkpoint>)> {
        paths
            .iter()
            .map(|p| (p.clone(), checkpoint::open(p).expect("open")))
            .collect()
    }

    #[test]
    fn ties_plan_resolves_every_tensor_and_parameter() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = SHAPE.tensors(DType::BF16);
        let paths: Vec<String> = (0..3)
            .map(|i| write(dir.path(), &format!("m{i}"), &t, i))
            .collect();
        let yaml = format!(
            "models:\n  - model: {a}\n    parameters: {{weight: 0.6, density: [1.0, 0.5]}}\n  - model: {b}\n    parameters: {{weight: 0.4, density: 0.7}}\nbase_model: {base}\nmerge_method: ties\ndtype: float32\n",
            base = paths[0],
            a = paths[1],
            b = paths[2]
        );
        let p = run(&yaml, &open_all(&paths)).expect("plans");
        assert_eq!(p.tensors.len(), t.len());
        let layer2 = p
            .tensors
            .iter()
            .find(|x| x.output.name == "model.layers.2.mlp.up_proj.weight")
            .expect("tensor");
        assert_eq!(layer2.output.dtype, DType::F32);
        assert_eq!(layer2.base, Some(0));
        assert_eq!(layer2.inputs.len(), 3);
        assert_eq!(layer2.inputs[0].model, 0);
        assert!(
            layer2.inputs[0].params.is_empty(),
            "the base takes no per-model parameters"
        );
        assert_eq!(
            layer2.inputs[1].params["density"],
            Value::Float(0.5),
            "gradient end at the last layer"
        );
        assert_eq!(layer2.inputs[2].params["weight"], Value::Float(0.4));
        assert_eq!(layer2.params["normalize"], Value::Bool(true));
        let layer1 = p
            .tensors
            .iter()
            .find(|x| x.output.name == "model.layers.1.mlp.up_proj.weight")
            .expect("tensor");
        assert_eq!(
            layer1.inputs[1].params["density"],
            Value::Float(0.75),
            "mid-gradient"
        );
    }

    #[test]
    fn missing_tensors_and_shape_mismatches_name_model_and_tensor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = SHAPE.tensors(DType::F32);
        let base = write(dir.path(), "base", &t, 0);
        let short: Vec<TensorInfo> = t
            .iter()
            .filter(|x| x.name != "model.norm.weight")
            .cloned()
            .collect();
        let lacking = write(dir.path(), "lacking", &short, 1);
        let mut wide = t.clone();
        for x in wide.iter_mut().filter(|x| x.name.contains("q_proj")) {
            x.shape = vec![8, 9];
        }
        let wider = write(dir.path(), "wider", &wide, 2);
        let yaml = |m: &str| {
            format!(
                "models: [{{model: {m}, parameters: {{weight: 1}}}}]\nbase_model: {base}\nmerge_method: task_arithmetic\n"
            )
        };
        let e =
            run(&yaml(&lacking), &open_all(&[base.clone(), lacking.clone()])).expect_err("missing");
        assert!(
            e.contains("lacking has no tensor `model.norm.weight`"),
            "{e}"
        );
        let e = run(&yaml(&wider), &open_all(&[base.clone(), wider.clone()])).expect_err("shape");
        assert!(
            e.contains("model.layers.0.self_attn.q_proj.weight") && e.contains("[8, 9]"),
            "{e}"
        );
    }

    #[test]
    fn vocabularies_of_different_sizes_merge_their_common_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = SHAPE.tensors(DType::F32);
        let base = write(dir.path(), "base", &t, 0);
        let bigger = LlamaShape { vocab: 40, ..SHAPE }.tensors(DType::F32);
        let big = write(dir.path(), "big", &bigger, 1);
        let yaml = format!(
            "models: [{{model: {base}, parameters: {{weight: 1}}}}, {{model: {big}, parameters: {{weight: 1}}}}]\nmerge_method: linear\n"
        );
        let p = run(&yaml, &open_all(&[base, big])).expect("plans");
        let embed = p
            .tensors
            .iter()
            .find(|x| x.output.name == "model.embed_tokens.weight")
            .expect("embed");
        assert_eq!(embed.output.shape, vec![32, 8]);
        assert_eq!(embed.inputs[1].rows, Some(32));
        assert!(
            p.warnings
                .iter()
                .any(|w| w.contains("model.embed_tokens.weight") && w.contains("32 rows")),
            "{:?}",
            p.warnings
        );
    }

    #[test]
    fn passthrough_slices_stack_and_renumber_layers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = SHAPE.tensors(DType::F16);
        let a = write(dir.path(), "a", &t, 0);
        let b = write(dir.path(), "b", &t, 1);
        let yaml = format!(
            "slices:\n  - sources: [{{model: {a}, layer_range: [0, 2]}}]\n  - sources: [{{model: {b}, layer_range: [1, 3]}}]\nmerge_method: passthrough\n"
        );
        let p = run(&yaml, &open_all(&[a, b])).expect("plans");
        let names: Vec<&str> = p.tensors.iter().map(|x| x.output.name.as_str()).collect();
        assert_eq!(names.first(), Some(&"model.embed_tokens.weight"));
        assert_eq!(
            names.iter().filter(|n| n.contains(".layers.")).count(),
            4 * 9
        );
        let l3 = p
            .tensors
            .iter()
            .find(|x| x.output.name == "model.layers.3.mlp.down_proj.weight")
            .expect("layer 3");
        assert_eq!(
            (l3.inputs[0].model, l3.inputs[0].tensor.as_str()),
            (1, "model.layers.2.mlp.down_proj.weight")
        );
        let l1 = p
            .tensors
            .iter()
            .find(|x| x.output.name == "model.layers.1.mlp.down_proj.weight")
            .expect("layer 1");
        assert_eq!(
            (l1.inputs[0].model, l1.inputs[0].tensor.as_str()),
            (0, "model.layers.1.mlp.down_proj.weight")
        );
        let head = p
            .tensors
            .iter()
            .find(|x| x.output.name == "lm_head.weight")
            .expect("head");
        assert_eq!(
            head.inputs[0].model, 1,
            "post-layer tensors from the last slice"
        );
    }
}

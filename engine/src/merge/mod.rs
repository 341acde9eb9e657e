//! Model merging as mergekit defines it: configurations ([`MergeConfig`]),
//! parameter settings and their evaluation per tensor ([`params`]), and the
//! methods with their parameters and defaults ([`methods`]).
//!
//! [`check`] validates a configuration against the method before any tensor
//! is read; [`resolve`] gives a parameter's value for one model and tensor.

pub mod arith;
pub mod config;
pub mod methods;
pub mod params;
pub mod plan;
pub mod run;

pub use arith::DeviceMerge;
pub use config::{ConfigError, MergeConfig, Parameters};
pub use methods::{BasePolicy, MethodSpec, ParamSpec, Scope};
pub use params::{Kind, Setting, Value};
pub use plan::{MergePlan, PlannedInput, TensorPlan, plan};
pub use run::{OutputOptions, Passthrough, TensorMerge, run};

/// Checks what can be checked of `config` without reading any model: the
/// method exists, every parameter named anywhere is one of the method's, the
/// base model and the number of inputs fit the method. Returns the method.
pub fn check(config: &MergeConfig) -> Result<&'static MethodSpec, String> {
    let known: Vec<&str> = methods::METHODS.iter().map(|m| m.name).collect();
    let method = methods::method(&config.merge_method).ok_or_else(|| {
        format!(
            "unknown merge_method `{}` (known: {})",
            config.merge_method,
            known.join(", ")
        )
    })?;

    let check_names = |params: &Option<Parameters>, whose: &str| -> Result<(), String> {
        for name in params.iter().flat_map(|p| p.keys()) {
            if method.param(name).is_none() {
                return Err(format!(
                    "{whose}: `{name}` is not a parameter of {} (its parameters: {})",
                    method.name,
                    method.param_names().join(", ")
                ));
            }
        }
        Ok(())
    };
    check_names(&config.parameters, "parameters")?;
    for m in config.models.iter().flatten() {
        check_names(&m.parameters, &format!("model {}", m.model))?;
    }
    for (i, s) in config.slices.iter().flatten().enumerate() {
        check_names(&s.parameters, &format!("slice {}", i + 1))?;
        for src in &s.sources {
            check_names(
                &src.parameters,
                &format!("slice {} source {}", i + 1, src.model),
            )?;
        }
    }

    let groups: Vec<(Option<&str>, Vec<&str>)> = match (&config.models, &config.slices) {
        (Some(models), _) => vec![(
            config.base_model.as_deref(),
            models.iter().map(|m| m.model.as_str()).collect(),
        )],
        (_, Some(slices)) => slices
            .iter()
            .map(|s| {
                let base = s.base_model.as_deref().or(config.base_model.as_deref());
                (
                    base,
                    s.sources.iter().map(|src| src.model.as_str()).collect(),
                )
            })
            .collect(),
        _ => Vec::new(),
    };
    for (base, inputs) in groups {
        let mut all: Vec<&str> = inputs.clone();
        if let Some(b) = base.filter(|b| !all.contains(b) && method.base != BasePolicy::Ignored) {
            all.push(b);
        }
        let non_base = all.iter().filter(|m| Some(**m) != base).count();
        if method.base == BasePolicy::Required && base.is_none() {
            return Err(format!("{} needs a base_model", method.name));
        }
        if all.len() < method.min_inputs {
            return Err(format!(
                "{} needs at least {} models (base included), got {}",
                method.name,
                method.min_inputs,
                all.len()
            ));
        }
        if let Some(max) = method.max_inputs.filter(|&m| all.len() > m) {
            return Err(format!(
                "{} takes at most {max} models (base included), got {}",
                method.name,
                all.len()
            ));
        }
        if let Some(n) = method.non_base.filter(|&n| non_base != n) {
            return Err(format!(
                "{} takes exactly {n} models besides the base, got {non_base}",
                method.name
            ));
        }
    }
    Ok(method)
}

/// The value of parameter `spec` for one tensor: looked up in `model`'s own
/// parameters (for per-model parameters), then the slice's, then the
/// top-level ones, the first setting that yields a value winning; else the
/// default. `Ok(None)` is an unset optional parameter; a required one that
/// nothing sets is an error.
pub fn resolve(
    spec: &ParamSpec,
    model: Option<&Parameters>,
    slice: Option<&Parameters>,
    top: Option<&Parameters>,
    tensor: &str,
    t: f64,
) -> Result<Option<Value>, String> {
    let own = if spec.scope == Scope::Shared {
        None
    } else {
        model
    };
    for source in [own, slice, top].into_iter().flatten() {
        if let Some(setting) = source.get(spec.name) {
            let v = setting
                .evaluate(tensor, t, spec.kind)
                .map_err(|e| format!("parameter `{}`: {e}", spec.name))?;
            if v.is_some() {
                return Ok(v);
            }
        }
    }
    match spec.default {
        methods::Default::Required => Err(format!(
            "parameter `{}` is required but not set for tensor `{tensor}`",
            spec.name
        )),
        methods::Default::Unset => Ok(None),
        methods::Default::Float(x) => Ok(Some(Value::Float(x))),
        methods::Default::Bool(b) => Ok(Some(Value::Bool(b))),
    }
}

/// The layer a tensor belongs to (`model.layers.12.mlp...` → 12), for the
/// common layer containers (`layers`, `h`, `blocks`, `layer`).
pub fn layer_index(tensor: &str) -> Option<u64> {
    let parts: Vec<&str> = tensor.split('.').collect();
    parts
        .windows(2)
        .find(|w| {
            matches!(w[0], "layers" | "h" | "blocks" | "layer")
                && w[1].bytes().all(|b| b.is_ascii_digit())
        })
        .and_then(|w| w[1].parse().ok())
}

/// Where a tensor sits for gradients: layer / (layers − 1) for layer
/// tensors (1 when there is one layer), 0 for the rest, as mergekit does.
pub fn gradient_position(tensor: &str, num_layers: u64) -> f64 {
    match layer_index(tensor) {
        Some(_) if num_layers <= 1 => 1.0,
        Some(i) => (i as f64 / (num_layers - 1) as f64).min(1.0),
        None => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> MergeConfig {
        MergeConfig::from_yaml(yaml, "t.yml").expect("valid yaml")
    }

    #[test]
    fn check_catches_method_parameter_and_input_mistakes() {
        let ok = config(
            "models: [{model: a, parameters: {weight: 1}}, {model: b, parameters: {weight: 1}}]\nbase_model: base\nmerge_method: ties\n",
        );
        assert_eq!(check(&ok).map(|m| m.name), Ok("ties"));
        let e = check(&config("models: [{model: a}]\nmerge_method: tie\n")).expect_err("unknown");
        assert!(
            e.contains("unknown merge_method `tie`") && e.contains("ties"),
            "{e}"
        );
        let e = check(&config(
            "models: [{model: a, parameters: {densty: 0.5}}]\nbase_model: b\nmerge_method: ties\n",
        ))
        .expect_err("typo");
        assert!(e.contains("model a") && e.contains("`densty`"), "{e}");
        let e = check(&config(
            "models: [{model: a}, {model: b}]\nmerge_method: ties\n",
        ))
        .expect_err("no base");
        assert!(e.contains("needs a base_model"), "{e}");
        let e = check(&config("models: [{model: a}, {model: b}, {model: c}]\nbase_model: a\nmerge_method: slerp\nparameters: {t: 0.5}\n"))
            .expect_err("three for slerp");
        assert!(e.contains("at most 2"), "{e}");
    }

    #[test]
    fn precedence_defaults_and_required() {
        let c = config(
            "models:\n  - model: a\n    parameters: {weight: 0.7, density: [{filter: mlp, value: 0.2}]}\n  - model: b\nbase_model: base\nmerge_method: ties\nparameters: {weight: 0.1, density: 0.9}\n",
        );
        let m = check(&c).expect("valid");
        let models = c.models.as_ref().expect("models");
        let (a, b) = (models[0].parameters.as_ref(), models[1].parameters.as_ref());
        let top = c.parameters.as_ref();
        let weight = m.param("weight").expect("weight");
        let density = m.param("density").expect("density");
        let v = |spec, own, name| {
            resolve(spec, own, None, top, name, 0.0)
                .expect("resolves")
                .map(Value::as_f64)
        };
        assert_eq!(v(weight, a, "x.mlp.w"), Some(0.7));
        assert_eq!(v(weight, b, "x.mlp.w"), Some(0.1));
        assert_eq!(v(density, a, "x.mlp.w"), Some(0.2));
        assert_eq!(
            v(density, a, "x.attn.w"),
            Some(0.9),
            "no filter match: next source"
        );
        let normalize = m.param("normalize").expect("normalize");
        assert_eq!(
            resolve(normalize, a, None, None, "x", 0.0),
            Ok(Some(Value::Bool(true)))
        );
        let e = resolve(weight, None, None, None, "x", 0.0).expect_err("required");
        assert!(e.contains("`weight` is required"), "{e}");
    }

    #[test]
    fn gradient_positions() {
        assert_eq!(layer_index("model.layers.12.mlp.up_proj.weight"), Some(12));
        assert_eq!(layer_index("transformer.h.3.attn.c_attn.weight"), Some(3));
        assert_eq!(layer_index("model.embed_tokens.weight"), None);
        assert_eq!(gradient_position("model.layers.0.x", 32), 0.0);
        assert_eq!(gradient_position("model.layers.31.x", 32), 1.0);
        assert_eq!(gradient_position("lm_head.weight", 32), 0.0);
    }
}

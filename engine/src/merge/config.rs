//! mergekit's YAML configuration, read as mergekit 0.1.5 reads it.
//!
//! ```yaml
//! models:
//!   - model: ./finetune-a
//!     parameters: { weight: 0.6, density: [1.0, 0.5] }
//!   - model: ./finetune-b
//!     parameters:
//!       weight: [{ filter: self_attn, value: 0.2 }, { value: 0.4 }]
//! base_model: ./base
//! merge_method: ties
//! parameters: { normalize: true }
//! dtype: bfloat16
//! ```
//!
//! Exactly one of `models` and `slices` is given. Unknown keys are errors
//! (a misspelt `merge_methd` must not be ignored).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::params::Setting;

/// Parameter settings by name.
pub type Parameters = BTreeMap<String, Setting>;

/// A whole merge configuration.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MergeConfig {
    /// Models merged whole (every layer).
    #[serde(default)]
    pub models: Option<Vec<InputModel>>,
    /// Output slices built from layer ranges of the inputs (frankenmerges).
    #[serde(default)]
    pub slices: Option<Vec<OutputSlice>>,
    /// The method's name (`linear`, `ties`, ...).
    pub merge_method: String,
    /// The model task vectors are taken against.
    #[serde(default)]
    pub base_model: Option<String>,
    /// The dtype tensors are merged in (math is in f32 or wider regardless).
    #[serde(default)]
    pub dtype: Option<String>,
    /// The dtype written; defaults to `dtype`, else the inputs'.
    #[serde(default)]
    pub out_dtype: Option<String>,
    /// Settings for every model and tensor, lowest precedence.
    #[serde(default)]
    pub parameters: Option<Parameters>,
    /// Where the tokenizer comes from: only `base` (the default) is supported.
    #[serde(default)]
    pub tokenizer_source: Option<serde_yaml_ng::Value>,
    /// mergekit's tokenizer surgery block: not supported.
    #[serde(default)]
    pub tokenizer: Option<serde_yaml_ng::Value>,
    /// Chat template to write: not supported.
    #[serde(default)]
    pub chat_template: Option<String>,
    /// mergekit's multi-module configurations: not supported.
    #[serde(default)]
    pub modules: Option<serde_yaml_ng::Value>,
}

/// One model of a `models` list.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputModel {
    /// Path of the model (file or folder).
    pub model: String,
    /// Settings for this model, highest precedence.
    #[serde(default)]
    pub parameters: Option<Parameters>,
}

/// One output slice: layers merged from the same number of layers of each source.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSlice {
    /// Where the layers come from.
    pub sources: Vec<InputSlice>,
    /// A base for this slice, overriding the top-level one.
    #[serde(default)]
    pub base_model: Option<String>,
    /// Accepted for compatibility; mergekit 0.1.5 does not use it either.
    #[serde(default)]
    pub residual_weight: Option<f64>,
    /// Settings for this slice.
    #[serde(default)]
    pub parameters: Option<Parameters>,
}

/// Layers `[start, end)` of one model.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSlice {
    /// Path of the model.
    pub model: String,
    /// First layer and one past the last.
    pub layer_range: (u64, u64),
    /// Settings for this source.
    #[serde(default)]
    pub parameters: Option<Parameters>,
}

/// A configuration that cannot be used, with the file it came from.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct ConfigError {
    /// The configuration file (or `<inline>`).
    pub path: PathBuf,
    /// What is wrong.
    pub message: String,
}

impl MergeConfig {
    /// Reads and checks a configuration file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::from_yaml(&text, path)
    }

    /// Parses and checks YAML text; `path` names it in errors.
    pub fn from_yaml(text: &str, path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let err = |message: String| ConfigError {
            path: path.as_ref().to_path_buf(),
            message,
        };
        let config: MergeConfig = serde_yaml_ng::from_str(text)
            .map_err(|e| err(format!("invalid merge configuration: {e}")))?;
        match (&config.models, &config.slices) {
            (Some(m), None) if !m.is_empty() => {}
            (None, Some(s)) if !s.is_empty() => {}
            _ => {
                return Err(err(
                    "give exactly one of `models` and `slices`, not empty".into()
                ));
            }
        }
        if config.modules.is_some() {
            return Err(err(
                "`modules` (multi-module merges) is not supported; use `models` or `slices`".into(),
            ));
        }
        if config.tokenizer.is_some() {
            return Err(err("`tokenizer` (tokenizer surgery) is not supported; the base model's tokenizer is copied".into()));
        }
        if config.chat_template.is_some() {
            return Err(err("`chat_template` is not supported; the base model's tokenizer files are copied as they are".into()));
        }
        match &config.tokenizer_source {
            None => {}
            Some(serde_yaml_ng::Value::String(s)) if s == "base" => {}
            Some(other) => {
                return Err(err(format!(
                    "tokenizer_source {} is not supported: only `base` (the default) is",
                    serde_yaml_ng::to_string(other).unwrap_or_default().trim()
                )));
            }
        }
        for s in config.slices.iter().flatten() {
            let lens: Vec<u64> = s
                .sources
                .iter()
                .map(|src| src.layer_range.1.saturating_sub(src.layer_range.0))
                .collect();
            if let Some(src) = s
                .sources
                .iter()
                .find(|src| src.layer_range.1 < src.layer_range.0)
            {
                return Err(err(format!(
                    "slice source {}: layer_range {:?} ends before it starts",
                    src.model, src.layer_range
                )));
            }
            if lens.windows(2).any(|w| w[0] != w[1]) {
                return Err(err(format!(
                    "all sources of a slice must span the same number of layers, got {lens:?}"
                )));
            }
            if s.sources.is_empty() {
                return Err(err("a slice has no sources".into()));
            }
        }
        Ok(config)
    }

    /// Every model the configuration names, base first, without repeats.
    pub fn referenced_models(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        let mut names: Vec<&str> = self.base_model.iter().map(String::as_str).collect();
        names.extend(self.models.iter().flatten().map(|m| m.model.as_str()));
        for s in self.slices.iter().flatten() {
            names.extend(s.base_model.iter().map(String::as_str));
            names.extend(s.sources.iter().map(|src| src.model.as_str()));
        }
        for n in names {
            if !out.contains(&n) {
                out.push(n);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_ties_config() {
        let c = MergeConfig::from_yaml(
            "models:\n  - model: a\n    parameters: {weight: 0.5, density: [1, 0.5]}\n  - model: b\nbase_model: base\nmerge_method: ties\nparameters:\n  normalize: true\ndtype: bfloat16\n",
            "t.yml",
        )
        .expect("valid");
        assert_eq!(c.merge_method, "ties");
        assert_eq!(c.referenced_models(), ["base", "a", "b"]);
    }

    #[test]
    fn unknown_keys_and_shapes_are_errors_naming_the_file() {
        let e = MergeConfig::from_yaml("models: [{model: a}]\nmerge_methd: ties\n", "cfg.yml")
            .expect_err("typo");
        assert!(
            e.to_string().contains("cfg.yml") && e.to_string().contains("merge_methd"),
            "{e}"
        );
        let e = MergeConfig::from_yaml("merge_method: linear\n", "cfg.yml").expect_err("no models");
        assert!(e.to_string().contains("exactly one"), "{e}");
        let e = MergeConfig::from_yaml(
            "slices:\n  - sources:\n    - {model: a, layer_range: [0, 4]}\n    - {model: b, layer_range: [0, 2]}\nmerge_method: linear\n",
            "cfg.yml",
        )
        .expect_err("uneven slices");
        assert!(e.to_string().contains("same number of layers"), "{e}");
    }
}

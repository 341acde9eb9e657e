//! The merge policy: which strategy each tensor changed on both sides
//! gets. It comes from the `[merge]` table of `.theta.toml`, committed in
//! the repository (spec in `docs/git-merge.md`):
//!
//! ```toml
//! [merge]
//! strategy = "average"            # tensors no rule names
//! weight = { ours = 1, theirs = 1 }
//!
//! [[merge.rules]]
//! pattern = "*embed_tokens*"      # a shell glob on tensor names, or a list
//! strategy = "theirs"
//! ```
//!
//! and `THETA_MERGE_STRATEGY` / `THETA_MERGE_PARAMS` override it for one
//! merge (see [`Policy::from_env`]).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::strategy::{self, Params, Strategy, Value};

/// The name of the configuration file, at the top of the working tree.
pub const FILE: &str = ".theta.toml";

/// The strategy used when the configuration names none: a plain average of
/// the two versions (a "model soup"), which needs no base and never
/// extrapolates beyond either side.
pub const DEFAULT_STRATEGY: &str = "average";

/// A strategy as configured: its name (for messages) and the strategy.
pub struct Configured {
    /// How the configuration wrote it, e.g. `ties` or `ties (rule *.mlp.*)`.
    pub label: String,
    /// The strategy.
    pub strategy: Box<dyn Strategy>,
}

/// A rule: tensors matching any of the patterns get the strategy.
struct Rule {
    patterns: Vec<glob::Pattern>,
    chosen: Configured,
}

/// The strategy for each tensor.
pub struct Policy {
    default: Configured,
    rules: Vec<Rule>,
    /// Choices for single tensors (made at a prompt), ahead of the rules.
    exact: Vec<(String, Configured)>,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct PolicyError {
    /// Where it comes from (a file, an environment variable, a flag).
    pub origin: String,
    /// What is wrong.
    pub message: String,
}

#[derive(Deserialize)]
struct FileToml {
    #[serde(default)]
    merge: Option<MergeToml>,
}

#[derive(Deserialize)]
struct MergeToml {
    #[serde(default)]
    strategy: Option<String>,
    #[serde(default)]
    rules: Vec<RuleToml>,
    #[serde(flatten)]
    params: toml::Table,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Patterns {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct RuleToml {
    pattern: Patterns,
    strategy: String,
    #[serde(flatten)]
    params: toml::Table,
}

impl Policy {
    /// One strategy for every tensor.
    pub fn single(name: &str, params: &Params, source: &str) -> Result<Policy, PolicyError> {
        Ok(Policy {
            default: configure(name, params, name.to_owned(), source)?,
            rules: vec![],
            exact: vec![],
        })
    }

    /// The default: [`DEFAULT_STRATEGY`] with its default parameters.
    pub fn builtin() -> Policy {
        match Policy::single(DEFAULT_STRATEGY, &Params::new(), "built-in default") {
            Ok(p) => p,
            Err(e) => unreachable!("the default strategy is registered: {e}"),
        }
    }

    /// Parses `.theta.toml` text; `source` names it in errors. A file
    /// without a `[merge]` table gives the built-in default.
    pub fn from_toml(text: &str, source: &str) -> Result<Policy, PolicyError> {
        let err = |message: String| PolicyError {
            origin: source.to_owned(),
            message,
        };
        let file: FileToml = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        let Some(merge) = file.merge else {
            return Ok(Policy::builtin());
        };
        let name = merge
            .strategy
            .unwrap_or_else(|| DEFAULT_STRATEGY.to_owned());
        let params = params_from_toml(&merge.params).map_err(|m| err(format!("[merge]: {m}")))?;
        let default = configure(&name, &params, name.clone(), source)
            .map_err(|e| err(format!("[merge]: {}", e.message)))?;
        let mut rules = Vec::new();
        for (i, r) in merge.rules.into_iter().enumerate() {
            let at = format!("[[merge.rules]] #{}", i + 1);
            let texts = match r.pattern {
                Patterns::One(p) => vec![p],
                Patterns::Many(ps) => ps,
            };
            if texts.is_empty() {
                return Err(err(format!("{at}: `pattern` lists no pattern")));
            }
            let patterns = texts
                .iter()
                .map(|p| {
                    glob::Pattern::new(p).map_err(|e| err(format!("{at}: pattern `{p}`: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let params = params_from_toml(&r.params).map_err(|m| err(format!("{at}: {m}")))?;
            let label = format!("{} (rule {})", r.strategy, texts.join(", "));
            let chosen = configure(&r.strategy, &params, label, source)
                .map_err(|e| err(format!("{at}: {}", e.message)))?;
            rules.push(Rule { patterns, chosen });
        }
        Ok(Policy {
            default,
            rules,
            exact: vec![],
        })
    }

    /// `THETA_MERGE_STRATEGY` (a strategy for every tensor, replacing the
    /// file's default and rules) with `THETA_MERGE_PARAMS`
    /// (`name=value,...`; `weight=0.7:0.3` gives ours and theirs), if set.
    pub fn from_env() -> Result<Option<Policy>, PolicyError> {
        let Ok(name) = std::env::var("THETA_MERGE_STRATEGY") else {
            return Ok(None);
        };
        if name.trim().is_empty() {
            return Ok(None);
        }
        let params = std::env::var("THETA_MERGE_PARAMS").unwrap_or_default();
        let list: Vec<&str> = params
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let parsed = parse_assignments(&list).map_err(|message| PolicyError {
            origin: "THETA_MERGE_PARAMS".into(),
            message,
        })?;
        Policy::single(&name, &parsed, "THETA_MERGE_STRATEGY").map(Some)
    }

    /// The strategy for tensor `name`: one chosen for it alone, else the
    /// first rule whose pattern matches, else the default.
    pub fn for_tensor(&self, name: &str) -> &Configured {
        if let Some((_, c)) = self.exact.iter().find(|(n, _)| n == name) {
            return c;
        }
        self.rules
            .iter()
            .find(|r| r.patterns.iter().any(|p| p.matches(name)))
            .map_or(&self.default, |r| &r.chosen)
    }

    /// Uses `chosen` for tensor `name` alone, ahead of every rule.
    pub fn choose(&mut self, name: &str, chosen: Configured) {
        self.exact.retain(|(n, _)| n != name);
        self.exact.push((name.to_owned(), chosen));
    }
}

/// Builds strategy `name` with `params`; `label` names it in messages and
/// `source` in errors.
pub fn configure(
    name: &str,
    params: &Params,
    label: String,
    source: &str,
) -> Result<Configured, PolicyError> {
    let err = |message: String| PolicyError {
        origin: source.to_owned(),
        message,
    };
    let def = strategy::by_name(name).ok_or_else(|| {
        err(format!(
            "unknown strategy `{name}` (known: {})",
            strategy::names()
        ))
    })?;
    let strategy = def.build(params).map_err(err)?;
    Ok(Configured { label, strategy })
}

fn number(v: &toml::Value) -> Option<f64> {
    match v {
        toml::Value::Float(f) => Some(*f),
        toml::Value::Integer(i) => Some(*i as f64),
        _ => None,
    }
}

fn params_from_toml(table: &toml::Table) -> Result<Params, String> {
    let mut out = BTreeMap::new();
    for (k, v) in table {
        let value = if let Some(x) = number(v) {
            Value::Both(x)
        } else if let toml::Value::Table(t) = v {
            let side = |s: &str| t.get(s).and_then(number);
            if t.keys().any(|key| key != "ours" && key != "theirs") {
                return Err(format!(
                    "`{k}`: a per-side value has keys `ours` and `theirs` only"
                ));
            }
            match (side("ours"), side("theirs")) {
                (Some(ours), Some(theirs)) => Value::PerSide { ours, theirs },
                _ => return Err(format!("`{k}`: give numbers for both `ours` and `theirs`")),
            }
        } else {
            return Err(format!(
                "`{k}`: expected a number or {{ ours = .., theirs = .. }}"
            ));
        };
        out.insert(k.clone(), value);
    }
    Ok(out)
}

/// Parses `name=value` assignments (`--param`, `THETA_MERGE_PARAMS`); a
/// value `A:B` gives ours A and theirs B.
pub fn parse_assignments(list: &[&str]) -> Result<Params, String> {
    let mut out = BTreeMap::new();
    for a in list {
        let (k, v) = a
            .split_once('=')
            .ok_or_else(|| format!("`{a}`: expected NAME=VALUE"))?;
        let num = |s: &str| {
            s.trim()
                .parse::<f64>()
                .map_err(|_| format!("`{a}`: `{}` is not a number", s.trim()))
        };
        let value = match v.split_once(':') {
            Some((o, t)) => Value::PerSide {
                ours: num(o)?,
                theirs: num(t)?,
            },
            None => Value::Both(num(v)?),
        };
        out.insert(k.trim().to_owned(), value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vcs::merge::strategy::{Kind, Side};

    #[test]
    fn rules_match_in_order_and_the_default_takes_the_rest() {
        let p = Policy::from_toml(
            r#"
[merge]
strategy = "ties"
density = 0.5
weight = { ours = 0.7, theirs = 0.3 }

[[merge.rules]]
pattern = "*embed_tokens*"
strategy = "theirs"

[[merge.rules]]
pattern = ["*.self_attn.*", "lm_head.*"]
strategy = "manual"

[diff]
something = "ignored by merges"
"#,
            ".theta.toml",
        )
        .expect("parse");
        let kind = |n: &str| p.for_tensor(n).strategy.kind();
        assert_eq!(kind("model.embed_tokens.weight"), Kind::Take(Side::Theirs));
        assert_eq!(kind("model.layers.0.self_attn.q_proj.weight"), Kind::Manual);
        assert_eq!(kind("lm_head.weight"), Kind::Manual);
        assert_eq!(
            kind("model.layers.0.mlp.up_proj.weight"),
            Kind::Compute { needs_base: true }
        );
        assert_eq!(p.for_tensor("x").label, "ties");
        assert!(
            p.for_tensor("lm_head.weight")
                .label
                .contains("rule *.self_attn.*, lm_head.*")
        );
    }

    #[test]
    fn mistakes_name_the_file_and_the_place() {
        let e = Policy::from_toml("[merge]\nstrategy = \"tie\"\n", ".theta.toml")
            .err()
            .expect("unknown");
        assert!(
            e.to_string()
                .starts_with(".theta.toml: [merge]: unknown strategy `tie`"),
            "{e}"
        );
        let e = Policy::from_toml(
            "[merge]\n[[merge.rules]]\npattern = \"*\"\nstrategy = \"ties\"\ndensty = 0.5\n",
            ".theta.toml",
        )
        .err()
        .expect("typo");
        assert!(
            e.to_string().contains("#1") && e.to_string().contains("densty"),
            "{e}"
        );
        assert!(Policy::from_toml("[merge\n", "x").is_err());
        let none = Policy::from_toml("", "x").expect("empty");
        assert_eq!(none.for_tensor("w").label, DEFAULT_STRATEGY);
    }

    #[test]
    fn assignments_parse_per_side_values() {
        let p = parse_assignments(&["density=0.5", "weight=0.7:0.3"]).expect("ok");
        assert_eq!(p["density"], Value::Both(0.5));
        assert_eq!(
            p["weight"],
            Value::PerSide {
                ours: 0.7,
                theirs: 0.3
            }
        );
        assert!(parse_assignments(&["density"]).is_err());
        assert!(parse_assignments(&["density=half"]).is_err());
    }
}

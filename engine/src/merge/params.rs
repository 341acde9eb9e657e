//! Parameter settings and their evaluation for one tensor, as mergekit does:
//!
//! - a scalar: `weight: 0.5`;
//! - a gradient: `density: [1.0, 0.5, 0.2]`, interpolated linearly over the
//!   layers (`t` = layer index / (layers − 1); 0 for tensors outside layers);
//!   booleans and strings are picked, not interpolated;
//! - conditions: `weight: [{filter: self_attn, value: 0.2}, {value: 0.4}]`,
//!   the first whose `filter` is absent, `*`, or a substring of the tensor
//!   name wins; its value may itself be a gradient.
//!
//! A setting that matches nothing leaves the parameter to the next, lower
//! source: a model's own parameters, then its slice's, then the top level.

use serde::Deserialize;

/// A single value as written in YAML.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    /// `true` / `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string (mergekit also reads numbers written as strings, `"1e-3"`).
    Str(String),
}

/// A value, or a gradient of values.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum ScalarOrGradient {
    /// One value.
    Scalar(Scalar),
    /// Values interpolated across layers.
    Gradient(Vec<Scalar>),
}

/// A value applied to tensors whose names contain `filter`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conditional {
    /// Substring of tensor names; absent or `*` matches every tensor.
    #[serde(default)]
    pub filter: Option<String>,
    /// The value where it matches.
    pub value: ScalarOrGradient,
}

/// One parameter's setting, in any of mergekit's forms.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Setting {
    /// A value for every tensor.
    Scalar(Scalar),
    /// A gradient across layers.
    Gradient(Vec<Scalar>),
    /// Values by tensor-name filter, first match wins.
    Conditions(Vec<Conditional>),
    /// One conditional value.
    Condition(Conditional),
}

/// The type a parameter takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A float (integers and numeric strings are accepted).
    Float,
    /// A boolean.
    Bool,
    /// An integer.
    Int,
}

/// A parameter's value for one tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
}

impl Value {
    /// As a float (booleans are 0 or 1).
    pub fn as_f64(self) -> f64 {
        match self {
            Value::Float(x) => x,
            Value::Int(i) => i as f64,
            Value::Bool(b) => f64::from(u8::from(b)),
        }
    }

    /// As a boolean (numbers are true when non-zero).
    pub fn as_bool(self) -> bool {
        match self {
            Value::Bool(b) => b,
            Value::Float(x) => x != 0.0,
            Value::Int(i) => i != 0,
        }
    }
}

impl Scalar {
    fn to_value(&self, kind: Kind) -> Result<Value, String> {
        let bad = || format!("expected {} but got {}", kind_name(kind), self.describe());
        match (kind, self) {
            (Kind::Float, Scalar::Float(x)) => Ok(Value::Float(*x)),
            (Kind::Float, Scalar::Int(i)) => Ok(Value::Float(*i as f64)),
            (Kind::Float, Scalar::Str(s)) => s.trim().parse().map(Value::Float).map_err(|_| bad()),
            (Kind::Int, Scalar::Int(i)) => Ok(Value::Int(*i)),
            (Kind::Int, Scalar::Float(x)) if x.fract() == 0.0 => Ok(Value::Int(*x as i64)),
            (Kind::Bool, Scalar::Bool(b)) => Ok(Value::Bool(*b)),
            (Kind::Bool, Scalar::Str(s)) => match s.to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" | "1" => Ok(Value::Bool(true)),
                "false" | "no" | "off" | "0" => Ok(Value::Bool(false)),
                _ => Err(bad()),
            },
            (Kind::Bool, Scalar::Int(i @ (0 | 1))) => Ok(Value::Bool(*i == 1)),
            _ => Err(bad()),
        }
    }

    fn describe(&self) -> String {
        match self {
            Scalar::Bool(b) => format!("boolean {b}"),
            Scalar::Int(i) => format!("integer {i}"),
            Scalar::Float(x) => format!("number {x}"),
            Scalar::Str(s) => format!("string {s:?}"),
        }
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Float => "a number",
        Kind::Bool => "a boolean",
        Kind::Int => "an integer",
    }
}

/// Evaluates a gradient at `t` ∈ [0, 1].
fn gradient(values: &[Scalar], t: f64, kind: Kind) -> Result<Option<Value>, String> {
    if values.is_empty() {
        return Ok(None);
    }
    let vals: Vec<Value> = values
        .iter()
        .map(|v| v.to_value(kind))
        .collect::<Result<_, _>>()?;
    let t = t.clamp(0.0, 1.0);
    let last = vals.len() - 1;
    if kind != Kind::Float {
        // Discrete values are picked, not interpolated.
        return Ok(Some(vals[(t * last as f64) as usize]));
    }
    let scaled = t * last as f64;
    let i0 = (scaled as usize).min(last);
    let i1 = (i0 + 1).min(last);
    let frac = scaled - i0 as f64;
    Ok(Some(Value::Float(
        (1.0 - frac) * vals[i0].as_f64() + frac * vals[i1].as_f64(),
    )))
}

impl ScalarOrGradient {
    fn evaluate(&self, t: f64, kind: Kind) -> Result<Option<Value>, String> {
        match self {
            ScalarOrGradient::Scalar(s) => s.to_value(kind).map(Some),
            ScalarOrGradient::Gradient(g) => gradient(g, t, kind),
        }
    }
}

impl Conditional {
    fn matches(&self, tensor: &str) -> bool {
        match self.filter.as_deref() {
            None | Some("*") => true,
            Some(f) => tensor.contains(f),
        }
    }
}

impl Setting {
    /// The setting's value for `tensor` at layer position `t`, or `None`
    /// when no condition matches; an error says why a value does not fit.
    pub fn evaluate(&self, tensor: &str, t: f64, kind: Kind) -> Result<Option<Value>, String> {
        match self {
            Setting::Scalar(s) => s.to_value(kind).map(Some),
            Setting::Gradient(g) => gradient(g, t, kind),
            Setting::Condition(c) => {
                if c.matches(tensor) {
                    c.value.evaluate(t, kind)
                } else {
                    Ok(None)
                }
            }
            Setting::Conditions(cs) => match cs.iter().find(|c| c.matches(tensor)) {
                Some(c) => c.value.evaluate(t, kind),
                None => Ok(None),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting(yaml: &str) -> Setting {
        serde_yaml_ng::from_str(yaml).expect("valid setting")
    }

    #[test]
    fn scalars_gradients_and_filters() {
        let f = |s: &Setting, name, t| {
            s.evaluate(name, t, Kind::Float)
                .expect("ok")
                .map(Value::as_f64)
        };
        assert_eq!(f(&setting("0.5"), "x", 0.3), Some(0.5));
        assert_eq!(f(&setting("\"1e-3\""), "x", 0.3), Some(0.001));
        let g = setting("[0, 1, 0.5]");
        assert_eq!(f(&g, "x", 0.0), Some(0.0));
        assert_eq!(f(&g, "x", 0.25), Some(0.5));
        assert_eq!(f(&g, "x", 0.5), Some(1.0));
        assert_eq!(f(&g, "x", 1.0), Some(0.5));
        let c = setting("[{filter: self_attn, value: [0, 1]}, {filter: mlp, value: 0.3}]");
        assert_eq!(
            f(&c, "model.layers.1.self_attn.q_proj.weight", 0.5),
            Some(0.5)
        );
        assert_eq!(f(&c, "model.layers.1.mlp.up_proj.weight", 0.5), Some(0.3));
        assert_eq!(
            f(&c, "model.norm.weight", 0.5),
            None,
            "falls to the next source"
        );
        let star = setting("[{filter: mlp, value: 1}, {filter: '*', value: 2}]");
        assert_eq!(f(&star, "lm_head.weight", 0.0), Some(2.0));
        let one = setting("{filter: embed, value: 0.7}");
        assert_eq!(f(&one, "model.embed_tokens.weight", 0.0), Some(0.7));
    }

    #[test]
    fn booleans_are_picked_and_types_checked() {
        let g = setting("[true, false]");
        assert_eq!(
            g.evaluate("x", 0.4, Kind::Bool),
            Ok(Some(Value::Bool(true)))
        );
        assert_eq!(
            g.evaluate("x", 1.0, Kind::Bool),
            Ok(Some(Value::Bool(false)))
        );
        let e = setting("\"lots\"")
            .evaluate("x", 0.0, Kind::Float)
            .expect_err("not a number");
        assert!(e.contains("string \"lots\""), "{e}");
        assert!(setting("0.5").evaluate("x", 0.0, Kind::Bool).is_err());
    }
}

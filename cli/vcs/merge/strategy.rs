//! Merge strategies: what to do with a tensor both sides changed
//! differently. Each strategy is one [`Strategy`] registered in [`ALL`] with
//! the parameters it accepts; adding one is one entry there.
//!
//! Parameter names follow `git theta merge` and mergekit: `weight` and
//! `density` per side (`ours`, `theirs`), `lambda`, `t`, `seed`, `epsilon`.

use std::collections::BTreeMap;

use theta_engine::DType;
use theta_engine::compute::{Combine, Device, Input, MergeSpec, Sparsify, Term};

/// One of the three versions of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The merge base (common ancestor).
    Base,
    /// The current branch (`%A`, index stage 2).
    Ours,
    /// The branch being merged (`%B`, index stage 3).
    Theirs,
}

impl Side {
    /// `base`, `ours` or `theirs`.
    pub fn name(self) -> &'static str {
        match self {
            Side::Base => "base",
            Side::Ours => "ours",
            Side::Theirs => "theirs",
        }
    }
}

/// What a strategy does, decided before any tensor bytes are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Keep one side's tensor as it is (whatever its shape or dtype).
    Take(Side),
    /// Leave the tensor to the user: a conflict.
    Manual,
    /// Compute a new tensor from both sides (and the base when `needs_base`).
    Compute {
        /// Whether the base's values are needed.
        needs_base: bool,
    },
}

/// A parameter's value: one for both sides, or one per side.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    /// The same value for both sides (or a shared parameter).
    Both(f64),
    /// `{ ours = .., theirs = .. }`.
    PerSide {
        /// For ours.
        ours: f64,
        /// For theirs.
        theirs: f64,
    },
}

/// A strategy's parameters by name.
pub type Params = BTreeMap<String, Value>;

/// The versions of one tensor a computing strategy combines: same dtype
/// (F32, F16 or BF16) and element count; `base` present when it is needed.
pub struct Versions<'a> {
    /// The tensor's name.
    pub name: &'a str,
    /// Its dtype.
    pub dtype: DType,
    /// The base's bytes.
    pub base: Option<&'a [u8]>,
    /// Ours' bytes.
    pub ours: &'a [u8],
    /// Theirs' bytes.
    pub theirs: &'a [u8],
}

/// A merge strategy with its parameters resolved.
pub trait Strategy: Send + Sync {
    /// What it does.
    fn kind(&self) -> Kind;
    /// Computes the merged tensor into `out` (the size of one version).
    /// Only called for [`Kind::Compute`].
    fn compute(&self, device: &Device, v: &Versions<'_>, out: &mut [u8]) -> Result<(), String> {
        let _ = (device, v, out);
        Err("this strategy does not compute tensors".into())
    }
}

/// A registered strategy: its name, parameters and constructor.
pub struct Def {
    /// Name in `.theta.toml`, `--strategy` and `THETA_MERGE_STRATEGY`.
    pub name: &'static str,
    /// One line for `--help` and error messages.
    pub about: &'static str,
    /// Parameters accepted (per-side ones are `weight` and `density`).
    pub params: &'static [&'static str],
    build: fn(&Args<'_>) -> Result<Box<dyn Strategy>, String>,
}

impl Def {
    /// Builds the strategy from `params`, rejecting unknown or bad ones.
    pub fn build(&self, params: &Params) -> Result<Box<dyn Strategy>, String> {
        for (k, v) in params {
            if !self.params.contains(&k.as_str()) {
                let expected = if self.params.is_empty() {
                    "it takes none".to_owned()
                } else {
                    format!("expected {}", self.params.join(", "))
                };
                return Err(format!(
                    "unknown parameter `{k}` for strategy `{}` ({expected})",
                    self.name
                ));
            }
            if matches!(v, Value::PerSide { .. }) && !PER_SIDE.contains(&k.as_str()) {
                return Err(format!(
                    "parameter `{k}` of `{}` takes one value, not one per side",
                    self.name
                ));
            }
        }
        (self.build)(&Args { params })
    }
}

/// Parameters that may differ between ours and theirs.
const PER_SIDE: &[&str] = &["weight", "density"];

struct Args<'a> {
    params: &'a Params,
}

impl Args<'_> {
    fn shared(&self, name: &str, default: f64) -> Result<f64, String> {
        match self.params.get(name) {
            None => Ok(default),
            Some(Value::Both(v)) if v.is_finite() => Ok(*v),
            Some(_) => Err(format!("parameter `{name}` must be a finite number")),
        }
    }

    fn per_side(&self, name: &str, default: f64) -> Result<[f32; 2], String> {
        let [o, t] = match self.params.get(name) {
            None => [default; 2],
            Some(Value::Both(v)) => [*v; 2],
            Some(Value::PerSide { ours, theirs }) => [*ours, *theirs],
        };
        if !(o.is_finite() && t.is_finite()) {
            return Err(format!("parameter `{name}` must be finite"));
        }
        Ok([o as f32, t as f32])
    }

    fn density(&self) -> Result<[f32; 2], String> {
        let d = self.per_side("density", 1.0)?;
        if d.iter().any(|x| !(0.0..=1.0).contains(x)) {
            return Err("`density` must be between 0 and 1".into());
        }
        Ok(d)
    }

    fn seed(&self) -> Result<u64, String> {
        let s = self.shared("seed", 0.0)?;
        if s < 0.0 || s.fract() != 0.0 || s > 2f64.powi(53) {
            return Err("`seed` must be a non-negative integer".into());
        }
        Ok(s as u64)
    }
}

/// Every strategy, by name.
pub static ALL: &[Def] = &[
    Def {
        name: "ours",
        about: "keep ours' tensor",
        params: &[],
        build: |_| Ok(Box::new(TakeSide(Side::Ours))),
    },
    Def {
        name: "theirs",
        about: "keep theirs' tensor",
        params: &[],
        build: |_| Ok(Box::new(TakeSide(Side::Theirs))),
    },
    Def {
        name: "base",
        about: "keep the merge base's tensor (drop both changes)",
        params: &[],
        build: |_| Ok(Box::new(TakeSide(Side::Base))),
    },
    Def {
        name: "manual",
        about: "leave the tensor to the user (a conflict)",
        params: &[],
        build: |_| Ok(Box::new(Manual)),
    },
    Def {
        name: "average",
        about: "weighted average of ours and theirs, weights normalised (mergekit linear)",
        params: &["weight"],
        build: |a| {
            let w = a.per_side("weight", 1.0)?;
            let sum = w[0] + w[1];
            if sum.abs() < 1e-12 {
                return Err("the weights of `average` sum to zero".into());
            }
            Ok(Box::new(Arith {
                weight: [w[0] / sum, w[1] / sum],
                density: [1.0; 2],
                lambda: 1.0,
                sparsify: Sparsify::None,
                combine: Combine::Linear,
                with_base: false,
            }))
        },
    },
    Def {
        name: "task_arithmetic",
        about: "base + lambda * (weight_ours * (ours - base) + weight_theirs * (theirs - base))",
        params: &["weight", "lambda"],
        build: |a| task_vectors(a, Sparsify::None, Combine::Linear),
    },
    Def {
        name: "ties",
        about: "TIES: trim each side's task vector to `density`, elect signs, disjoint mean",
        params: &["weight", "density", "lambda"],
        build: |a| task_vectors(a, Sparsify::Magnitude, Combine::Ties),
    },
    Def {
        name: "dare_ties",
        about: "DARE drop-and-rescale of each task vector (seeded), then TIES sign election",
        params: &["weight", "density", "lambda", "seed"],
        build: |a| task_vectors(a, Sparsify::Random { seed: a.seed()? }, Combine::Ties),
    },
    Def {
        name: "dare_linear",
        about: "DARE drop-and-rescale of each task vector (seeded), then a weighted sum",
        params: &["weight", "density", "lambda", "seed"],
        build: |a| task_vectors(a, Sparsify::Random { seed: a.seed()? }, Combine::Linear),
    },
    Def {
        name: "slerp",
        about: "spherical interpolation from ours (t = 0) to theirs (t = 1)",
        params: &["t", "epsilon"],
        build: |a| {
            let t = a.shared("t", 0.5)?;
            Ok(Box::new(Slerp {
                t: t as f32,
                eps: a.shared("epsilon", 1e-8)?,
            }))
        },
    },
];

/// The task-arithmetic family: deltas from the base, thinned and combined.
fn task_vectors(
    a: &Args<'_>,
    sparsify: Sparsify,
    combine: Combine,
) -> Result<Box<dyn Strategy>, String> {
    Ok(Box::new(Arith {
        weight: a.per_side("weight", 1.0)?,
        density: a.density()?,
        lambda: a.shared("lambda", 1.0)? as f32,
        sparsify,
        combine,
        with_base: true,
    }))
}

/// Looks a strategy up by name (`-` and `_` alike; `linear` is `average`).
pub fn by_name(name: &str) -> Option<&'static Def> {
    let n = name.trim().to_ascii_lowercase().replace('-', "_");
    let n = if n == "linear" { "average".into() } else { n };
    ALL.iter().find(|d| d.name == n)
}

/// The names of every strategy, for messages.
pub fn names() -> String {
    ALL.iter().map(|d| d.name).collect::<Vec<_>>().join(", ")
}

struct TakeSide(Side);

impl Strategy for TakeSide {
    fn kind(&self) -> Kind {
        Kind::Take(self.0)
    }
}

struct Manual;

impl Strategy for Manual {
    fn kind(&self) -> Kind {
        Kind::Manual
    }
}

/// The task-arithmetic family and weighted averages: one
/// [`Device::merge`] call.
struct Arith {
    weight: [f32; 2],
    density: [f32; 2],
    lambda: f32,
    sparsify: Sparsify,
    combine: Combine,
    with_base: bool,
}

impl Strategy for Arith {
    fn kind(&self) -> Kind {
        Kind::Compute {
            needs_base: self.with_base,
        }
    }

    fn compute(&self, device: &Device, v: &Versions<'_>, out: &mut [u8]) -> Result<(), String> {
        let term = |bytes, i: usize| Term {
            input: Input::new(v.dtype, bytes),
            weight: self.weight[i],
            density: self.density[i],
        };
        let terms = [term(v.ours, 0), term(v.theirs, 1)];
        let base = match (self.with_base, v.base) {
            (true, Some(b)) => Some(Input::new(v.dtype, b)),
            (true, None) => return Err("needs the merge base's tensor".into()),
            (false, _) => None,
        };
        let spec = MergeSpec {
            tensor: v.name,
            terms: &terms,
            base,
            sparsify: self.sparsify,
            combine: self.combine,
            lambda: self.lambda,
        };
        device.merge(&spec, out, v.dtype).map_err(|e| e.to_string())
    }
}

struct Slerp {
    t: f32,
    eps: f64,
}

impl Strategy for Slerp {
    fn kind(&self) -> Kind {
        Kind::Compute { needs_base: false }
    }

    fn compute(&self, device: &Device, v: &Versions<'_>, out: &mut [u8]) -> Result<(), String> {
        let a = Input::new(v.dtype, v.ours);
        let b = Input::new(v.dtype, v.theirs);
        device
            .slerp(v.name, a, b, self.t, self.eps, out, v.dtype)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(name: &str, params: &[(&str, Value)]) -> Result<Box<dyn Strategy>, String> {
        let p: Params = params.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
        by_name(name).ok_or("unknown")?.build(&p)
    }

    #[test]
    fn parameters_are_checked_by_name_and_kind() {
        assert!(build("ties", &[("density", Value::Both(0.5))]).is_ok());
        let err = build("ties", &[("densty", Value::Both(0.5))])
            .err()
            .expect("typo");
        assert!(err.contains("densty") && err.contains("density"), "{err}");
        let err = build(
            "slerp",
            &[(
                "t",
                Value::PerSide {
                    ours: 0.1,
                    theirs: 0.2,
                },
            )],
        )
        .err()
        .expect("per side");
        assert!(err.contains("one value"), "{err}");
        assert!(build("ties", &[("density", Value::Both(1.5))]).is_err());
        assert!(build("dare_ties", &[("seed", Value::Both(-1.0))]).is_err());
        assert!(build("ours", &[("weight", Value::Both(1.0))]).is_err());
        assert_eq!(
            by_name("Task-Arithmetic").map(|d| d.name),
            Some("task_arithmetic")
        );
        assert_eq!(by_name("linear").map(|d| d.name), Some("average"));
    }

    #[test]
    fn average_of_identical_tensors_is_the_tensor_and_weights_normalise() {
        let x: Vec<f32> = (0..100).map(|i| i as f32 * 0.25 - 3.0).collect();
        let y: Vec<f32> = x.iter().map(|v| v + 1.0).collect();
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let (bx, by) = (bytes(&x), bytes(&y));
        let v = Versions {
            name: "w",
            dtype: DType::F32,
            base: None,
            ours: &bx,
            theirs: &bx,
        };
        let s = build(
            "average",
            &[(
                "weight",
                Value::PerSide {
                    ours: 3.0,
                    theirs: 1.0,
                },
            )],
        )
        .expect("average");
        let mut out = vec![0u8; bx.len()];
        s.compute(&Device::Cpu, &v, &mut out).expect("compute");
        assert_eq!(out, bx);
        let v = Versions { theirs: &by, ..v };
        s.compute(&Device::Cpu, &v, &mut out).expect("compute");
        let got: Vec<f32> = out
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        for (g, a) in got.iter().zip(&x) {
            assert!((g - (a + 0.25)).abs() < 1e-5, "{g} vs {}", a + 0.25);
        }
    }

    #[test]
    fn base_relative_strategies_refuse_a_missing_base() {
        let x = vec![0u8; 16];
        let v = Versions {
            name: "w",
            dtype: DType::F32,
            base: None,
            ours: &x,
            theirs: &x,
        };
        let s = build("task_arithmetic", &[]).expect("ta");
        assert_eq!(s.kind(), Kind::Compute { needs_base: true });
        assert!(s.compute(&Device::Cpu, &v, &mut [0u8; 16]).is_err());
    }
}

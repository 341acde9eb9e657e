//! The arithmetic of each merge method, as mergekit 0.1.5 defines it, on a
//! compute [`Device`]: one [`TensorMerge`] ([`DeviceMerge`]) that looks the
//! method up in [`ARITHMETIC`] by name.
//!
//! Element-wise work goes through [`Device::merge_with`] and
//! [`Device::slerp`]; the statistics some methods need first (norms, cosines)
//! through the device's fused reductions. Two parts run on the CPU whatever
//! the device, over f32 copies of the inputs: DELLA's per-row ranking (a sort)
//! and the per-row variants of nuslerp and model_stock (`nuslerp_flatten:
//! false`, `filter_wise: true`). `docs/merge.md` lists the deliberate
//! differences from mergekit.

use std::borrow::Cow;

use super::methods::MethodSpec;
use super::plan::TensorPlan;
use super::run::TensorMerge;
use crate::compute::{
    Combine, ComputeError, Device, Input, MergeOptions, MergeSpec, Rescale, Sparsify, Term, ops,
};
use crate::tensor::TensorView;
use crate::{DType, Error, Result};

/// Computes a method's tensors on a device.
pub struct DeviceMerge {
    device: Device,
    seed: u64,
    method: &'static MethodSpec,
    compute: MethodFn,
}

/// A merged tensor's bytes, or what went wrong.
type Out = std::result::Result<Vec<u8>, ComputeError>;

/// One method's arithmetic: the merged tensor in `job.out_dtype`.
type MethodFn = fn(&DeviceMerge, &Job<'_>) -> Out;

/// Every method with arithmetic, by name (passthrough is [`super::Passthrough`]).
const ARITHMETIC: &[(&str, MethodFn)] = &[
    ("linear", linear),
    ("task_arithmetic", task_arithmetic),
    ("ties", task_arithmetic),
    ("dare_ties", task_arithmetic),
    ("dare_linear", task_arithmetic),
    ("breadcrumbs", task_arithmetic),
    ("breadcrumbs_ties", task_arithmetic),
    ("della", task_arithmetic),
    ("della_linear", task_arithmetic),
    ("slerp", slerp),
    ("nuslerp", nuslerp),
    ("model_stock", model_stock),
    ("passthrough", passthrough),
];

impl DeviceMerge {
    /// The merger for `method` on `device`; `seed` keys the random draws of
    /// DARE and DELLA. `None` when the method has no arithmetic here.
    pub fn new(method: &'static MethodSpec, device: Device, seed: u64) -> Option<Self> {
        let compute = ARITHMETIC.iter().find(|(n, _)| *n == method.name)?.1;
        Some(DeviceMerge {
            device,
            seed,
            method,
            compute,
        })
    }

    /// The device it runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }
}

/// One output tensor's inputs, all of one float dtype.
struct Job<'a> {
    plan: &'a TensorPlan,
    name: &'a str,
    inputs: Vec<Input<'a>>,
    shape: &'a [u64],
    out_dtype: DType,
}

impl Job<'_> {
    fn n(&self) -> usize {
        self.inputs.first().map_or(0, Input::len)
    }

    fn base(&self) -> Option<Input<'_>> {
        self.plan.base.map(|b| self.inputs[b])
    }

    /// The inputs other than the base, with their positions in the plan.
    fn non_base(&self) -> impl Iterator<Item = (usize, Input<'_>)> {
        let base = self.plan.base;
        self.inputs
            .iter()
            .enumerate()
            .filter(move |(i, _)| Some(*i) != base)
            .map(|(i, x)| (i, *x))
    }

    fn shared(&self, name: &str) -> Option<f64> {
        self.plan.params.get(name).map(|v| v.as_f64())
    }

    fn flag(&self, name: &str) -> bool {
        self.plan.params.get(name).is_some_and(|v| v.as_bool())
    }

    fn per(&self, input: usize, name: &str, default: f64) -> f64 {
        self.plan.inputs[input]
            .params
            .get(name)
            .map_or(default, |v| v.as_f64())
    }

    fn out(&self) -> Vec<u8> {
        vec![0u8; self.n() * self.out_dtype.size()]
    }

    fn invalid(&self, detail: impl Into<String>) -> ComputeError {
        ComputeError::Invalid {
            tensor: self.name.to_owned(),
            detail: detail.into(),
        }
    }

    fn encode(&self, xs: &[f32]) -> Out {
        let mut out = self.out();
        crate::convert::from_f32(self.name, xs, &mut out, self.out_dtype)
            .map_err(|e| self.invalid(e.to_string()))?;
        Ok(out)
    }

    fn decode(&self, x: Input<'_>) -> std::result::Result<Vec<f32>, ComputeError> {
        let mut v = vec![0f32; x.len()];
        crate::convert::to_f32(self.name, x.bytes, x.dtype, &mut v)
            .map_err(|e| self.invalid(e.to_string()))?;
        Ok(v)
    }
}

impl TensorMerge for DeviceMerge {
    fn merge(&self, plan: &TensorPlan, views: &[TensorView<'_>]) -> Result<Vec<u8>> {
        let name = plan.output.name.as_str();
        let fail = |msg: String| Error::usage("<merge>", Some(name), msg);
        if self.method.name == "passthrough" {
            return super::Passthrough.merge(plan, views);
        }
        if views.is_empty() || views.len() != plan.inputs.len() {
            return Err(fail(format!("{} needs inputs", self.method.name)));
        }
        // Integer tensors (position ids, masks) are not merged: they must agree.
        if !plan.output.dtype.is_float() {
            let first = views[0];
            if views.iter().any(|v| v.data != first.data) {
                return Err(fail(format!(
                    "{} tensors differ between models and cannot be merged",
                    first.info.dtype
                )));
            }
            return Ok(first.data.to_vec());
        }
        // Mixed input dtypes (and F64, which the kernels do not take) are
        // merged in F32.
        let dtype = views[0].info.dtype;
        let kernel_dtype = matches!(dtype, DType::F32 | DType::F16 | DType::BF16);
        let bytes: Vec<Cow<'_, [u8]>> =
            if kernel_dtype && views.iter().all(|v| v.info.dtype == dtype) {
                views.iter().map(|v| Cow::Borrowed(v.data)).collect()
            } else {
                views
                    .iter()
                    .map(|v| v.to_dtype(DType::F32).map(Cow::Owned))
                    .collect::<Result<_>>()?
            };
        let in_dtype = if bytes.iter().all(|b| matches!(b, Cow::Borrowed(_))) {
            dtype
        } else {
            DType::F32
        };
        let job = Job {
            plan,
            name,
            inputs: bytes.iter().map(|b| Input::new(in_dtype, b)).collect(),
            shape: &plan.output.shape,
            out_dtype: plan.output.dtype,
        };
        (self.compute)(self, &job).map_err(|e| fail(strip_tensor(&e, name)))
    }
}

/// The error's text without the "tensor `x`: " prefix the caller adds again.
fn strip_tensor(e: &ComputeError, name: &str) -> String {
    let s = e.to_string();
    s.strip_prefix(&format!("tensor `{name}`: "))
        .map_or(s.clone(), str::to_owned)
}

/// The plain weighted pass: `base + λ·combine(wᵢ(xᵢ − base))`, or
/// `λ·combine(wᵢxᵢ)` without a base, nothing trimmed, into `out_dtype`.
fn weighted(
    device: &Device,
    tensor: &str,
    terms: &[(Input<'_>, f32)],
    base: Option<Input<'_>>,
    combine: Combine,
    lambda: f32,
    out_dtype: DType,
) -> Out {
    let terms: Vec<Term<'_>> = terms
        .iter()
        .map(|&(input, weight)| Term {
            input,
            weight,
            density: 1.0,
        })
        .collect();
    let spec = MergeSpec {
        tensor,
        terms: &terms,
        base,
        sparsify: Sparsify::None,
        combine,
        lambda,
    };
    let n = terms.first().map_or(0, |t| t.input.len());
    let mut out = vec![0u8; n * out_dtype.size()];
    device.merge(&spec, &mut out, out_dtype)?;
    Ok(out)
}

fn passthrough(_: &DeviceMerge, job: &Job<'_>) -> Out {
    Err(job.invalid("passthrough is not device arithmetic"))
}

/// mergekit's `linear`: Σ wᵢxᵢ (over Σ wᵢ when `normalize`).
fn linear(m: &DeviceMerge, job: &Job<'_>) -> Out {
    let terms: Vec<(Input<'_>, f32)> = job
        .inputs
        .iter()
        .enumerate()
        .map(|(i, x)| (*x, job.per(i, "weight", 1.0) as f32))
        .collect();
    let combine = if job.flag("normalize") {
        Combine::LinearMean
    } else {
        Combine::Linear
    };
    weighted(
        &m.device,
        job.name,
        &terms,
        None,
        combine,
        1.0,
        job.out_dtype,
    )
}

/// mergekit's generalized task arithmetic: task_arithmetic, ties, dare_*,
/// breadcrumbs*, della*. Each model's delta from the base is sparsified
/// (optionally rescaled to its L1 norm), weighted, combined with or without
/// sign consensus, optionally divided by the weights, scaled by λ and added
/// to the base.
fn task_arithmetic(m: &DeviceMerge, job: &Job<'_>) -> Out {
    let base = job
        .base()
        .ok_or_else(|| job.invalid("this method needs a base model"))?;
    let others: Vec<(usize, Input<'_>)> = job.non_base().collect();
    if others.is_empty() {
        let only = [(base, 1.0)];
        return weighted(
            &m.device,
            job.name,
            &only,
            None,
            Combine::Linear,
            1.0,
            job.out_dtype,
        );
    }
    let name = m.method.name;
    let consensus = matches!(name, "ties" | "dare_ties" | "breadcrumbs_ties" | "della");
    let normalize = job.flag("normalize");
    let combine = match (consensus, normalize) {
        (true, true) => Combine::Ties,
        (true, false) => Combine::TiesSum,
        (false, true) => Combine::LinearMean,
        (false, false) => Combine::Linear,
    };
    let rescale = if job.flag("rescale") {
        Rescale::L1
    } else {
        Rescale::None
    };
    let lambda = job.shared("lambda").unwrap_or(1.0) as f32;
    let terms: Vec<Term<'_>> = others
        .iter()
        .map(|&(i, x)| Term {
            input: x,
            weight: job.per(i, "weight", 1.0) as f32,
            density: job.per(i, "density", 1.0) as f32,
        })
        .collect();
    if name.starts_with("della") {
        return della(m, job, base, &others, &terms, combine, rescale, lambda);
    }
    let sparsify = match name {
        "ties" => Sparsify::Magnitude,
        "dare_ties" | "dare_linear" => Sparsify::Random { seed: m.seed },
        "breadcrumbs" | "breadcrumbs_ties" => Sparsify::Outliers,
        _ => Sparsify::None,
    };
    let gamma: Vec<f32> = others
        .iter()
        .map(|&(i, _)| job.per(i, "gamma", 0.01) as f32)
        .collect();
    let spec = MergeSpec {
        tensor: job.name,
        terms: &terms,
        base: Some(base),
        sparsify,
        combine,
        lambda,
    };
    let opts = MergeOptions {
        rescale,
        gamma: &gamma,
    };
    let mut out = job.out();
    m.device.merge_with(&spec, &opts, &mut out, job.out_dtype)?;
    Ok(out)
}

/// DELLA: within each row (mergekit ranks along dimension 1, a 1-D tensor
/// being one row), the delta of rank r (1 = smallest |δ|) of L is kept with
/// probability `density − ε + 2ε·(r−1)/(L−1)`; kept deltas are rescaled to
/// the L1 norm of the whole delta when `rescale`. The thinned deltas are
/// then combined on the device like any other.
#[allow(clippy::too_many_arguments)]
fn della(
    m: &DeviceMerge,
    job: &Job<'_>,
    base: Input<'_>,
    others: &[(usize, Input<'_>)],
    terms: &[Term<'_>],
    combine: Combine,
    rescale: Rescale,
    lambda: f32,
) -> Out {
    let b = job.decode(base)?;
    let seed = m.seed;
    let name_hash = ops::name_hash(job.name);
    let mut thinned: Vec<Vec<f32>> = Vec::with_capacity(others.len());
    for (model, (&(i, x), term)) in others.iter().zip(terms).enumerate() {
        let mut d = job.decode(x)?;
        d.iter_mut().zip(&b).for_each(|(v, b)| *v -= b);
        let density = f64::from(term.density);
        let epsilon = job.per(i, "epsilon", 0.15);
        if density <= 0.0 {
            d.fill(0.0);
        } else if density < 1.0 {
            if density + epsilon >= 1.0 || density - epsilon <= 0.0 {
                return Err(job.invalid(format!(
                    "DELLA needs density ± epsilon inside (0, 1); density {density}, epsilon {epsilon}"
                )));
            }
            let lanes = Lanes::along(job.shape, if job.shape.len() < 2 { 0 } else { 1 });
            let mut keep = vec![false; d.len()];
            lanes.for_each(|idx| {
                let mut order: Vec<usize> = (0..idx.len()).collect();
                order.sort_by(|&a, &c| d[idx[a]].abs().total_cmp(&d[idx[c]].abs()));
                let span = (idx.len().max(2) - 1) as f32;
                for (rank, &o) in order.iter().enumerate() {
                    let p =
                        (density - epsilon) as f32 + (rank as f32 / span) * 2.0 * epsilon as f32;
                    let at = idx[o];
                    let below = (f64::from(p) * 4_294_967_296.0).clamp(0.0, u32::MAX as f64) as u32;
                    keep[at] = ops::draw(seed, name_hash, model as u32, at as u64) < below;
                }
            });
            let (mut before, mut after) = (0f64, 0f64);
            for (v, &k) in d.iter_mut().zip(&keep) {
                before += f64::from(v.abs());
                if !k {
                    *v = 0.0;
                }
                after += f64::from(v.abs());
            }
            if rescale == Rescale::L1 && before >= 1e-7 && after >= 1e-7 {
                let s = (before / after) as f32;
                d.iter_mut().for_each(|v| *v *= s);
            }
        }
        thinned.push(d);
    }
    let thinned_terms: Vec<(Input<'_>, f32)> = thinned
        .iter()
        .zip(terms)
        .map(|(d, t)| (Input::f32(d), t.weight))
        .collect();
    let mixed = weighted(
        &m.device,
        job.name,
        &thinned_terms,
        None,
        combine,
        lambda,
        DType::F32,
    )?;
    let add = [(Input::f32(&b), 1.0), (Input::new(DType::F32, &mixed), 1.0)];
    weighted(
        &m.device,
        job.name,
        &add,
        None,
        Combine::Linear,
        1.0,
        job.out_dtype,
    )
}

/// mergekit's `slerp` from the base (t = 0) to the other model (t = 1).
fn slerp(m: &DeviceMerge, job: &Job<'_>) -> Out {
    let base = job
        .base()
        .ok_or_else(|| job.invalid("slerp needs a base model"))?;
    let (_, other) = job
        .non_base()
        .next()
        .ok_or_else(|| job.invalid("slerp needs a model besides the base"))?;
    let t = job
        .shared("t")
        .ok_or_else(|| job.invalid("slerp needs `t`"))? as f32;
    let mut out = job.out();
    m.device
        .slerp(job.name, base, other, t, 0.0005, &mut out, job.out_dtype)?;
    Ok(out)
}

/// The spherical coefficients of (v0, v1) at `t` given their norms and inner
/// product, as mergekit's nuslerp computes them (norms clamped to 1e-7;
/// linear when 1 − cos² ≤ 1e-16).
fn nuslerp_coefficients(t: f64, n0: f64, n1: f64, dot: f64) -> (f32, f32) {
    let cos = (dot / (n0.max(1e-7) * n1.max(1e-7))).clamp(-1.0, 1.0);
    if 1.0 - cos * cos <= 1e-16 {
        return ((1.0 - t) as f32, t as f32);
    }
    let theta = cos.acos();
    let sin = theta.sin();
    (
        (((1.0 - t) * theta).sin() / sin) as f32,
        ((t * theta).sin() / sin) as f32,
    )
}

/// mergekit's `nuslerp`: spherical interpolation of two models (or of their
/// task vectors when there is a base) at t = w₁ / (w₀ + w₁).
fn nuslerp(m: &DeviceMerge, job: &Job<'_>) -> Out {
    let others: Vec<(usize, Input<'_>)> = job.non_base().collect();
    let [(i0, x0), (i1, x1)] = others[..] else {
        return Err(job.invalid("nuslerp takes exactly two models besides the base"));
    };
    let (w0, w1) = (job.per(i0, "weight", 1.0), job.per(i1, "weight", 1.0));
    let t = if (w0 + w1).abs() < 1e-6 {
        0.5
    } else {
        w1 / (w0 + w1)
    };
    let base = job.base();
    if !job.flag("nuslerp_flatten") {
        let axis = if job.flag("nuslerp_row_wise") {
            0
        } else {
            job.shape.len().saturating_sub(1)
        };
        return nuslerp_lanes(job, t, x0, x1, base, axis);
    }
    let s = m.device.norms_dot(job.name, x0, x1, base)?;
    let (c0, c1) = nuslerp_coefficients(t, s.norm_a, s.norm_b, s.dot);
    let terms = [(x0, c0), (x1, c1)];
    weighted(
        &m.device,
        job.name,
        &terms,
        base,
        Combine::Linear,
        1.0,
        job.out_dtype,
    )
}

/// nuslerp with `nuslerp_flatten: false`: one interpolation per vector
/// along `axis` (the last one, or the first with `nuslerp_row_wise`).
fn nuslerp_lanes(
    job: &Job<'_>,
    t: f64,
    x0: Input<'_>,
    x1: Input<'_>,
    base: Option<Input<'_>>,
    axis: usize,
) -> Out {
    let b = base.map(|b| job.decode(b)).transpose()?;
    let mut v0 = job.decode(x0)?;
    let mut v1 = job.decode(x1)?;
    if let Some(b) = &b {
        v0.iter_mut().zip(b).for_each(|(v, b)| *v -= b);
        v1.iter_mut().zip(b).for_each(|(v, b)| *v -= b);
    }
    let mut out = b.unwrap_or_else(|| vec![0.0; v0.len()]);
    Lanes::along(job.shape, axis).for_each(|idx| {
        let (mut n0, mut n1, mut dot) = (0f64, 0f64, 0f64);
        for &k in idx {
            let (a, c) = (f64::from(v0[k]), f64::from(v1[k]));
            n0 += a * a;
            n1 += c * c;
            dot += a * c;
        }
        let (c0, c1) = nuslerp_coefficients(t, n0.sqrt(), n1.sqrt(), dot);
        for &k in idx {
            out[k] += c0 * v0[k] + c1 * v1[k];
        }
    });
    job.encode(&out)
}

/// model_stock's interpolation ratio from the mean pairwise cosine of the
/// task vectors: t = N·cos / (1 + (N−1)·cos), 0 where that is singular.
fn stock_ratio(n: usize, mean_cos: f64) -> f64 {
    let den = 1.0 + (n as f64 - 1.0) * mean_cos;
    if den.abs() < 1e-6 {
        0.0
    } else {
        n as f64 * mean_cos / den
    }
}

/// mergekit's `model_stock`: t·mean(models) + (1−t)·base.
fn model_stock(m: &DeviceMerge, job: &Job<'_>) -> Out {
    let base = job
        .base()
        .ok_or_else(|| job.invalid("model_stock needs a base model"))?;
    let xs: Vec<Input<'_>> = job.non_base().map(|(_, x)| x).collect();
    let n = xs.len();
    if n < 2 {
        return Err(job.invalid("model_stock needs at least two models besides the base"));
    }
    if job.flag("filter_wise") {
        return model_stock_lanes(job, base, &xs);
    }
    let cos = m.device.pairwise_cosine(job.name, base, &xs)?;
    let mut sum = 0.0;
    let mut pairs = 0usize;
    for i in 0..n {
        for j in i + 1..n {
            sum += cos[i * n + j];
            pairs += 1;
        }
    }
    let t = stock_ratio(n, sum / pairs as f64);
    let mut terms: Vec<(Input<'_>, f32)> = xs.iter().map(|x| (*x, (t / n as f64) as f32)).collect();
    terms.push((base, (1.0 - t) as f32));
    weighted(
        &m.device,
        job.name,
        &terms,
        None,
        Combine::Linear,
        1.0,
        job.out_dtype,
    )
}

/// model_stock with `filter_wise: true`: one ratio per vector along the last
/// axis (a 1-D tensor is one vector).
fn model_stock_lanes(job: &Job<'_>, base: Input<'_>, xs: &[Input<'_>]) -> Out {
    let b = job.decode(base)?;
    let vs: Vec<Vec<f32>> = xs
        .iter()
        .map(|x| job.decode(*x))
        .collect::<std::result::Result<_, ComputeError>>()?;
    let n = xs.len();
    let mut out = b.clone();
    // f32 throughout, as mergekit: short rows make t sensitive to rounding.
    let delta = |i: usize, k: usize| vs[i][k] - b[k];
    Lanes::along(job.shape, job.shape.len().saturating_sub(1)).for_each(|idx| {
        let norms: Vec<f32> = (0..n)
            .map(|i| idx.iter().map(|&k| delta(i, k).powi(2)).sum::<f32>().sqrt())
            .collect();
        let (mut sum, mut pairs) = (0f32, 0usize);
        for i in 0..n {
            for j in i + 1..n {
                let dot: f32 = idx.iter().map(|&k| delta(i, k) * delta(j, k)).sum();
                sum += (dot / (norms[i] * norms[j]).max(1e-6)).clamp(-1.0, 1.0);
                pairs += 1;
            }
        }
        let cos = sum / pairs as f32;
        let den = 1.0 + (n as f32 - 1.0) * cos;
        let t = if den.abs() < 1e-6 {
            0.0
        } else {
            n as f32 * cos / den
        };
        for &k in idx {
            let avg = vs.iter().map(|v| v[k]).sum::<f32>() / n as f32;
            out[k] = t * avg + (1.0 - t) * b[k];
        }
    });
    job.encode(&out)
}

/// The vectors of a row-major tensor along one axis: for every position of
/// the other axes, the element indices along `axis`.
struct Lanes {
    outer: usize,
    len: usize,
    inner: usize,
}

impl Lanes {
    fn along(shape: &[u64], axis: usize) -> Lanes {
        let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        if dims.is_empty() {
            return Lanes {
                outer: 1,
                len: 1,
                inner: 1,
            };
        }
        let axis = axis.min(dims.len() - 1);
        Lanes {
            outer: dims[..axis].iter().product(),
            len: dims[axis],
            inner: dims[axis + 1..].iter().product(),
        }
    }

    fn for_each(&self, mut f: impl FnMut(&[usize])) {
        let mut idx = vec![0usize; self.len];
        for o in 0..self.outer {
            for i in 0..self.inner {
                for (r, slot) in idx.iter_mut().enumerate() {
                    *slot = (o * self.len + r) * self.inner + i;
                }
                f(&idx);
            }
        }
    }
}

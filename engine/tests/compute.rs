//! Every kernel on every backend from one test body (`device_test!`): the
//! CPU always; the GPU when an adapter is found (Mesa lavapipe in CI), which
//! says so when there is none and fails when `THETA_REQUIRE_GPU=1`.

use theta_engine::DType;
use theta_engine::compute::{Combine, ComputeError, Device, Input, MergeSpec, Sparsify, Term};

/// The devices to run on: the CPU, plus the GPU when one opens.
fn devices() -> Vec<Device> {
    let mut v = vec![Device::Cpu];
    match Device::gpu() {
        Ok(d) => v.push(d),
        // A build without the `gpu` feature has nothing to require.
        Err(e @ ComputeError::NotCompiled) => eprintln!("GPU variant skipped: {e}"),
        Err(e) => {
            assert!(
                std::env::var("THETA_REQUIRE_GPU").as_deref() != Ok("1"),
                "THETA_REQUIRE_GPU=1 but {e}"
            );
            eprintln!("GPU variant skipped: {e}");
        }
    }
    v
}

/// Runs the body once per device and checks the results agree with the CPU's.
macro_rules! device_test {
    ($name:ident, |$dev:ident| $body:expr, |$cpu:ident, $other:ident| $cmp:expr) => {
        #[test]
        fn $name() {
            let runs: Vec<_> = devices()
                .into_iter()
                .map(|$dev| ($dev.label(), $body))
                .collect();
            let $cpu = &runs[0].1;
            for (label, $other) in &runs[1..] {
                eprintln!("comparing cpu with {label}");
                $cmp;
            }
        }
    };
}

fn vals(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let h = theta_engine::compute::ops::mix32(i as u32 ^ seed.wrapping_mul(0x9e37_79b9));
            (h as f32 / u32::MAX as f32 - 0.5) * 4.0
        })
        .collect()
}

fn encode(dtype: DType, xs: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; xs.len() * dtype.size()];
    theta_engine::convert::from_f32("t", xs, &mut out, dtype).expect("encode");
    out
}

fn same_bits(a: &[u8], b: &[u8], dtype: DType) {
    assert_eq!(a.len(), b.len());
    let s = dtype.size();
    for (i, (x, y)) in a.chunks(s).zip(b.chunks(s)).enumerate() {
        if x != y {
            let mut fx = [0f32; 1];
            let mut fy = [0f32; 1];
            theta_engine::convert::to_f32("t", x, dtype, &mut fx).expect("decode");
            theta_engine::convert::to_f32("t", y, dtype, &mut fy).expect("decode");
            assert!(
                fx[0].is_nan() && fy[0].is_nan(),
                "element {i}: {} vs {}",
                fx[0],
                fy[0]
            );
        }
    }
}

fn merge(
    dev: &Device,
    dtype: DType,
    out_dtype: DType,
    n: usize,
    sparsify: Sparsify,
    combine: Combine,
    density: f32,
) -> Vec<u8> {
    let models: Vec<Vec<u8>> = (0..3).map(|s| encode(dtype, &vals(n, s + 1))).collect();
    let mut b = vals(n, 99);
    if n > 10 {
        b[3] = f32::NAN;
        b[7] = f32::INFINITY;
    }
    let base = encode(dtype, &b);
    let terms: Vec<Term<'_>> = models
        .iter()
        .enumerate()
        .map(|(i, m)| Term {
            input: Input::new(dtype, m),
            weight: 0.5 + i as f32 * 0.25,
            density,
        })
        .collect();
    let spec = MergeSpec {
        tensor: "layers.0.w",
        terms: &terms,
        base: Some(Input::new(dtype, &base)),
        sparsify,
        combine,
        lambda: 0.8,
    };
    let mut out = vec![0u8; n * out_dtype.size()];
    dev.merge(&spec, &mut out, out_dtype).expect("merge");
    out
}

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

device_test!(
    linear_task_arithmetic_all_dtypes_odd_lengths,
    |d| {
        let mut r = Vec::new();
        for dt in DTYPES {
            for od in DTYPES {
                for n in [0usize, 1, 7, 1001] {
                    r.push((
                        od,
                        merge(&d, dt, od, n, Sparsify::None, Combine::Linear, 1.0),
                    ));
                }
            }
        }
        r
    },
    |cpu, other| cpu
        .iter()
        .zip(other)
        .for_each(|((od, a), (_, b))| same_bits(a, b, *od))
);

device_test!(
    ties_and_dare_at_all_densities,
    |d| {
        let mut r = Vec::new();
        for density in [0.0, 0.3, 1.0] {
            for (sp, comb) in [
                (Sparsify::Magnitude, Combine::Ties),
                (Sparsify::Random { seed: 7 }, Combine::Ties),
                (Sparsify::Random { seed: 7 }, Combine::Linear),
            ] {
                r.push(merge(&d, DType::BF16, DType::F32, 4099, sp, comb, density));
            }
        }
        r
    },
    |cpu, other| cpu
        .iter()
        .zip(other)
        .for_each(|(a, b)| same_bits(a, b, DType::F32))
);

// Past the CPU's sampling threshold (65536), where the CPU brackets each
// threshold from a sample, and with `THETA_CPU_TIES=one-pass` trims TIES
// inside the merge's one pass (`cpu/trimmed.rs`): the same bits as the
// GPU's threshold-first merge either way.
device_test!(
    ties_trimmed_in_one_pass_at_every_density,
    |d| {
        let mut r = Vec::new();
        for (i, density) in [0.05, 0.5, 0.9].into_iter().enumerate() {
            for comb in [Combine::Ties, Combine::TiesSum] {
                let (dt, od) = (DTYPES[i], DTYPES[(i + 1) % 3]);
                let out = merge(&d, dt, od, 150_001, Sparsify::Magnitude, comb, density);
                r.push((od, out));
            }
        }
        r
    },
    |cpu, other| cpu
        .iter()
        .zip(other)
        .for_each(|((od, a), (_, b))| same_bits(a, b, *od))
);

device_test!(
    kth_largest_matches_a_sort,
    |d| {
        let x = vals(100_003, 5);
        let mut sorted: Vec<u32> = x.iter().map(|v| v.to_bits() & 0x7fff_ffff).collect();
        sorted.sort_unstable();
        let mut got = Vec::new();
        for k in [1usize, 2, 50_000, 100_003] {
            let kth = d
                .kth_largest_abs("t", Input::f32(&x), None, k)
                .expect("select");
            assert_eq!(kth, sorted[sorted.len() - k], "k = {k} on {}", d.label());
            got.push(kth);
        }
        got
    },
    |cpu, other| assert_eq!(cpu, other)
);

device_test!(
    diff_stats_within_bound,
    |d| {
        let n = 300_001;
        let old = vals(n, 1);
        let mut new = old.clone();
        for i in (0..n).step_by(3) {
            new[i] += 0.25;
        }
        new[10] = f32::NAN;
        let s = d
            .diff_stats("t", Input::f32(&old), Input::f32(&new))
            .expect("stats");
        assert_eq!(s.changed, 100_002, "every third element and the NaN");
        assert_eq!(s.nonfinite_new, 1);
        assert_eq!(s.max_abs_diff, 0.25);
        let clean = d
            .diff_stats("t", Input::f32(&old), Input::f32(&old))
            .expect("stats");
        assert_eq!(
            (clean.changed, clean.norm_diff, clean.max_abs_diff),
            (0, 0.0, 0.0)
        );
        let empty = d
            .diff_stats("t", Input::f32(&[]), Input::f32(&[]))
            .expect("stats");
        assert_eq!(empty.n, 0);
        clean
    },
    |cpu, other| {
        let rel = |a: f64, b: f64| (a - b).abs() / a.abs().max(1e-30);
        assert!(
            rel(cpu.norm_old, other.norm_old) < 2e-6,
            "{cpu:?} vs {other:?}"
        );
        assert!(rel(cpu.dot, other.dot) < 2e-6, "{cpu:?} vs {other:?}");
    }
);

device_test!(
    slerp_lowrank_and_cosine,
    |d| {
        let (rows, cols, rank) = (37usize, 129usize, 5usize);
        let w = vals(rows * cols, 1);
        let b = vals(rows * rank, 2);
        let a = vals(rank * cols, 3);
        let mut lr = vec![0u8; rows * cols * 2];
        d.lowrank(
            "t",
            Input::f32(&w),
            Input::f32(&b),
            Input::f32(&a),
            [rows, cols, rank],
            0.5,
            &mut lr,
            DType::BF16,
        )
        .expect("lowrank");
        let mut sl = vec![0u8; rows * cols * 4];
        d.slerp(
            "t",
            Input::f32(&w),
            Input::f32(
                &a[..0]
                    .iter()
                    .chain(&vals(rows * cols, 9))
                    .copied()
                    .collect::<Vec<_>>(),
            ),
            0.3,
            1e-8,
            &mut sl,
            DType::F32,
        )
        .expect("slerp");
        let cos = d
            .pairwise_cosine(
                "t",
                Input::f32(&w),
                &[
                    Input::f32(&vals(rows * cols, 4)),
                    Input::f32(&vals(rows * cols, 5)),
                ],
            )
            .expect("cos");
        (lr, sl, cos)
    },
    |cpu, other| {
        same_bits(&cpu.0, &other.0, DType::BF16);
        let (a, b): (&[f32], &[f32]) =
            (bytemuck::cast_slice(&cpu.1), bytemuck::cast_slice(&other.1));
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "{x} vs {y}");
        }
        assert!((cpu.2[1] - other.2[1]).abs() < 1e-5);
    }
);

fn lowrank_bytes(dev: &Device, dt: DType, out_dt: DType, shape: [usize; 3]) -> Vec<u8> {
    let [rows, cols, rank] = shape;
    let w = encode(dt, &vals(rows * cols, 1));
    let b = encode(dt, &vals(rows * rank, 2));
    let a = encode(dt, &vals(rank * cols, 3));
    let mut out = vec![0u8; rows * cols * out_dt.size()];
    dev.lowrank(
        "t",
        Input::new(dt, &w),
        Input::new(dt, &b),
        Input::new(dt, &a),
        shape,
        -0.75,
        &mut out,
        out_dt,
    )
    .expect("lowrank");
    out
}

// Even widths take the GPU's tiled kernel: tiles cut at the matrix's edge
// (rows not a multiple of 8, columns of 64) and ranks past one 32-deep slice.
device_test!(
    lowrank_tiles_every_shape_and_dtype,
    |d| {
        let shapes = [
            [37, 130, 5],
            [9, 66, 40],
            [70, 200, 33],
            [1, 2, 1],
            [16, 128, 64],
        ];
        let dts = [DType::F32, DType::F16, DType::BF16];
        let mut outs = Vec::new();
        for (i, shape) in shapes.into_iter().enumerate() {
            for (j, dt) in dts.into_iter().enumerate() {
                let out_dt = dts[(i + j) % 3];
                outs.push((out_dt, lowrank_bytes(&d, dt, out_dt, shape)));
            }
        }
        outs
    },
    |cpu, other| {
        for ((dt, a), (_, b)) in cpu.iter().zip(other.iter()) {
            same_bits(a, b, *dt);
        }
    }
);

#[test]
fn averaging_identical_models_and_task_vector_round_trip() {
    for d in devices() {
        let x = vals(10_007, 3);
        let terms: Vec<Term<'_>> = (0..4)
            .map(|_| Term {
                input: Input::f32(&x),
                weight: 0.25,
                density: 1.0,
            })
            .collect();
        let spec = MergeSpec {
            tensor: "t",
            terms: &terms,
            base: None,
            sparsify: Sparsify::None,
            combine: Combine::Linear,
            lambda: 1.0,
        };
        let mut out = vec![0u8; x.len() * 4];
        d.merge(&spec, &mut out, DType::F32).expect("merge");
        assert_eq!(
            bytemuck::cast_slice::<u8, f32>(&out),
            &x[..],
            "average on {}",
            d.label()
        );

        // base + (x - base) = x when the delta is exact (values on a coarse grid).
        let grid = |s| {
            vals(10_007, s)
                .iter()
                .map(|v| (v * 64.0).round() / 64.0)
                .collect::<Vec<f32>>()
        };
        let (base, fine) = (grid(1), grid(2));
        let terms = [Term {
            input: Input::f32(&fine),
            weight: 1.0,
            density: 1.0,
        }];
        let spec = MergeSpec {
            tensor: "t",
            terms: &terms,
            base: Some(Input::f32(&base)),
            sparsify: Sparsify::None,
            combine: Combine::Linear,
            lambda: 1.0,
        };
        d.merge(&spec, &mut out, DType::F32).expect("merge");
        assert_eq!(
            bytemuck::cast_slice::<u8, f32>(&out),
            &fine[..],
            "task vector on {}",
            d.label()
        );
    }
}

// Only with the GPU compiled in: without it, `GpuContext` is uninhabited.
#[cfg(feature = "gpu")]
#[test]
fn chunking_and_2d_dispatch_on_small_limits() {
    let Ok(Device::Gpu(g)) = Device::gpu() else {
        eprintln!("GPU variant skipped: no adapter");
        return;
    };
    // 64 KiB bindings and 7 workgroups per dimension force many chunks and 2-D grids.
    let small = Device::Gpu(std::sync::Arc::new(g.with_limits(1 << 16, 7)));
    for dt in [DType::F32, DType::F16] {
        for (sp, comb) in [
            (Sparsify::None, Combine::Linear),
            (Sparsify::Magnitude, Combine::Ties),
            (Sparsify::Random { seed: 3 }, Combine::Linear),
        ] {
            let a = merge(&Device::Cpu, dt, dt, 100_001, sp, comb, 0.4);
            let b = merge(&small, dt, dt, 100_001, sp, comb, 0.4);
            same_bits(&a, &b, dt);
        }
    }
    let x = vals(100_001, 1);
    let y = vals(100_001, 2);
    let s1 = Device::Cpu
        .diff_stats("t", Input::f32(&x), Input::f32(&y))
        .expect("stats");
    let s2 = small
        .diff_stats("t", Input::f32(&x), Input::f32(&y))
        .expect("stats");
    assert_eq!((s1.changed, s1.n), (s2.changed, s2.n));
    assert!((s1.dot - s2.dot).abs() < 1e-5 * s1.norm_old * s1.norm_new);
    // 2 MB of W: chunks of rows, each a 2-D grid of tiles (and, odd, of pairs).
    for shape in [[1000, 500, 20], [1001, 499, 20]] {
        let a = lowrank_bytes(&Device::Cpu, DType::F32, DType::BF16, shape);
        let b = lowrank_bytes(&small, DType::F32, DType::BF16, shape);
        same_bits(&a, &b, DType::BF16);
    }
}

// The chunk ring (3 slots) with fewer chunks than slots, as many, one more
// and several laps: merges bit-identical to the CPU's, and statistics
// bit-identical to one unchunked GPU pass (the same reduction order).
#[cfg(feature = "gpu")]
#[test]
fn gpu_ring_chunk_counts_around_the_ring() {
    let Ok(Device::Gpu(g)) = Device::gpu() else {
        eprintln!("GPU variant skipped: no adapter");
        return;
    };
    // Merge of 3 F32 models: 12 bytes per element, 2048-element chunks.
    let merging = Device::Gpu(std::sync::Arc::new(g.with_limits(12 * 2048, 3)));
    // Statistics of two F32 tensors: 8 bytes per element, one 4096-element
    // block per chunk.
    let counting = Device::Gpu(std::sync::Arc::new(g.with_limits(8 * 4096, 3)));
    let whole = Device::Gpu(g);
    for chunks in [1usize, 2, 3, 4, 7] {
        for (n, per) in [(chunks * 2048, 2048), (chunks * 2048 - 5, 2048)] {
            assert_eq!(n.div_ceil(per), chunks);
            for (sp, comb) in [
                (Sparsify::None, Combine::Linear),
                (Sparsify::Magnitude, Combine::Ties),
            ] {
                let a = merge(&Device::Cpu, DType::F32, DType::F32, n, sp, comb, 0.5);
                let b = merge(&merging, DType::F32, DType::F32, n, sp, comb, 0.5);
                same_bits(&a, &b, DType::F32);
            }
        }
        let n = chunks * 4096 - 5;
        let (x, y, c) = (vals(n, 1), vals(n, 2), vals(n, 3));
        let (x, y, c) = (Input::f32(&x), Input::f32(&y), Input::f32(&c));
        let one = whole.diff_stats("t", x, y).expect("stats");
        let many = counting.diff_stats("t", x, y).expect("stats");
        assert_eq!(one, many, "{chunks} chunks");
        let one = whole.delta_stats("t", c, x, y).expect("stats");
        let many = counting.delta_stats("t", c, x, y).expect("stats");
        assert_eq!(one, many, "{chunks} chunks, with a base");
        let cpu = Device::Cpu.diff_stats("t", x, y).expect("stats");
        assert_eq!((cpu.n, cpu.changed), (many.n, many.changed));
    }
}

#[test]
fn past_the_binding_limit() {
    // 40M f32 = 160 MB per tensor: more than lavapipe's 128 MiB per binding.
    let n = 40_000_000;
    let x = vals(n, 1);
    let base: Vec<f32> = x.iter().map(|v| v * 0.5).collect();
    let terms = [Term {
        input: Input::f32(&x),
        weight: 0.7,
        density: 1.0,
    }];
    let spec = MergeSpec {
        tensor: "big",
        terms: &terms,
        base: Some(Input::f32(&base)),
        sparsify: Sparsify::None,
        combine: Combine::Linear,
        lambda: 1.0,
    };
    let runs: Vec<(Vec<u8>, _)> = devices()
        .iter()
        .map(|d| {
            let mut out = vec![0u8; n * 4];
            d.merge(&spec, &mut out, DType::F32).expect("merge");
            let s = d
                .diff_stats("big", Input::f32(&base), Input::f32(&x))
                .expect("stats");
            (out, s)
        })
        .collect();
    for (out, s) in &runs[1..] {
        assert!(out == &runs[0].0, "merge differs past the binding limit");
        assert_eq!(s.changed, runs[0].1.changed);
        assert!((s.norm_diff - runs[0].1.norm_diff).abs() < 2e-6 * runs[0].1.norm_diff);
    }
}

#[test]
fn device_choice_parses_and_cpu_is_always_there() {
    assert!("gpu".parse::<theta_engine::compute::DeviceChoice>().is_ok());
    assert!(
        "tpu"
            .parse::<theta_engine::compute::DeviceChoice>()
            .is_err()
    );
    let (d, _) = Device::select(theta_engine::compute::DeviceChoice::Cpu).expect("cpu");
    assert_eq!(d.label(), "cpu");
}

/// mergekit 0.1.5's generalized task arithmetic, written out for 3 models
/// over a small tensor, against the kernel on every device.
#[allow(clippy::too_many_arguments)]
fn gta(
    d: &Device,
    xs: &[Vec<f32>],
    base: &[f32],
    weights: &[f32],
    sparsify: Sparsify,
    combine: Combine,
    opts: &theta_engine::compute::MergeOptions<'_>,
    density: f32,
) -> Vec<f32> {
    let terms: Vec<Term<'_>> = xs
        .iter()
        .zip(weights)
        .map(|(x, w)| Term {
            input: Input::f32(x),
            weight: *w,
            density,
        })
        .collect();
    let spec = MergeSpec {
        tensor: "t",
        terms: &terms,
        base: Some(Input::f32(base)),
        sparsify,
        combine,
        lambda: 1.0,
    };
    let mut out = vec![0f32; base.len()];
    d.merge_with(&spec, opts, bytemuck::cast_slice_mut(&mut out), DType::F32)
        .expect("merge");
    out
}

device_test!(
    mergekit_sign_election_normalize_and_trims,
    |d| {
        use theta_engine::compute::{MergeOptions, Rescale};
        let base = vec![0.0f32; 4];
        // w·δ per element: (1, −1, 0) sums to 0, so the positive side wins;
        // (1, −0.5, 0): the negative weight puts model 1 against the sum;
        // (1, −1, 3); nothing at all (divisor 0 counts as 1).
        let xs = vec![
            vec![1.0, 1.0, 1.0, 0.0],
            vec![2.0, 1.0, 2.0, 0.0],
            vec![0.0, 0.0, 3.0, 0.0],
        ];
        let w = [1.0, -0.5, 1.0];
        let none = MergeOptions::default();
        let ties = gta(
            &d,
            &xs,
            &base,
            &w,
            Sparsify::None,
            Combine::Ties,
            &none,
            1.0,
        );
        assert_eq!(
            ties,
            vec![1.0, 1.0, 2.0, 0.0],
            "divided by agreeing weights"
        );
        let sum = gta(
            &d,
            &xs,
            &base,
            &w,
            Sparsify::None,
            Combine::TiesSum,
            &none,
            1.0,
        );
        assert_eq!(sum, vec![1.0, 1.0, 4.0, 0.0]);
        let mean = gta(
            &d,
            &xs,
            &base,
            &w,
            Sparsify::None,
            Combine::LinearMean,
            &none,
            1.0,
        );
        assert_eq!(mean, vec![0.0, 0.5 / 1.5, 2.0, 0.0]);

        // Trims: density 0.1 of 10 keeps max(1, 1) = 1; breadcrumbs with
        // gamma 0.2 drops the two largest, then keeps the next five.
        let x: Vec<f32> = (1..=10).map(|i| i as f32).collect();
        let zero = vec![0.0f32; 10];
        let one = |sp, density, opts: &MergeOptions<'_>| {
            gta(
                &d,
                std::slice::from_ref(&x),
                &zero,
                &[1.0],
                sp,
                Combine::Linear,
                opts,
                density,
            )
        };
        let trimmed = one(Sparsify::Magnitude, 0.1, &none);
        assert_eq!(trimmed.iter().filter(|v| **v != 0.0).count(), 1);
        assert_eq!(trimmed[9], 10.0);
        let gamma = [0.2f32];
        let crumbs = MergeOptions {
            rescale: Rescale::None,
            gamma: &gamma,
        };
        let bc = one(Sparsify::Outliers, 0.5, &crumbs);
        assert_eq!(bc, vec![0.0, 0.0, 0.0, 4.0, 5.0, 6.0, 7.0, 8.0, 0.0, 0.0]);
        // L1 rescale: the kept 4..8 (sum 30) scaled to the whole sum 55.
        let l1 = MergeOptions {
            rescale: Rescale::L1,
            gamma: &gamma,
        };
        let scaled = one(Sparsify::Outliers, 0.5, &l1);
        let total: f32 = scaled.iter().sum();
        assert!((total - 55.0).abs() < 1e-4, "{total}");
        // DARE with L1 rescale keeps the L1 norm too.
        let big: Vec<f32> = vals(20_000, 3);
        let zeros = vec![0.0f32; big.len()];
        let dare = gta(
            &d,
            std::slice::from_ref(&big),
            &zeros,
            &[1.0],
            Sparsify::Random { seed: 5 },
            Combine::Linear,
            &l1,
            0.4,
        );
        let l = |v: &[f32]| v.iter().map(|x| f64::from(x.abs())).sum::<f64>();
        assert!((l(&dare) / l(&big) - 1.0).abs() < 1e-5);
        (ties, sum, mean, trimmed, bc, scaled, dare)
    },
    |cpu, other| assert_eq!(cpu, other)
);

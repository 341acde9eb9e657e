//! Throughput of each compute kernel on each device, in bytes/s of tensor
//! data read and written, on Llama-7B shapes. The device is synchronised
//! before the clock stops (every op reads its results back).
//!
//! `cargo bench --bench compute`; `THETA_BENCH_SHAPES=small` for a quick run.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use theta_engine::DType;
use theta_engine::compute::{Combine, Device, Input, MergeSpec, Sparsify, Term};

fn devices() -> Vec<Device> {
    let mut v = vec![Device::Cpu];
    match Device::gpu() {
        Ok(d) => v.push(d),
        Err(e) => eprintln!("gpu benches skipped: {e}"),
    }
    v
}

fn shapes() -> Vec<(&'static str, usize)> {
    if std::env::var("THETA_BENCH_SHAPES").as_deref() == Ok("small") {
        vec![("1024x1024", 1 << 20)]
    } else {
        vec![("4096x11008", 4096 * 11008), ("32000x4096", 32000 * 4096)]
    }
}

fn data(n: usize, seed: u32) -> Vec<u8> {
    let xs: Vec<f32> = (0..n)
        .map(|i| {
            (theta_engine::compute::ops::mix32(i as u32 ^ seed) as f32 / u32::MAX as f32 - 0.5)
                * 0.02
        })
        .collect();
    let mut out = vec![0u8; n * 2];
    theta_engine::convert::from_f32("b", &xs, &mut out, DType::BF16).expect("encode");
    out
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("compute");
    g.sample_size(10);
    for (shape, n) in shapes() {
        let models: Vec<Vec<u8>> = (0..3).map(|s| data(n, s)).collect();
        let base = data(n, 9);
        let mut out = vec![0u8; n * 2];
        for dev in devices() {
            let terms: Vec<Term<'_>> = models
                .iter()
                .map(|m| Term {
                    input: Input::new(DType::BF16, m),
                    weight: 1.0 / 3.0,
                    density: 0.5,
                })
                .collect();
            // Bytes moved: three models and the base in, one tensor out.
            g.throughput(Throughput::Bytes((5 * n * 2) as u64));
            for (name, sparsify, combine) in [
                ("task_arithmetic", Sparsify::None, Combine::Linear),
                ("ties", Sparsify::Magnitude, Combine::Ties),
                ("dare_ties", Sparsify::Random { seed: 1 }, Combine::Ties),
            ] {
                let spec = MergeSpec {
                    tensor: "w",
                    terms: &terms,
                    base: Some(Input::new(DType::BF16, &base)),
                    sparsify,
                    combine,
                    lambda: 1.0,
                };
                g.bench_function(
                    BenchmarkId::new(format!("{name}/{}", dev.label()), shape),
                    |b| b.iter(|| dev.merge(&spec, &mut out, DType::BF16).expect("merge")),
                );
            }
            g.throughput(Throughput::Bytes((2 * n * 2) as u64));
            g.bench_function(
                BenchmarkId::new(format!("diff_stats/{}", dev.label()), shape),
                |b| {
                    b.iter(|| {
                        dev.diff_stats(
                            "w",
                            Input::new(DType::BF16, &base),
                            Input::new(DType::BF16, &models[0]),
                        )
                        .expect("stats")
                    })
                },
            );
            g.throughput(Throughput::Bytes((3 * n * 2) as u64));
            g.bench_function(
                BenchmarkId::new(format!("slerp/{}", dev.label()), shape),
                |b| {
                    b.iter(|| {
                        dev.slerp(
                            "w",
                            Input::new(DType::BF16, &base),
                            Input::new(DType::BF16, &models[0]),
                            0.5,
                            1e-8,
                            &mut out,
                            DType::BF16,
                        )
                        .expect("slerp")
                    })
                },
            );
            let (rows, cols, rank) = (n / 4096, 4096, 16);
            let bm = data(rows * rank, 3);
            let am = data(rank * cols, 4);
            g.throughput(Throughput::Bytes((2 * n * 2) as u64));
            g.bench_function(
                BenchmarkId::new(format!("lowrank_r16/{}", dev.label()), shape),
                |b| {
                    b.iter(|| {
                        dev.lowrank(
                            "w",
                            Input::new(DType::BF16, &base),
                            Input::new(DType::BF16, &bm),
                            Input::new(DType::BF16, &am),
                            [rows, cols, rank],
                            2.0,
                            &mut out,
                            DType::BF16,
                        )
                        .expect("lowrank")
                    })
                },
            );
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

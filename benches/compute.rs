//! Throughput of each compute kernel on each device, in bytes/s of tensor
//! data read and written, on Llama-7B shapes. The device is synchronised
//! before the clock stops (every op reads its results back).
//!
//! Bench ids are `compute/KERNEL/DEVICE/DTYPE/SHAPE` (inputs and output in
//! DTYPE). `cargo bench --bench compute`; `THETA_BENCH_SHAPES=small` for a
//! quick run; `THETA_BENCH_DTYPES=bf16,f32,f16` (default `bf16`) for more
//! dtypes; a filter such as `-- /cpu/bf16/` picks the rest.
//!
//! `compute/bandwidth/cpu/...` is not a kernel but this machine's ceiling
//! for a merge's traffic: the same bytes read and written with nothing
//! computed. A merge's bytes/s over it is the share of the reachable memory
//! bandwidth the merge gets.

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

fn dtypes() -> Vec<DType> {
    let list = std::env::var("THETA_BENCH_DTYPES").unwrap_or_else(|_| "bf16".into());
    list.split(',')
        .map(|d| match d.trim() {
            "f32" => DType::F32,
            "f16" => DType::F16,
            "bf16" => DType::BF16,
            other => panic!("THETA_BENCH_DTYPES: unknown dtype {other}"),
        })
        .collect()
}

fn data(n: usize, seed: u32, dtype: DType) -> Vec<u8> {
    let xs: Vec<f32> = (0..n)
        .map(|i| {
            (theta_engine::compute::ops::mix32(i as u32 ^ seed) as f32 / u32::MAX as f32 - 0.5)
                * 0.02
        })
        .collect();
    let mut out = vec![0u8; n * dtype.size()];
    theta_engine::convert::from_f32("b", &xs, &mut out, dtype).expect("encode");
    out
}

/// `out = a ^ b ^ c ^ d`, bytewise, on every core: three models and the
/// base read and one tensor written, as a merge does, with nothing computed.
fn stream(ins: [&[u8]; 4], out: &mut [u8]) {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 16;
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(i, o)| {
        let at = i * CHUNK;
        let [a, b, c, d] = ins.map(|x| &x[at..at + o.len()]);
        for ((((o, a), b), c), d) in o.iter_mut().zip(a).zip(b).zip(c).zip(d) {
            *o = a ^ b ^ c ^ d;
        }
    });
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("compute");
    g.sample_size(10);
    let devices = devices();
    for (shape, n) in shapes() {
        for dt in dtypes() {
            let sz = dt.size();
            let dn = dt.to_string().to_lowercase();
            let models: Vec<Vec<u8>> = (0..3).map(|s| data(n, s, dt)).collect();
            let base = data(n, 9, dt);
            let mut out = vec![0u8; n * sz];
            g.throughput(Throughput::Bytes((5 * n * sz) as u64));
            g.bench_function(
                BenchmarkId::new(format!("bandwidth/cpu/{dn}"), shape),
                |b| {
                    b.iter(|| {
                        let ins = [&models[0][..], &models[1][..], &models[2][..], &base[..]];
                        stream(ins, &mut out)
                    })
                },
            );
            for dev in &devices {
                let terms: Vec<Term<'_>> = models
                    .iter()
                    .map(|m| Term {
                        input: Input::new(dt, m),
                        weight: 1.0 / 3.0,
                        density: 0.5,
                    })
                    .collect();
                // Bytes moved: three models and the base in, one tensor out.
                g.throughput(Throughput::Bytes((5 * n * sz) as u64));
                for (name, sparsify, combine) in [
                    ("task_arithmetic", Sparsify::None, Combine::Linear),
                    ("ties", Sparsify::Magnitude, Combine::Ties),
                    ("dare_ties", Sparsify::Random { seed: 1 }, Combine::Ties),
                ] {
                    let spec = MergeSpec {
                        tensor: "w",
                        terms: &terms,
                        base: Some(Input::new(dt, &base)),
                        sparsify,
                        combine,
                        lambda: 1.0,
                    };
                    g.bench_function(
                        BenchmarkId::new(format!("{name}/{}/{dn}", dev.label()), shape),
                        |b| b.iter(|| dev.merge(&spec, &mut out, dt).expect("merge")),
                    );
                }
                // One model's TIES trim alone (k-th largest |x − base| at
                // density 0.5): the model and the base in.
                g.throughput(Throughput::Bytes((2 * n * sz) as u64));
                g.bench_function(
                    BenchmarkId::new(format!("trim/{}/{dn}", dev.label()), shape),
                    |b| {
                        b.iter(|| {
                            let (x, b) = (Input::new(dt, &models[0]), Input::new(dt, &base));
                            dev.kth_largest_abs("w", x, Some(b), n / 2).expect("trim")
                        })
                    },
                );
                g.throughput(Throughput::Bytes((2 * n * sz) as u64));
                g.bench_function(
                    BenchmarkId::new(format!("diff_stats/{}/{dn}", dev.label()), shape),
                    |b| {
                        b.iter(|| {
                            dev.diff_stats("w", Input::new(dt, &base), Input::new(dt, &models[0]))
                                .expect("stats")
                        })
                    },
                );
                g.throughput(Throughput::Bytes((3 * n * sz) as u64));
                g.bench_function(
                    BenchmarkId::new(format!("slerp/{}/{dn}", dev.label()), shape),
                    |b| {
                        b.iter(|| {
                            dev.slerp(
                                "w",
                                Input::new(dt, &base),
                                Input::new(dt, &models[0]),
                                0.5,
                                1e-8,
                                &mut out,
                                dt,
                            )
                            .expect("slerp")
                        })
                    },
                );
                let (rows, cols, rank) = (n / 4096, 4096, 16);
                let bm = data(rows * rank, 3, dt);
                let am = data(rank * cols, 4, dt);
                g.throughput(Throughput::Bytes((2 * n * sz) as u64));
                g.bench_function(
                    BenchmarkId::new(format!("lowrank_r16/{}/{dn}", dev.label()), shape),
                    |b| {
                        b.iter(|| {
                            dev.lowrank(
                                "w",
                                Input::new(dt, &base),
                                Input::new(dt, &bm),
                                Input::new(dt, &am),
                                [rows, cols, rank],
                                2.0,
                                &mut out,
                                dt,
                            )
                            .expect("lowrank")
                        })
                    },
                );
            }
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

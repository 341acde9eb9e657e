//! Checkpoint I/O benchmarks on the CPU: dtype conversions (bytes/s of the
//! source), opening a many-tensor file (header parse and validation), and
//! streaming writes through the atomic writer.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use theta_engine::safetensors::{HeaderPlan, SafetensorsFile, SafetensorsWriter};
use theta_engine::synth::LlamaShape;
use theta_engine::{DType, TensorInfo, convert};

/// A Llama-7B MLP matrix.
const ROWS: usize = 4096;
const COLS: usize = 11008;

fn conversions(c: &mut Criterion) {
    let n = ROWS * COLS;
    let xs: Vec<f32> = (0..n).map(|i| ((i % 1000) as f32 - 500.0) * 1e-3).collect();
    let mut g = c.benchmark_group("convert/cpu");
    g.sample_size(10);
    for (from, to) in [
        (DType::BF16, DType::F32),
        (DType::F32, DType::BF16),
        (DType::F16, DType::F32),
        (DType::F32, DType::F16),
        (DType::BF16, DType::F16),
    ] {
        let mut src = vec![0u8; n * from.size()];
        convert::from_f32("bench", &xs, &mut src, from).expect("encode");
        let mut dst = vec![0u8; n * to.size()];
        g.throughput(Throughput::Bytes((src.len() + dst.len()) as u64));
        g.bench_function(
            BenchmarkId::new(format!("{from}->{to}"), format!("{ROWS}x{COLS}")),
            |b| {
                b.iter(|| {
                    convert::convert("bench", black_box(&src), from, &mut dst, to).expect("convert")
                })
            },
        );
    }
    g.finish();
}

fn open_header(c: &mut Criterion) {
    // Llama-7B's 291 tensors, zero-filled: the file is sparse on disk.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("model.safetensors");
    let tensors = LlamaShape::LLAMA_7B.tensors(DType::BF16);
    let plan = HeaderPlan::new(&tensors, &vec![("format".into(), "pt".into())]).expect("plan");
    let file = std::fs::File::create(&path).expect("create");
    let header = plan.header_bytes();
    let mut prefix = (header.len() as u64).to_le_bytes().to_vec();
    prefix.extend_from_slice(header);
    std::io::Write::write_all(&mut &file, &prefix).expect("write header");
    file.set_len(plan.file_len()).expect("extend");
    let mut g = c.benchmark_group("open/cpu");
    g.throughput(Throughput::Elements(tensors.len() as u64));
    g.bench_function("llama-7b-header", |b| {
        b.iter(|| black_box(SafetensorsFile::open(&path).expect("open").tensors().len()))
    });
    g.finish();
}

fn streaming_write(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = TensorInfo::new("w", DType::BF16, [ROWS as u64, COLS as u64]);
    let data = vec![7u8; t.nbytes() as usize];
    let mut g = c.benchmark_group("write/cpu");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("atomic-safetensors-90MB", |b| {
        b.iter(|| {
            let plan = HeaderPlan::new(std::slice::from_ref(&t), &Vec::new()).expect("plan");
            let mut w = SafetensorsWriter::create(dir.path().join("out.safetensors"), plan)
                .expect("create");
            for part in data.chunks(8 << 20) {
                w.write_part("w", part).expect("write");
            }
            w.finish().expect("finish");
        })
    });
    g.finish();
}

criterion_group!(benches, conversions, open_header, streaming_write);
criterion_main!(benches);

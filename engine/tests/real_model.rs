//! A real third-party checkpoint: sentence-transformers' all-MiniLM-L6-v2
//! as written by Python's safetensors. Fetch it with
//! `shared/data/fetch-real-model.sh DEST` and point `THETA_REAL_MODEL` at
//! `DEST/all-MiniLM-L6-v2/model.safetensors`; without it the test says so
//! and passes.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use theta_engine::safetensors::{HeaderPlan, SafetensorsFile, SafetensorsWriter};
use theta_engine::{DType, checkpoint};

fn model_path() -> Option<PathBuf> {
    match std::env::var_os("THETA_REAL_MODEL") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            eprintln!(
                "skipping: set THETA_REAL_MODEL to all-MiniLM-L6-v2's model.safetensors \
                 (fetch it with shared/data/fetch-real-model.sh DEST)"
            );
            None
        }
    }
}

fn sha256(path: &Path) -> String {
    let mut file = File::open(path).expect("open for hashing");
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn real_model_reads_and_reserializes_byte_exact() {
    let Some(path) = model_path() else {
        return;
    };
    let file = SafetensorsFile::open(&path).expect("open the real model");
    assert_eq!(file.tensors().len(), 104);
    let i64s: Vec<_> = file
        .tensors()
        .iter()
        .filter(|t| t.dtype == DType::I64)
        .collect();
    assert_eq!(i64s.len(), 1, "one I64 tensor (position ids)");
    assert!(
        file.tensors()
            .iter()
            .all(|t| matches!(t.dtype, DType::F32 | DType::I64))
    );
    let params: u64 = file
        .tensors()
        .iter()
        .filter(|t| t.dtype == DType::F32)
        .map(|t| t.numel())
        .sum();
    assert!((22_000_000..23_000_000).contains(&params), "{params}");

    let model = checkpoint::open(&path).expect("checkpoint::open");
    assert_eq!(model.tensors(), file.tensors());

    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("model.safetensors");
    let mut w = SafetensorsWriter::create(&copy, HeaderPlan::of_file(&file)).expect("create");
    for i in 0..file.tensors().len() {
        let v = file.view(i);
        for part in v.data.chunks(1 << 20) {
            w.write_part(&v.info.name, part).expect("write");
        }
    }
    w.finish().expect("finish");
    assert_eq!(sha256(&copy), sha256(&path));
}

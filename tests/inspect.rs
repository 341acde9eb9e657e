//! `git theta example` and `git theta inspect` through the real binary, on
//! real files written to disk.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use theta_engine::DType;
use theta_engine::TensorInfo;
use theta_engine::safetensors::{HeaderPlan, SafetensorsWriter};

fn theta(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_git-theta"))
        .args(args)
        .output()
        .expect("run git-theta")
}

fn ok(args: &[&str]) -> String {
    let out = theta(args);
    assert!(
        out.status.success(),
        "git-theta {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ok(args)).expect("valid JSON")
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

#[test]
fn example_then_inspect_reports_every_tensor_and_totals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("m");
    ok(&["example", p(&model), "--seed", "3"]);
    let file = model.join("model.safetensors");
    assert!(model.join("config.json").is_file());

    let r = json(&["inspect", p(&file), "--json"]);
    assert_eq!(r["schema"], "git-theta.inspect/1");
    assert_eq!(r["format"], "safetensors");
    let tensors = r["tensors"].as_array().expect("tensors");
    assert_eq!(tensors.len(), 39, "embed + 4 layers × 9 + norm + lm_head");
    let params: u64 = tensors
        .iter()
        .map(|t| t["parameters"].as_u64().expect("n"))
        .sum();
    assert_eq!(r["totals"]["parameters"].as_u64(), Some(params));
    assert_eq!(
        r["totals"]["by_dtype"]["BF16"]["bytes"].as_u64(),
        Some(params * 2)
    );
    let embed = &tensors[0];
    assert_eq!(embed["name"], "model.embed_tokens.weight");
    assert_eq!(embed["shape"], serde_json::json!([4096, 256]));
    assert_eq!(r["metadata"]["format"], "pt");
    let file_len = std::fs::metadata(&file).expect("stat").len();
    assert_eq!(r["files"][0]["bytes"].as_u64(), Some(file_len));

    let table = ok(&["inspect", p(&file)]);
    assert!(
        table.contains("model.layers.3.mlp.down_proj.weight"),
        "{table}"
    );
    assert!(
        table.contains(&format!("total: 39 tensors, {params} parameters")),
        "{table}"
    );
    assert!(table.contains("format = pt"), "{table}");
}

#[test]
fn sharded_folder_is_one_model_equal_to_the_single_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let single = dir.path().join("single");
    let sharded = dir.path().join("sharded");
    ok(&["example", p(&single), "--dtype", "f16"]);
    ok(&[
        "example",
        p(&sharded),
        "--dtype",
        "f16",
        "--shard-size",
        "3MB",
    ]);
    assert!(sharded.join("model.safetensors.index.json").is_file());

    let a = json(&["inspect", p(&single), "--json"]);
    let b = json(&["inspect", p(&sharded), "--json"]);
    assert_eq!(b["format"], "safetensors-sharded");
    assert!(b["files"].as_array().expect("files").len() > 1);
    assert_eq!(a["tensors"], b["tensors"]);
    assert_eq!(a["totals"]["bytes"], b["totals"]["bytes"]);
    assert_eq!(
        b["metadata"]["total_size"],
        a["totals"]["bytes"].to_string()
    );

    // The same bytes through the engine, tensor by tensor.
    let sa = theta_engine::checkpoint::open(&single).expect("open single");
    let sb = theta_engine::checkpoint::open(sharded.join("model.safetensors.index.json"))
        .expect("open index");
    for t in sa.tensors() {
        assert_eq!(
            sa.tensor(&t.name).expect("a").data,
            sb.tensor(&t.name).expect("b").data,
            "{}",
            t.name
        );
    }
}

#[test]
fn every_dtype_is_listed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("all.safetensors");
    let tensors: Vec<TensorInfo> = DType::ALL
        .iter()
        .map(|&d| TensorInfo::new(format!("t.{}", d.name()), d, [3u64, 2]))
        .collect();
    let plan = HeaderPlan::new(&tensors, &vec![("k".into(), "v".into())]).expect("plan");
    let mut w = SafetensorsWriter::create(&path, plan).expect("create");
    for t in &tensors {
        w.write_tensor(&t.name, &vec![1u8; t.nbytes() as usize])
            .expect("write");
    }
    w.finish().expect("finish");
    let r = json(&["inspect", p(&path), "--json"]);
    let by_dtype = r["totals"]["by_dtype"].as_object().expect("by_dtype");
    assert_eq!(by_dtype.len(), 15);
    assert_eq!(
        r["totals"]["bytes"].as_u64(),
        Some(tensors.iter().map(TensorInfo::nbytes).sum())
    );
    for d in DType::ALL {
        assert_eq!(by_dtype[d.name()]["parameters"].as_u64(), Some(6), "{d}");
    }
}

#[test]
fn broken_file_fails_with_its_name_and_the_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("broken.safetensors");
    let header = br#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0u8; 10]); // 6 bytes short
    std::fs::write(&path, bytes).expect("write");

    let out = theta(&["inspect", p(&path)]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.safetensors"), "{err}");
    assert!(err.contains("tensor `w`"), "{err}");
    assert!(err.contains("truncated"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let missing = theta(&["inspect", p(&dir.path().join("nope.safetensors"))]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nope.safetensors"));

    let usage = theta(&["inspect"]);
    assert_eq!(usage.status.code(), Some(2), "usage errors exit 2");
}

#[test]
fn a_closed_pipe_is_not_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("m");
    ok(&["example", p(&model), "--params", "20M"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_git-theta"))
        .args(["inspect", p(&model)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take()); // the reader goes away at once, like `| head -0`
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {err}", out.status);
    assert!(!err.contains("panicked"), "{err}");
}

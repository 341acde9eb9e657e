//! End-to-end: `git diff`, `git show`, `git log -p` and `git theta diff` on
//! real repositories, with the printed numbers checked against statistics
//! computed here, in f64, from the safetensors files the test wrote.

mod common;

use std::path::Path;

use common::{Sandbox, objects};
use serde_json::Value;

/// A tensor to write: name, dtype, shape, little-endian bytes.
struct T {
    name: &'static str,
    dtype: &'static str,
    shape: Vec<u64>,
    data: Vec<u8>,
}

fn f32s(name: &'static str, shape: &[u64], v: &[f32]) -> T {
    assert_eq!(shape.iter().product::<u64>() as usize, v.len());
    T {
        name,
        dtype: "F32",
        shape: shape.to_vec(),
        data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

fn i64s(name: &'static str, v: &[i64]) -> T {
    T {
        name,
        dtype: "I64",
        shape: vec![v.len() as u64],
        data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

/// Writes a safetensors file by hand (header JSON, padded, then the data).
fn write_safetensors(path: &Path, tensors: &[T]) {
    let mut entries = Vec::new();
    let mut offset = 0usize;
    for t in tensors {
        entries.push(format!(
            "\"{}\":{{\"dtype\":\"{}\",\"shape\":{:?},\"data_offsets\":[{},{}]}}",
            t.name,
            t.dtype,
            t.shape,
            offset,
            offset + t.data.len()
        ));
        offset += t.data.len();
    }
    let mut header = format!("{{{}}}", entries.join(",")).into_bytes();
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    for t in tensors {
        out.extend_from_slice(&t.data);
    }
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, out).expect("write");
}

fn ramp(n: usize, seed: f32) -> Vec<f32> {
    (0..n)
        .map(|i| (i as f32 * 0.37 + seed).sin() * 0.05)
        .collect()
}

/// Version 1 and version 2 of the test model, and the modified tensors'
/// values on both sides.
fn model(v2: bool) -> Vec<T> {
    let q0 = ramp(256, 1.0);
    let up = ramp(512 * 16, 2.0);
    let ln = vec![1.0f32; 16];
    let mut t = vec![f32s(
        "model.embed_tokens.weight",
        &[64, 16],
        &ramp(1024, 0.0),
    )];
    if !v2 {
        t.push(f32s(
            "model.layers.0.self_attn.q_proj.weight",
            &[16, 16],
            &q0,
        ));
        t.push(f32s("model.layers.0.mlp.up_proj.weight", &[512, 16], &up));
        t.push(f32s(
            "model.layers.1.self_attn.k_proj.weight",
            &[16, 16],
            &q0,
        ));
        t.push(f32s("model.layers.1.input_layernorm.weight", &[16], &ln));
        t.push(f32s("model.layers.1.mlp.down_proj.weight", &[16, 16], &q0));
        t.push(f32s("model.norm.weight", &[16], &ln));
        t.push(i64s("counter", &[1, 2, 3, 4]));
    } else {
        let (q, u, l) = modified();
        t.push(f32s(
            "model.layers.0.self_attn.q_proj.weight",
            &[16, 16],
            &q,
        ));
        t.push(f32s("model.layers.0.mlp.up_proj.weight", &[512, 16], &u));
        t.push(f32s(
            "model.layers.1.self_attn.k_proj.weight",
            &[8, 32],
            &q0,
        ));
        t.push(f32s("model.layers.1.input_layernorm.weight", &[16], &l));
        let retyped = T {
            name: "model.layers.1.mlp.down_proj.weight",
            dtype: "I32",
            shape: vec![16, 16],
            data: vec![0; 1024],
        };
        t.push(retyped);
        t.push(i64s("counter", &[1, 2, 30, 4]));
        t.push(f32s("extra.bias", &[4], &[0.5; 4]));
    }
    t
}

/// The new values of the three modified float tensors.
fn modified() -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let q: Vec<f32> = ramp(256, 1.0)
        .iter()
        .enumerate()
        .map(|(i, x)| x * 1.1 + (i as f32 * 0.01).cos() * 0.002)
        .collect();
    let mut u = ramp(512 * 16, 2.0);
    for x in &mut u[..100] {
        *x += 0.25;
    }
    let mut l = vec![1.0f32; 16];
    l[3] = 1.5;
    l[7] = 0.75;
    (q, u, l)
}

fn expectations() -> Vec<(&'static str, [f64; 5])> {
    let (q, u, l) = modified();
    vec![
        (
            "model.layers.0.self_attn.q_proj.weight",
            common::diff_stats(&ramp(256, 1.0), &q),
        ),
        (
            "model.layers.0.mlp.up_proj.weight",
            common::diff_stats(&ramp(512 * 16, 2.0), &u),
        ),
        (
            "model.layers.1.input_layernorm.weight",
            common::diff_stats(&[1.0; 16], &l),
        ),
    ]
}

fn close(got: f64, want: f64, rel: f64, what: &str) {
    assert!(
        (got - want).abs() <= rel * want.abs().max(1e-12),
        "{what}: printed {got}, expected {want}"
    );
}

/// Checks the driver's text output against the statistics computed here.
fn check_text(out: &str) {
    assert!(
        out.contains("diff --theta a/m/model.safetensors b/m/model.safetensors"),
        "{out}"
    );
    for (name, want) in expectations() {
        let line = out
            .lines()
            .find(|l| l.starts_with("modified") && l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("no row for {name} in\n{out}"));
        let f: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| f[i].parse::<f64>().expect("number");
        close(num(2), want[0], 1e-3, &format!("{name} rel.change"));
        assert!((num(3) - want[1]).abs() < 2e-6, "{name} cosine {line}");
        close(num(4), want[2], 1e-3, &format!("{name} max|Δ|"));
        let pct: f64 = f[5].trim_end_matches('%').parse().expect("pct");
        assert!(
            (pct - want[3] * 100.0).abs() < 0.006,
            "{name} changed {line}"
        );
        close(num(6), want[4], 1e-3, &format!("{name} ‖Δ‖"));
    }
    let has = |kind: &str, name: &str| {
        out.lines().any(|l| {
            let mut w = l.split_whitespace();
            w.next() == Some(kind) && w.next() == Some(name)
        })
    };
    assert!(has("added", "extra.bias"), "{out}");
    assert!(has("removed", "model.norm.weight"), "{out}");
    assert!(
        has("reshaped", "model.layers.1.self_attn.k_proj.weight"),
        "{out}"
    );
    assert!(
        has("retyped", "model.layers.1.mlp.down_proj.weight"),
        "{out}"
    );
    assert!(
        has("modified", "counter"),
        "integer tensors count changes: {out}"
    );
    assert!(
        !out.contains("model.embed_tokens.weight"),
        "unchanged tensors are not listed: {out}"
    );
    assert!(out.contains("layer 0: 2 modified"), "{out}");
    assert!(out.contains("layer 1: 1 modified"), "{out}");
    assert!(out.contains("total: 4 modified"), "{out}");
    assert!(!out.contains('\x1b'), "no colors into a pipe");
}

fn setup(s: &Sandbox) -> std::path::PathBuf {
    let repo = s.repo("repo");
    s.git(&repo, &["config", "theta.chunkSize", "8KiB"]);
    write_safetensors(&repo.join("m/model.safetensors"), &model(false));
    s.git(&repo, &["add", "."]);
    s.git(&repo, &["commit", "-qm", "v1"]);
    write_safetensors(&repo.join("m/model.safetensors"), &model(true));
    repo
}

#[test]
fn git_diff_show_and_log_print_the_numbers_for_worktree_index_and_commits() {
    let s = Sandbox::new();
    let repo = setup(&s);
    // Working tree against the index: the driver hashes the real file.
    let wt = s.git(&repo, &["diff"]);
    check_text(&wt);
    check_text(&s.git(&repo, &["theta", "diff"]));
    s.git(&repo, &["add", "."]);
    assert_eq!(s.git(&repo, &["theta", "diff"]), "", "nothing unstaged");
    check_text(&s.git(&repo, &["diff", "--cached"]));
    check_text(&s.git(&repo, &["theta", "diff", "--cached"]));
    s.git(&repo, &["commit", "-qm", "v2"]);
    check_text(&s.git(&repo, &["diff", "HEAD~1", "HEAD"]));
    check_text(&s.git(&repo, &["show", "--ext-diff", "--format=%s"]));
    check_text(&s.git(&repo, &["log", "-p", "--ext-diff", "-1", "--format=%s"]));
    check_text(&s.git(&repo, &["theta", "diff", "HEAD~1", "HEAD"]));
    check_text(&s.git(&repo, &["theta", "diff", "HEAD~1..HEAD", "--", "m"]));
    // Working tree against a commit.
    check_text(&s.git(&repo, &["theta", "diff", "HEAD~1"]));
    assert_eq!(s.git(&repo, &["theta", "diff", "HEAD", "--", "other"]), "");

    // Plain `git log -p` / `git show`: textconv, a line per tensor.
    let log = s.git(&repo, &["log", "-p", "-1", "--format=%s"]);
    assert!(
        log.lines().any(
            |l| l.starts_with("-model.layers.0.self_attn.q_proj.weight F32 [16, 16] contents=")
        ),
        "{log}"
    );
    assert!(
        log.lines().any(|l| l.starts_with("+extra.bias F32 [4]")),
        "{log}"
    );
    assert!(!log.contains("+model.embed_tokens.weight"), "{log}");

    // --sort change: largest relative change first (after structural changes).
    let by_change = s.git(
        &repo,
        &["theta", "diff", "HEAD~1", "HEAD", "--sort", "change"],
    );
    let rows: Vec<&str> = by_change
        .lines()
        .filter(|l| l.starts_with("modified") && !l.contains("counter"))
        .map(|l| l.split_whitespace().nth(1).expect("name"))
        .collect();
    let mut want = expectations();
    want.sort_by(|a, b| b.1[0].total_cmp(&a.1[0]));
    assert_eq!(rows, want.iter().map(|w| w.0).collect::<Vec<_>>());

    // --stat: a line per checkpoint.
    let stat = s.git(&repo, &["theta", "diff", "--stat", "HEAD~1", "HEAD"]);
    assert!(
        stat.contains(
            "m/model.safetensors | 4 modified, 1 added, 1 removed, 1 reshaped, 1 retyped"
        ),
        "{stat}"
    );
    assert!(stat.contains("1 checkpoint(s) changed"), "{stat}");
    // Colors only when asked.
    let colored = s.git(
        &repo,
        &["theta", "diff", "HEAD~1", "HEAD", "--color", "always"],
    );
    assert!(colored.contains("\x1b[32madded"), "{colored}");
}

/// Every field of docs/diff-json.md, with its type.
fn check_schema(doc: &Value) {
    let obj = |v: &Value, keys: &[&str]| {
        let o = v.as_object().expect("object");
        let mut got: Vec<&str> = o.keys().map(String::as_str).collect();
        got.sort_unstable();
        let mut want = keys.to_vec();
        want.sort_unstable();
        assert_eq!(got, want, "fields of {v}");
    };
    let num_or_null = |v: &Value| assert!(v.is_number() || v.is_null(), "{v}");
    obj(doc, &["schema", "old", "new", "device", "files"]);
    assert_eq!(doc["schema"], "git-theta-diff/1");
    for k in ["old", "new", "device"] {
        assert!(doc[k].is_string());
    }
    let layout = |v: &Value| {
        if !v.is_null() {
            obj(v, &["dtype", "shape"]);
            assert!(v["dtype"].is_string());
            assert!(
                v["shape"]
                    .as_array()
                    .expect("shape")
                    .iter()
                    .all(Value::is_u64)
            );
        }
    };
    let summary = |v: &Value| {
        obj(
            v,
            &[
                "layer",
                "modified",
                "other_changes",
                "numel",
                "changed",
                "norm_diff",
                "norm_old",
                "relative_change",
            ],
        );
        assert!(v["layer"].is_u64() || v["layer"].is_null());
        for k in ["modified", "other_changes", "numel", "changed"] {
            assert!(v[k].is_u64(), "{k}");
        }
        assert!(v["norm_diff"].is_f64() && v["norm_old"].is_f64());
        num_or_null(&v["relative_change"]);
    };
    for f in doc["files"].as_array().expect("files") {
        obj(
            f,
            &[
                "path",
                "status",
                "tensors_old",
                "tensors_new",
                "unchanged",
                "tensors",
                "layers",
                "total",
            ],
        );
        assert!(
            ["modified", "added", "deleted", "not-checkpoint"]
                .contains(&f["status"].as_str().expect("status"))
        );
        for t in f["tensors"].as_array().expect("tensors") {
            obj(t, &["name", "change", "layer", "old", "new", "stats"]);
            assert!(
                ["added", "removed", "reshaped", "retyped", "modified"]
                    .contains(&t["change"].as_str().expect("change"))
            );
            layout(&t["old"]);
            layout(&t["new"]);
            let s = &t["stats"];
            assert_eq!(s.is_null(), t["change"] != "modified");
            if !s.is_null() {
                obj(
                    s,
                    &[
                        "numel",
                        "changed",
                        "changed_fraction",
                        "relative_change",
                        "cosine",
                        "max_abs_diff",
                        "norm_diff",
                        "norm_old",
                        "norm_new",
                    ],
                );
                for k in ["relative_change", "cosine", "max_abs_diff", "norm_diff"] {
                    num_or_null(&s[k]);
                }
            }
        }
        f["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .for_each(summary);
        summary(&f["total"]);
    }
}

#[test]
fn json_follows_the_documented_schema_and_html_has_the_chart() {
    let s = Sandbox::new();
    let repo = setup(&s);
    s.git(&repo, &["commit", "-qam", "v2"]);
    let out = s.git(&repo, &["theta", "diff", "--json", "HEAD~1", "HEAD"]);
    let doc: Value = serde_json::from_str(&out).expect("JSON");
    check_schema(&doc);
    let file = &doc["files"][0];
    assert_eq!(file["path"], "m/model.safetensors");
    assert_eq!(file["unchanged"], 1, "the embedding");
    for (name, want) in expectations() {
        let t = file["tensors"]
            .as_array()
            .expect("tensors")
            .iter()
            .find(|t| t["name"] == name)
            .expect("tensor");
        let st = &t["stats"];
        close(
            st["relative_change"].as_f64().expect("rel"),
            want[0],
            1e-5,
            name,
        );
        assert!((st["cosine"].as_f64().expect("cos") - want[1]).abs() < 1e-6);
        close(
            st["max_abs_diff"].as_f64().expect("max"),
            want[2],
            1e-6,
            name,
        );
        close(
            st["changed_fraction"].as_f64().expect("frac"),
            want[3],
            1e-12,
            name,
        );
        close(st["norm_diff"].as_f64().expect("norm"), want[4], 1e-5, name);
    }
    let counter = file["tensors"]
        .as_array()
        .expect("tensors")
        .iter()
        .find(|t| t["name"] == "counter")
        .expect("counter");
    assert_eq!(counter["stats"]["changed"], 1);
    assert!(counter["stats"]["relative_change"].is_null());
    let layers: Vec<&Value> = file["layers"].as_array().expect("layers").iter().collect();
    assert_eq!(layers[0]["layer"], 0);
    assert_eq!(layers[1]["layer"], 1);
    assert!(layers[2]["layer"].is_null(), "outside layers last");

    s.git(
        &repo,
        &["theta", "diff", "HEAD~1", "HEAD", "--html", "report.html"],
    );
    let html = std::fs::read_to_string(repo.join("report.html")).expect("html");
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert_well_formed(&html);
    assert!(
        html.contains("<svg xmlns=\"http://www.w3.org/2000/svg\""),
        "chart"
    );
    // Layer 0: q and mlp; layer 1: norm.
    assert_eq!(html.matches("<rect class=\"bar\"").count(), 3, "{html}");
    assert!(html.contains("<title>layer 0, q: "), "{html}");
    assert!(html.contains("<title>layer 1, norm: "), "{html}");
    assert!(
        !html.contains("http://") || !html.contains("<script"),
        "self-contained"
    );
    assert!(
        !html.contains("<link") && !html.contains("src="),
        "self-contained"
    );
}

/// Every element opened is closed in order (void and self-closed aside).
fn assert_well_formed(html: &str) {
    let mut stack: Vec<String> = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find('<') {
        let j = rest[i..].find('>').expect("unclosed tag") + i;
        let tag = &rest[i + 1..j];
        rest = &rest[j + 1..];
        if tag.starts_with('!') || tag.ends_with('/') {
            continue;
        }
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        if name == "meta" {
            continue;
        }
        if tag.starts_with('/') {
            assert_eq!(stack.pop().as_deref(), Some(name.as_str()), "</{name}>");
        } else {
            stack.push(name);
        }
    }
    assert!(stack.is_empty(), "unclosed: {stack:?}");
}

#[test]
fn sharded_folders_diff_per_shard() {
    let s = Sandbox::new();
    let repo = s.repo("repo");
    let shard = |i: u32, seed: f32| {
        let path = repo.join(format!("ckpt/model-0000{i}-of-00002.safetensors"));
        let name: &'static str = if i == 1 {
            "model.layers.0.mlp.up_proj.weight"
        } else {
            "model.layers.1.mlp.up_proj.weight"
        };
        write_safetensors(&path, &[f32s(name, &[32, 16], &ramp(512, seed))]);
    };
    shard(1, 0.0);
    shard(2, 1.0);
    std::fs::write(
        repo.join("ckpt/model.safetensors.index.json"),
        "{\"metadata\":{},\"weight_map\":{\"model.layers.0.mlp.up_proj.weight\":\"model-00001-of-00002.safetensors\",\"model.layers.1.mlp.up_proj.weight\":\"model-00002-of-00002.safetensors\"}}\n",
    )
    .expect("index");
    s.git(&repo, &["add", "."]);
    s.git(&repo, &["commit", "-qm", "v1"]);
    shard(2, 1.5);
    s.git(&repo, &["commit", "-qam", "v2"]);
    let stat = s.git(&repo, &["theta", "diff", "--stat", "HEAD~1", "HEAD"]);
    assert!(
        stat.contains("ckpt/model-00002-of-00002.safetensors | 1 modified"),
        "{stat}"
    );
    assert!(!stat.contains("00001"), "{stat}");
    let want = common::diff_stats(&ramp(512, 1.0), &ramp(512, 1.5));
    let out = s.git(&repo, &["diff", "HEAD~1", "HEAD"]);
    let line = out
        .lines()
        .find(|l| l.contains("model.layers.1.mlp.up_proj.weight"))
        .expect("row");
    let rel: f64 = line
        .split_whitespace()
        .nth(2)
        .expect("rel")
        .parse()
        .expect("f64");
    close(rel, want[0], 1e-3, "shard rel.change");
    assert!(!out.contains("00001"), "{out}");
}

#[test]
fn a_missing_object_is_named_not_a_crash() {
    let s = Sandbox::new();
    let repo = setup(&s);
    s.git(&repo, &["commit", "-qam", "v2"]);
    let manifest = s.git(&repo, &["show", "HEAD~1:m/model.safetensors"]);
    let line = manifest
        .lines()
        .find(|l| l.contains("\"model.layers.0.self_attn.q_proj.weight\""))
        .expect("entry");
    let v: Value = serde_json::from_str(line).expect("json");
    let oid = v["objects"][0]["oid"].as_str().expect("oid").to_owned();
    let before = objects(&repo).len();
    let path = objects(&repo)
        .into_iter()
        .find(|p| p.ends_with(&oid))
        .expect("object file");
    std::fs::remove_file(path).expect("rm");
    assert_eq!(objects(&repo).len(), before - 1);
    let out = s.run(&repo, "git", &["theta", "diff", "HEAD~1", "HEAD"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("tensor `model.layers.0.self_attn.q_proj.weight`"),
        "{err}"
    );
    assert!(err.contains(&oid) && err.contains("missing"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let out = s.run(&repo, "git", &["diff", "HEAD~1", "HEAD"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(&oid), "{err}");
}

#[test]
fn install_configures_the_driver_and_uninstall_removes_it() {
    let s = Sandbox::new();
    let get = |key: &str| s.run(&s.home, "git", &["config", "--global", "--get", key]);
    let cmd = get("diff.theta.command");
    assert_eq!(
        String::from_utf8_lossy(&cmd.stdout).trim(),
        "git-theta diff-driver"
    );
    let conv = get("diff.theta.textconv");
    assert_eq!(
        String::from_utf8_lossy(&conv.stdout).trim(),
        "git-theta textconv"
    );
    s.git(&s.home, &["theta", "uninstall"]);
    assert!(!get("diff.theta.command").status.success(), "removed");
    assert!(!get("diff.theta.textconv").status.success(), "removed");
}

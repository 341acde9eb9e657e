//! The interplay of update chains (sparse and side-loaded low-rank updates)
//! with the diff driver / `git theta diff`, the merge driver and clones,
//! through real git and git-lfs. Expected values are computed here from the
//! safetensors files the test wrote.

mod common;

use std::path::{Path, PathBuf};

use common::{Sandbox, diff_stats, manifest_entry, read_f32, sha256_file, write_f32};
use serde_json::Value;

const Q: &str = "model.layers.0.self_attn.q_proj.weight";
const V: &str = "model.layers.0.self_attn.v_proj.weight";
const U: &str = "model.layers.0.mlp.up_proj.weight";
const N: &str = "model.norm.weight";
const FILE: &str = "m/model.safetensors";

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) % 10_007) as f32 / 10_007.0 - 0.5)
        .collect()
}

type Model = Vec<(&'static str, Vec<u64>, Vec<f32>)>;

fn model() -> Model {
    vec![
        (Q, vec![64, 64], values(64 * 64, 1)),
        (V, vec![64, 64], values(64 * 64, 2)),
        (U, vec![128, 64], values(128 * 64, 3)),
        (N, vec![64], vec![1.0; 64]),
    ]
}

/// A repository with [`model`] committed on `main`.
fn committed(s: &Sandbox) -> (PathBuf, Model) {
    let repo = s.repo("repo");
    std::fs::create_dir_all(repo.join("m")).expect("mkdir");
    let base = model();
    write_f32(&repo.join(FILE), &base);
    s.git(&repo, &["add", "."]);
    s.git(&repo, &["commit", "-qm", "base"]);
    (repo, base)
}

/// Adds `delta` to the elements `i` of tensor `name` where `pick(i)`.
fn nudge(m: &mut Model, name: &str, delta: f32, pick: impl Fn(usize) -> bool) {
    let t = m.iter_mut().find(|t| t.0 == name).expect("tensor");
    for (i, x) in t.2.iter_mut().enumerate() {
        if pick(i) {
            *x += delta;
        }
    }
}

/// The update kind and chain length of tensor `name` in `rev:FILE`.
fn update_of(s: &Sandbox, repo: &Path, rev: &str, name: &str) -> (String, usize) {
    let e = manifest_entry(s, repo, &format!("{rev}:{FILE}"), name);
    let kind = e["update"].as_str().unwrap_or("dense").to_owned();
    (kind, e["base"].as_array().map_or(0, Vec::len))
}

fn clean(s: &Sandbox, repo: &Path) {
    assert_eq!(s.git(repo, &["status", "--porcelain"]), "", "git status");
}

/// A copy of the checkpoint as it is now, for the expected values.
fn snapshot(s: &Sandbox, repo: &Path, label: &str) -> PathBuf {
    let to = s.tmp.path().join(format!("{label}.safetensors"));
    std::fs::copy(repo.join(FILE), &to).expect("copy");
    to
}

fn close(got: &Value, want: f64, rel: f64, what: &str) {
    let got = got.as_f64().unwrap_or_else(|| panic!("{what}: {got}"));
    assert!(
        (got - want).abs() <= rel * want.abs().max(1e-12),
        "{what}: reported {got}, expected {want}"
    );
}

/// `git theta diff --json old new` and `git diff old new` (the driver)
/// report exactly the tensors `names` as modified, with the statistics
/// computed from the files `old_file` and `new_file`.
/// No `revs`: the working tree against the index.
fn check_diff(s: &Sandbox, repo: &Path, revs: &[&str], files: [&Path; 2], names: &[&str]) {
    let json = [&["theta", "diff", "--json"], revs].concat();
    let doc: Value = serde_json::from_str(&s.git(repo, &json)).expect("JSON");
    let file = &doc["files"][0];
    assert_eq!(file["path"], FILE);
    let tensors = file["tensors"].as_array().expect("tensors");
    let mut listed: Vec<&str> = tensors
        .iter()
        .map(|t| t["name"].as_str().expect("name"))
        .collect();
    listed.sort_unstable();
    let mut want_names = names.to_vec();
    want_names.sort_unstable();
    assert_eq!(listed, want_names, "{revs:?}: {doc}");
    let text = s.git(repo, &[&["diff"], revs].concat());
    for name in names {
        let want = diff_stats(&read_f32(files[0], name), &read_f32(files[1], name));
        let what = format!("{revs:?} {name}");
        let t = tensors.iter().find(|t| t["name"] == *name).expect("tensor");
        assert_eq!(t["change"], "modified", "{what}");
        let st = &t["stats"];
        close(&st["relative_change"], want[0], 1e-5, &what);
        assert!(
            (st["cosine"].as_f64().expect("cosine") - want[1]).abs() < 1e-6,
            "{what}: cosine {st}"
        );
        close(&st["max_abs_diff"], want[2], 1e-6, &what);
        close(&st["changed_fraction"], want[3], 1e-12, &what);
        close(&st["norm_diff"], want[4], 1e-5, &what);
        // The driver's row: modified NAME rel.change cosine max|Δ| changed% ‖Δ‖.
        let row = text
            .lines()
            .find(|l| l.starts_with("modified") && l.split_whitespace().nth(1) == Some(*name))
            .unwrap_or_else(|| panic!("{what}: no row in\n{text}"));
        let f: Vec<&str> = row.split_whitespace().collect();
        let num = |i: usize| Value::from(f[i].parse::<f64>().expect("number"));
        close(&num(2), want[0], 1e-3, &format!("{what} rel.change"));
        assert!(
            (num(3).as_f64().expect("f") - want[1]).abs() < 2e-6,
            "{row}"
        );
        close(&num(4), want[2], 1e-3, &format!("{what} max|Δ|"));
        let pct: f64 = f[5].trim_end_matches('%').parse().expect("pct");
        assert!((pct - want[3] * 100.0).abs() < 0.006, "{what}: {row}");
        close(&num(6), want[4], 1e-3, &format!("{what} ‖Δ‖"));
    }
}

#[test]
fn diffs_across_sparse_and_low_rank_updates_report_the_files_statistics() {
    let s = Sandbox::new();
    let (repo, mut m) = committed(&s);
    let v1 = snapshot(&s, &repo, "v1");

    // ~1% of up_proj changes: a sparse update.
    nudge(&mut m, U, 0.125, |i| i % 97 == 5);
    write_f32(&repo.join(FILE), &m);
    s.git(&repo, &["commit", "-qam", "v2"]);
    assert_eq!(update_of(&s, &repo, "HEAD", U), ("sparse".into(), 1));
    let v2 = snapshot(&s, &repo, "v2");

    // A PEFT LoRA adapter on q_proj, side-loaded as a low-rank update.
    let adapter = s.tmp.path().join("adapter");
    std::fs::create_dir_all(&adapter).expect("mkdir");
    std::fs::write(
        adapter.join("adapter_config.json"),
        r#"{"peft_type":"LORA","r":2,"lora_alpha":4,"target_modules":["q_proj"],
           "fan_in_fan_out":false,"use_rslora":false,"bias":"none"}"#,
    )
    .expect("config");
    let p = "base_model.model.model.layers.0.self_attn.q_proj";
    write_f32(
        &adapter.join("adapter_model.safetensors"),
        &[
            (&format!("{p}.lora_A.weight"), vec![2, 64], values(128, 7)),
            (&format!("{p}.lora_B.weight"), vec![64, 2], values(128, 8)),
        ],
    );
    let a = adapter.to_str().expect("utf-8");
    s.git(&repo, &["theta", "add", FILE, "--update-data", a]);
    s.git(&repo, &["commit", "-qm", "v3 lora"]);
    clean(&s, &repo);
    assert_eq!(update_of(&s, &repo, "HEAD", Q), ("low-rank".into(), 1));
    assert_eq!(update_of(&s, &repo, "HEAD", U), ("sparse".into(), 1));
    let v3 = snapshot(&s, &repo, "v3");
    assert_ne!(read_f32(&v3, Q), read_f32(&v2, Q), "the adapter applied");

    check_diff(&s, &repo, &["HEAD~2", "HEAD~1"], [&v1, &v2], &[U]);
    check_diff(&s, &repo, &["HEAD~1", "HEAD"], [&v2, &v3], &[Q]);
    check_diff(&s, &repo, &["HEAD~2", "HEAD"], [&v1, &v3], &[Q, U]);
    check_diff(&s, &repo, &["HEAD", "HEAD~2"], [&v3, &v1], &[Q, U]);

    // The working tree against an index whose entries are chains.
    nudge(&mut m, U, -0.5, |i| i % 31 == 0);
    let mut now = model();
    now.retain(|t| t.0 != Q && t.0 != U);
    now.push((Q, vec![64, 64], read_f32(&v3, Q)));
    now.push((
        U,
        vec![128, 64],
        m.iter().find(|t| t.0 == U).expect("U").2.clone(),
    ));
    write_f32(&repo.join(FILE), &now);
    let v4 = snapshot(&s, &repo, "v4");
    check_diff(&s, &repo, &[], [&v3, &v4], &[U]);
}

/// Checks out every `(rev, sha)` in `repo` and compares the checkpoint.
fn checkout_all(s: &Sandbox, repo: &Path, shas: &[(String, String)]) {
    for (rev, sha) in shas {
        s.git(repo, &["checkout", "-q", rev]);
        assert_eq!(&sha256_file(&repo.join(FILE)), sha, "checkout of {rev}");
        clean(s, repo);
    }
}

#[test]
fn merging_sparse_chains_averages_and_clones_check_out_every_commit() {
    let s = Sandbox::new();
    let (repo, base) = committed(&s);
    let mut shas = vec![];
    let mut record = |s: &Sandbox, repo: &Path| {
        let rev = s.git(repo, &["rev-parse", "HEAD"]).trim().to_owned();
        shas.push((rev, sha256_file(&repo.join(FILE))));
    };
    record(&s, &repo);

    // theirs: one sparse update of up_proj.
    s.git(&repo, &["switch", "-qc", "theirs"]);
    let mut theirs = base.clone();
    nudge(&mut theirs, U, 0.25, |i| i % 50 == 1);
    write_f32(&repo.join(FILE), &theirs);
    s.git(&repo, &["commit", "-qam", "theirs"]);
    assert_eq!(update_of(&s, &repo, "HEAD", U), ("sparse".into(), 1));
    record(&s, &repo);

    // ours: a chain of two sparse updates of up_proj (and one of v_proj).
    s.git(&repo, &["switch", "-qc", "ours", "main"]);
    let mut ours = base.clone();
    nudge(&mut ours, U, -0.125, |i| i % 50 == 2);
    write_f32(&repo.join(FILE), &ours);
    s.git(&repo, &["commit", "-qam", "ours 1"]);
    record(&s, &repo);
    nudge(&mut ours, U, 0.5, |i| i % 50 == 1 || i % 50 == 3);
    nudge(&mut ours, V, 0.5, |i| i % 64 == 0);
    write_f32(&repo.join(FILE), &ours);
    s.git(&repo, &["commit", "-qam", "ours 2"]);
    assert_eq!(update_of(&s, &repo, "HEAD", U), ("sparse".into(), 2));
    assert_eq!(update_of(&s, &repo, "HEAD", V), ("sparse".into(), 1));
    record(&s, &repo);

    let out = s.run(&repo, "git", &["merge", "--no-edit", "theirs"]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert!(said.contains("merged by"), "{said}");
    clean(&s, &repo);
    let merged = repo.join(FILE);
    let get = |m: &Model, name: &str| m.iter().find(|t| t.0 == name).expect("t").2.clone();
    let want: Vec<f32> = get(&ours, U)
        .iter()
        .zip(get(&theirs, U))
        .map(|(x, y)| 0.5 * x + 0.5 * y)
        .collect();
    let got = read_f32(&merged, U);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-6 + 1e-6 * w.abs(),
            "{U}[{i}]: {g} vs {w}"
        );
    }
    // Only ours changed v_proj: it is taken as it is.
    assert_eq!(read_f32(&merged, V), get(&ours, V));
    assert_eq!(read_f32(&merged, Q), get(&base, Q));
    record(&s, &repo);

    // A sparse update on top of the merged tensor.
    let mut top = ours.clone();
    top.iter_mut().find(|t| t.0 == U).expect("U").2 = got;
    nudge(&mut top, U, 1.0, |i| i % 100 == 7);
    write_f32(&merged, &top);
    s.git(&repo, &["commit", "-qam", "on top of the merge"]);
    clean(&s, &repo);
    let (kind, chain) = update_of(&s, &repo, "HEAD", U);
    assert_eq!(kind, "sparse");
    let merge_chain = update_of(&s, &repo, "HEAD~1", U).1;
    assert_eq!(chain, merge_chain + 1, "one more update than the merge's");
    record(&s, &repo);
    checkout_all(&s, &repo, &shas);

    // A clone from a bare remote checks out every commit, chains included.
    let remote = s.tmp.path().join("remote.git");
    std::fs::create_dir_all(&remote).expect("mkdir");
    s.git(&remote, &["init", "-q", "--bare"]);
    let url = format!("file://{}", remote.display());
    s.git(&repo, &["remote", "add", "origin", &url]);
    s.git(&repo, &["push", "-q", "origin", "ours", "theirs", "main"]);
    s.git(s.tmp.path(), &["clone", "-q", "-b", "ours", &url, "clone"]);
    let clone = s.tmp.path().join("clone");
    assert_eq!(
        &sha256_file(&clone.join(FILE)),
        &shas.last().expect("tip").1
    );
    checkout_all(&s, &clone, &shas);

    // Fresh clones of `theirs` have none of ours' chain objects: diffing
    // (in one) and merging (in another) ours fetch them.
    let fresh = |name: &str| {
        s.git(s.tmp.path(), &["clone", "-q", "-b", "theirs", &url, name]);
        let dir = s.tmp.path().join(name);
        let n = common::objects(&dir).len();
        (dir, n)
    };
    let (ours2, merge) = (&shas[3].0, &shas[4].0);
    let (clone2, before) = fresh("clone2");
    let base_file = s.tmp.path().join("base.safetensors");
    write_f32(&base_file, &base);
    let ours_file = s.tmp.path().join("ours.safetensors");
    write_f32(&ours_file, &ours);
    let revs = [shas[0].0.as_str(), ours2.as_str()];
    check_diff(&s, &clone2, &revs, [&base_file, &ours_file], &[U, V]);
    assert!(common::objects(&clone2).len() > before, "diff fetched");
    let (clone3, before) = fresh("clone3");
    let out = s.run(&clone3, "git", &["merge", "--no-edit", ours2]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(common::objects(&clone3).len() > before, "merge fetched");
    let merged_sha = &shas.iter().find(|(r, _)| r == merge).expect("merge").1;
    assert_eq!(
        &sha256_file(&clone3.join(FILE)),
        merged_sha,
        "the same merge"
    );
    clean(&s, &clone3);
}

#[test]
fn a_dense_side_merges_with_a_sparse_chain() {
    let s = Sandbox::new();
    let (repo, base) = committed(&s);
    // theirs rescales all of up_proj: a dense snapshot.
    s.git(&repo, &["switch", "-qc", "theirs"]);
    let mut theirs = base.clone();
    let t = theirs.iter_mut().find(|t| t.0 == U).expect("U");
    t.2.iter_mut().for_each(|x| *x *= 1.5);
    write_f32(&repo.join(FILE), &theirs);
    s.git(&repo, &["commit", "-qam", "theirs"]);
    assert_eq!(update_of(&s, &repo, "HEAD", U), ("dense".into(), 0));
    // ours: a sparse chain of two.
    s.git(&repo, &["switch", "-qc", "ours", "main"]);
    let mut ours = base.clone();
    for (round, delta) in [(3, 0.25f32), (4, -0.75)] {
        nudge(&mut ours, U, delta, |i| i % 40 == round);
        write_f32(&repo.join(FILE), &ours);
        s.git(&repo, &["commit", "-qam", "ours"]);
    }
    assert_eq!(update_of(&s, &repo, "HEAD", U), ("sparse".into(), 2));
    let out = s
        .cmd(&repo, "git", &["merge", "--no-edit", "theirs"])
        .env("THETA_MERGE_STRATEGY", "task_arithmetic")
        .env("THETA_MERGE_PARAMS", "lambda=1")
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    clean(&s, &repo);
    let get = |m: &Model| m.iter().find(|t| t.0 == U).expect("U").2.clone();
    let (b, o, th) = (get(&base), get(&ours), get(&theirs));
    let got = read_f32(&repo.join(FILE), U);
    for i in 0..b.len() {
        let want = b[i] + ((o[i] - b[i]) + (th[i] - b[i]));
        assert!(
            (got[i] - want).abs() <= 1e-6 + 1e-6 * want.abs(),
            "{U}[{i}]: {} vs {want}",
            got[i]
        );
    }
    let merged = sha256_file(&repo.join(FILE));
    // A sparse update over the merge, then back and forth.
    let mut top = ours.clone();
    top.iter_mut().find(|t| t.0 == U).expect("U").2 = got;
    nudge(&mut top, U, 2.0, |i| i == 77);
    write_f32(&repo.join(FILE), &top);
    s.git(&repo, &["commit", "-qam", "top"]);
    assert_eq!(update_of(&s, &repo, "HEAD", U).0, "sparse");
    let tip = sha256_file(&repo.join(FILE));
    s.git(&repo, &["checkout", "-q", "HEAD~1"]);
    assert_eq!(sha256_file(&repo.join(FILE)), merged);
    s.git(&repo, &["checkout", "-q", "ours"]);
    assert_eq!(sha256_file(&repo.join(FILE)), tip);
    clean(&s, &repo);
}

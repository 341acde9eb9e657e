//! Update kinds through real git commits: sparse chains, compaction, rebase,
//! push/clone, and side-loaded PEFT LoRA and IA3 adapters.

mod common;

use std::path::Path;

use common::{Sandbox, sha256_file, write_f32};
use theta_engine::safetensors::SafetensorsFile;

const Q0: &str = "model.layers.0.self_attn.q_proj.weight";

fn example(s: &Sandbox, repo: &Path) -> std::path::PathBuf {
    s.git(repo, &["theta", "example", "m", "--seed", "1"]);
    s.git(repo, &["add", "."]);
    s.git(repo, &["commit", "-qm", "base"]);
    repo.join("m/model.safetensors")
}

/// Changes elements `i` of tensor `name` where `pick(i)` (bf16: the low
/// mantissa bit and `round` flips).
fn edit(path: &Path, name: &str, round: u8, pick: impl Fn(usize) -> bool) -> usize {
    let range = common::tensor_range(path, name);
    let mut bytes = std::fs::read(path).expect("read");
    let (start, n) = (range.start, range.len() / 2);
    let mut changed = 0;
    for i in (0..n).filter(|&i| pick(i)) {
        bytes[start + 2 * i] ^= 1 | (round << 1);
        changed += 1;
    }
    std::fs::write(path, bytes).expect("write");
    changed
}

/// The manifest line of tensor `name` in `rev:m/model.safetensors`.
fn entry(s: &Sandbox, repo: &Path, rev: &str, name: &str) -> serde_json::Value {
    common::manifest_entry(s, repo, &format!("{rev}:m/model.safetensors"), name)
}

fn update_of(s: &Sandbox, repo: &Path, rev: &str, name: &str) -> (String, usize) {
    let e = entry(s, repo, rev, name);
    let kind = e["update"].as_str().expect("update").to_owned();
    let chain = e["base"].as_array().map_or(0, Vec::len);
    (kind, chain)
}

fn clean(s: &Sandbox, repo: &Path) {
    assert_eq!(
        s.git(repo, &["status", "--porcelain"]),
        "",
        "git status is clean"
    );
}

fn lfs_bytes(repo: &Path) -> u64 {
    common::objects(repo)
        .iter()
        .map(|p| std::fs::metadata(p).expect("meta").len())
        .sum()
}

#[test]
fn a_chain_of_20_sparse_updates_checks_out_exactly_and_compacts() {
    let s = Sandbox::new();
    let repo = s.repo("repo");
    let model = example(&s, &repo);
    let mut shas = vec![sha256_file(&model)];
    for round in 0..20u8 {
        let before = lfs_bytes(&repo);
        // 1% of q_proj (65536 elements), different ones each round.
        let changed = edit(&model, Q0, round % 4, |i| i % 100 == usize::from(round));
        assert_eq!(changed, 656);
        s.git(&repo, &["commit", "-qam", &format!("round {round}")]);
        shas.push(sha256_file(&model));
        clean(&s, &repo);
        let (kind, chain) = update_of(&s, &repo, "HEAD", Q0);
        // theta.maxChain defaults to 10: the 11th update is a snapshot.
        if round == 10 {
            assert_eq!((kind.as_str(), chain), ("dense", 0), "round {round}");
        } else {
            assert_eq!(kind, "sparse", "round {round}");
            let want = if round < 10 { round + 1 } else { round - 10 };
            assert_eq!(chain, usize::from(want), "round {round}");
            let added = lfs_bytes(&repo) - before;
            // 656 changed bf16 elements: ~2 KB of list, not 128 KiB of tensor.
            assert!(
                added < 4096,
                "round {round}: {added} bytes stored:\n{}",
                s.git(&repo, &["show", "HEAD"])
            );
        }
        let (other, _) = update_of(&s, &repo, "HEAD", "model.norm.weight");
        assert_eq!(other, "dense", "unchanged tensors keep their entry");
    }
    for (i, sha) in shas.iter().enumerate() {
        let rev = format!("main~{}", shas.len() - 1 - i);
        s.git(&repo, &["checkout", "-q", &rev]);
        assert_eq!(&sha256_file(&model), sha, "checkout of {rev}");
        clean(&s, &repo);
    }
    s.git(&repo, &["checkout", "-q", "main"]);

    // Compaction: the same bytes, a dense entry, staged.
    s.git(&repo, &["theta", "compact", "m/model.safetensors"]);
    let staged = s.git(&repo, &["cat-file", "blob", ":m/model.safetensors"]);
    assert!(
        staged.starts_with("{\"git_theta_manifest\":1,"),
        "all dense again"
    );
    assert_eq!(
        s.git(&repo, &["status", "--porcelain"]),
        "M  m/model.safetensors\n"
    );
    s.git(&repo, &["commit", "-qm", "compact"]);
    clean(&s, &repo);
    s.git(&repo, &["checkout", "-q", "HEAD~3"]);
    s.git(&repo, &["checkout", "-q", "main"]);
    assert_eq!(&sha256_file(&model), shas.last().expect("last"));
    clean(&s, &repo);
}

#[test]
fn rebase_squash_and_clone_keep_chains_readable() {
    let s = Sandbox::new();
    let repo = s.repo("repo");
    let model = example(&s, &repo);
    s.git(&repo, &["checkout", "-qb", "tune"]);
    let mut shas = vec![];
    for round in 0..3u8 {
        edit(&model, Q0, round, |i| i % 50 == usize::from(round));
        s.git(&repo, &["commit", "-qam", &format!("tune {round}")]);
        shas.push(sha256_file(&model));
    }
    assert_eq!(update_of(&s, &repo, "HEAD", Q0), ("sparse".to_owned(), 3));
    s.git(&repo, &["checkout", "-q", "main"]);
    std::fs::write(repo.join("README"), "hello\n").expect("write");
    s.git(&repo, &["add", "README"]);
    s.git(&repo, &["commit", "-qm", "readme"]);
    s.git(&repo, &["checkout", "-q", "tune"]);
    s.git(&repo, &["rebase", "-q", "main"]);
    for (i, sha) in shas.iter().enumerate() {
        s.git(&repo, &["checkout", "-q", &format!("tune~{}", 2 - i)]);
        assert_eq!(&sha256_file(&model), sha, "rebased commit {i}");
        clean(&s, &repo);
    }
    // Squash the three into one commit: the tip's chain still rebuilds.
    s.git(&repo, &["checkout", "-q", "tune"]);
    s.git(&repo, &["reset", "-q", "--soft", "main"]);
    s.git(&repo, &["commit", "-qm", "squashed"]);
    s.git(&repo, &["checkout", "-q", "main"]);
    s.git(&repo, &["checkout", "-q", "tune"]);
    assert_eq!(&sha256_file(&model), &shas[2]);

    // A clone fetches the base objects the chain needs.
    let remote = s.tmp.path().join("remote.git");
    std::fs::create_dir_all(&remote).expect("mkdir");
    s.git(&remote, &["init", "-q", "--bare"]);
    let url = format!("file://{}", remote.display());
    s.git(&repo, &["remote", "add", "origin", &url]);
    s.git(&repo, &["push", "-q", "origin", "tune"]);
    let out = s.run(
        s.tmp.path(),
        "git",
        &["clone", "-q", "-b", "tune", &url, "clone"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cloned = s.tmp.path().join("clone/m/model.safetensors");
    assert_eq!(sha256_file(&cloned), shas[2]);
    clean(&s, &s.tmp.path().join("clone"));
}

#[test]
fn forced_kinds_and_a_new_tensor_given_a_sparse_update() {
    let s = Sandbox::new();
    let repo = s.repo("repo");
    s.git(&repo, &["theta", "example", "m", "--seed", "2"]);
    let out = s.run(
        &repo,
        "git",
        &["theta", "add", "--update", "sparse", "m", ".gitattributes"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("has no previous version to update: stored dense"),
        "{err}"
    );
    s.git(&repo, &["commit", "-qm", "v1"]);
    assert_eq!(update_of(&s, &repo, "HEAD", Q0).0, "dense");
    let model = repo.join("m/model.safetensors");
    // 90% of the elements: dense is cheaper, so auto stores dense…
    edit(&model, Q0, 0, |i| i % 10 != 0);
    s.git(&repo, &["theta", "add", "m/model.safetensors"]);
    let staged = entry(&s, &repo, "", Q0);
    assert_eq!(staged["update"], "dense");
    // …unless asked for sparse.
    edit(&model, Q0, 1, |i| i % 10 != 0);
    s.git(
        &repo,
        &["theta", "add", "--update", "sparse", "m/model.safetensors"],
    );
    assert_eq!(entry(&s, &repo, "", Q0)["update"], "sparse");
    let bad = s.run(
        &repo,
        "git",
        &[
            "theta",
            "add",
            "--update",
            "low-rank",
            "m/model.safetensors",
        ],
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("needs --update-data"));
    s.git(&repo, &["commit", "-qm", "v2"]);
    clean(&s, &repo);
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) % 1000) as f32 / 1000.0 - 0.5)
        .collect()
}

fn bf16_at(path: &Path, name: &str, index: usize) -> f32 {
    let file = SafetensorsFile::open(path).expect("open");
    let v = file.tensor(name).expect("tensor").to_f32().expect("f32");
    v[index]
}

/// A repository with the example model committed, and a copy of that base,
/// for side-loading adapters onto it.
struct Based {
    s: Sandbox,
    repo: std::path::PathBuf,
    model: std::path::PathBuf,
    base_copy: std::path::PathBuf,
}

impl Based {
    fn new() -> Based {
        let s = Sandbox::new();
        let repo = s.repo("repo");
        let model = example(&s, &repo);
        let base_copy = s.tmp.path().join("base.safetensors");
        std::fs::copy(&model, &base_copy).expect("copy");
        Based {
            s,
            repo,
            model,
            base_copy,
        }
    }

    /// An adapter folder `name` holding `config` as adapter_config.json.
    fn adapter(&self, name: &str, config: &str) -> std::path::PathBuf {
        let dir = self.s.tmp.path().join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("adapter_config.json"), config).expect("config");
        dir
    }

    /// `git theta add --update-data DIR`, then a commit: the SHA-256 of
    /// the file add wrote, the status being clean.
    fn side_load(&self, dir: &Path) -> String {
        let dir = dir.to_str().expect("utf-8");
        let (s, repo) = (&self.s, &self.repo);
        s.git(
            repo,
            &["theta", "add", "m/model.safetensors", "--update-data", dir],
        );
        let written = sha256_file(&self.model);
        s.git(repo, &["commit", "-qm", "side-loaded"]);
        clean(s, repo);
        written
    }

    /// Checkout of the base commit gives the base back, and of main the file
    /// add wrote.
    fn checks_out(&self, written: &str) {
        let (s, repo) = (&self.s, &self.repo);
        s.git(repo, &["checkout", "-q", "HEAD~1"]);
        assert_eq!(sha256_file(&self.model), sha256_file(&self.base_copy));
        s.git(repo, &["checkout", "-q", "main"]);
        assert_eq!(sha256_file(&self.model), written);
        clean(s, repo);
    }
}

#[test]
fn a_peft_lora_adapter_with_rank_and_alpha_patterns_is_side_loaded() {
    let b = Based::new();
    let (s, repo, model, base_copy) = (&b.s, &b.repo, &b.model, &b.base_copy);
    let adapter = b.adapter(
        "adapter",
        r#"{"peft_type":"LORA","r":4,"lora_alpha":8,"target_modules":["q_proj","v_proj"],
           "rank_pattern":{"model.layers.1.self_attn.v_proj":2},
           "alpha_pattern":{"layers.1.self_attn.v_proj":16},
           "fan_in_fan_out":false,"use_rslora":false,"bias":"none"}"#,
    );
    let p = "base_model.model.model.layers";
    write_f32(
        &adapter.join("adapter_model.safetensors"),
        &[
            (
                &format!("{p}.0.self_attn.q_proj.lora_A.weight"),
                vec![4, 256],
                values(1024, 1),
            ),
            (
                &format!("{p}.0.self_attn.q_proj.lora_B.weight"),
                vec![256, 4],
                values(1024, 2),
            ),
            (
                &format!("{p}.1.self_attn.v_proj.lora_A.weight"),
                vec![2, 256],
                values(512, 3),
            ),
            (
                &format!("{p}.1.self_attn.v_proj.lora_B.weight"),
                vec![128, 2],
                values(256, 4),
            ),
        ],
    );
    let written = b.side_load(&adapter);
    // Exactly what apply-lora writes from the base.
    let a = adapter.to_str().expect("utf-8");
    let out = s.tmp.path().join("merged.safetensors");
    let base = base_copy.to_str().expect("utf-8");
    s.git(
        repo,
        &[
            "theta",
            "apply-lora",
            base,
            a,
            "-o",
            out.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(sha256_file(&out), written);
    assert_eq!(update_of(s, repo, "HEAD", Q0), ("low-rank".to_owned(), 1));
    let v1 = "model.layers.1.self_attn.v_proj.weight";
    assert_eq!(update_of(s, repo, "HEAD", v1).0, "low-rank");
    assert_eq!(
        update_of(s, repo, "HEAD", "model.layers.1.self_attn.q_proj.weight").0,
        "dense"
    );
    // Scales: alpha / r = 2 for q_proj; 16 / 2 = 8 for v_proj (patterns).
    let (a1, b1) = (values(512, 3), values(256, 4));
    let delta: f32 = (0..2).map(|k| b1[k] * a1[k * 256]).sum();
    let want = bf16_at(base_copy, v1, 0) + 8.0 * delta;
    let got = bf16_at(model, v1, 0);
    assert!(
        (got - want).abs() <= want.abs() / 128.0 + 1e-6,
        "{got} vs {want}"
    );
    b.checks_out(&written);
}

#[test]
fn an_ia3_adapter_scales_rows_and_feed_forward_columns() {
    let b = Based::new();
    let (s, repo, model, base_copy) = (&b.s, &b.repo, &b.model, &b.base_copy);
    let adapter = b.adapter(
        "ia3",
        r#"{"peft_type":"IA3","target_modules":["k_proj","down_proj"],"feedforward_modules":["down_proj"],"fan_in_fan_out":false}"#,
    );
    let p = "base_model.model.model.layers.0";
    let k: Vec<f32> = (0..128).map(|i| 1.0 + i as f32 / 128.0).collect();
    let d: Vec<f32> = (0..688).map(|i| 2.0 - i as f32 / 688.0).collect();
    write_f32(
        &adapter.join("adapter_model.safetensors"),
        &[
            (
                &format!("{p}.self_attn.k_proj.ia3_l.weight"),
                vec![128, 1],
                k.clone(),
            ),
            (
                &format!("{p}.mlp.down_proj.ia3_l.weight"),
                vec![1, 688],
                d.clone(),
            ),
        ],
    );
    let written = b.side_load(&adapter);
    let kp = "model.layers.0.self_attn.k_proj.weight";
    let dp = "model.layers.0.mlp.down_proj.weight";
    assert_eq!(update_of(s, repo, "HEAD", kp).0, "ia3");
    assert_eq!(update_of(s, repo, "HEAD", dp).0, "ia3");
    // k_proj row 5 scaled by k[5]; down_proj column 7 by d[7].
    let close = |a: f32, b: f32| (a - b).abs() <= b.abs() / 128.0 + 1e-6;
    assert!(close(
        bf16_at(model, kp, 5 * 256 + 3),
        bf16_at(base_copy, kp, 5 * 256 + 3) * k[5]
    ));
    assert!(close(
        bf16_at(model, dp, 2 * 688 + 7),
        bf16_at(base_copy, dp, 2 * 688 + 7) * d[7]
    ));
    b.checks_out(&written);
}

#[test]
fn a_change_below_the_tolerance_counts_as_unchanged() {
    let s = Sandbox::new();
    let repo = s.repo("repo");
    let model = example(&s, &repo);
    s.git(&repo, &["config", "theta.updateTolerance", "1e-3"]);
    let committed = sha256_file(&model);
    // One low mantissa bit of one element: far below 0.1% of the norm.
    edit(&model, Q0, 0, |i| i == 7);
    s.git(&repo, &["add", "m/model.safetensors"]);
    // Nothing to commit (the documented caveat: the file differs from HEAD).
    clean(&s, &repo);
    assert_ne!(sha256_file(&model), committed);
    // A real change still counts.
    edit(&model, Q0, 3, |i| i % 3 == 0);
    s.git(&repo, &["add", "m/model.safetensors"]);
    assert_eq!(
        s.git(&repo, &["status", "--porcelain"]),
        "M  m/model.safetensors\n"
    );
    s.git(&repo, &["config", "theta.updateTolerance", "-1"]);
    let bad = s.run(&repo, "git", &["theta", "status"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("theta.updateTolerance"));
}

/// The shape of tensor `name` in `path`.
fn shape_of(path: &Path, name: &str) -> Vec<u64> {
    let file = SafetensorsFile::open(path).expect("open");
    file.get(name).expect("tensor").info.shape.clone()
}

#[test]
fn a_lora_on_the_embedding_is_transposed_as_peft_merges_it() {
    let b = Based::new();
    let (s, repo, model, base_copy) = (&b.s, &b.repo, &b.model, &b.base_copy);
    let emb = "model.embed_tokens.weight";
    let [vocab, hidden] = shape_of(model, emb)[..] else {
        panic!("embedding is 2-D");
    };
    let (vocab, hidden) = (vocab as usize, hidden as usize);
    let adapter = b.adapter(
        "adapter",
        r#"{"peft_type":"LORA","r":2,"lora_alpha":6,"target_modules":["embed_tokens"],"bias":"none"}"#,
    );
    // PEFT's Embedding layer: A is [r, num_embeddings], B [embedding_dim, r],
    // keys without `.weight`, and ΔW = (B·A)ᵀ·s.
    let (fa, fb) = (values(2 * vocab, 5), values(hidden * 2, 6));
    write_f32(
        &adapter.join("adapter_model.safetensors"),
        &[
            (
                "base_model.model.model.embed_tokens.lora_embedding_A",
                vec![2, vocab as u64],
                fa.clone(),
            ),
            (
                "base_model.model.model.embed_tokens.lora_embedding_B",
                vec![hidden as u64, 2],
                fb.clone(),
            ),
        ],
    );
    let written = b.side_load(&adapter);
    assert_eq!(update_of(s, repo, "HEAD", emb), ("low-rank".to_owned(), 1));
    // Token 7, feature 3: base + 3·Σₖ A[k, 7]·B[3, k].
    let (tok, feat) = (7, 3);
    let delta: f32 = (0..2).map(|k| fa[k * vocab + tok] * fb[feat * 2 + k]).sum();
    let want = bf16_at(base_copy, emb, tok * hidden + feat) + 3.0 * delta;
    let got = bf16_at(model, emb, tok * hidden + feat);
    assert!(
        (got - want).abs() <= want.abs() / 128.0 + 1e-6,
        "{got} vs {want}"
    );
    // The committed stored form is the factors, not the embedding.
    let stored = entry(s, repo, "HEAD", emb)["objects"][0]["size"]
        .as_u64()
        .expect("size");
    assert!(
        stored < (vocab * hidden * 2 / 10) as u64,
        "{stored} bytes stored for a rank-2 update"
    );
    b.checks_out(&written);
}

#[test]
fn an_ia3_adapter_with_fan_in_fan_out_scales_the_other_axis() {
    let b = Based::new();
    let (s, repo, model, base_copy) = (&b.s, &b.repo, &b.model, &b.base_copy);
    let kp = "model.layers.0.self_attn.k_proj.weight";
    let dp = "model.layers.0.mlp.down_proj.weight";
    let (ks, ds) = (shape_of(model, kp), shape_of(model, dp));
    let (k_rows, k_cols) = (ks[0] as usize, ks[1] as usize);
    let (d_rows, d_cols) = (ds[0] as usize, ds[1] as usize);
    let adapter = b.adapter(
        "ia3",
        r#"{"peft_type":"IA3","target_modules":["k_proj","down_proj"],"feedforward_modules":["down_proj"],"fan_in_fan_out":true}"#,
    );
    // Conv1D-style weights are [in, out]: k_proj's vector ([out, 1]) scales
    // its columns, down_proj's feed-forward one ([1, in]) its rows.
    let p = "base_model.model.model.layers.0";
    let k: Vec<f32> = (0..k_cols).map(|i| 1.0 + i as f32 / 64.0).collect();
    let d: Vec<f32> = (0..d_rows).map(|i| 2.0 - i as f32 / 256.0).collect();
    write_f32(
        &adapter.join("adapter_model.safetensors"),
        &[
            (
                &format!("{p}.self_attn.k_proj.ia3_l.weight"),
                vec![k_cols as u64, 1],
                k.clone(),
            ),
            (
                &format!("{p}.mlp.down_proj.ia3_l.weight"),
                vec![1, d_rows as u64],
                d.clone(),
            ),
        ],
    );
    let written = b.side_load(&adapter);
    assert_eq!(update_of(s, repo, "HEAD", kp).0, "ia3");
    assert_eq!(update_of(s, repo, "HEAD", dp).0, "ia3");
    let close = |a: f32, b: f32| (a - b).abs() <= b.abs() / 128.0 + 1e-6;
    for (row, col) in [(0, 0), (5, 9), (k_rows - 1, k_cols - 1)] {
        let i = row * k_cols + col;
        let (got, base) = (bf16_at(model, kp, i), bf16_at(base_copy, kp, i));
        assert!(
            close(got, base * k[col]),
            "k_proj[{row}, {col}]: {got} vs {base}·{}",
            k[col]
        );
    }
    for (row, col) in [(0, 0), (9, 5), (d_rows - 1, d_cols - 1)] {
        let i = row * d_cols + col;
        let (got, base) = (bf16_at(model, dp, i), bf16_at(base_copy, dp, i));
        assert!(
            close(got, base * d[row]),
            "down_proj[{row}, {col}]: {got} vs {base}·{}",
            d[row]
        );
    }
    b.checks_out(&written);
}

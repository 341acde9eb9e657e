//! `git theta merge` through the real binary on real files.

use std::path::Path;
use std::process::{Command, Output};

fn theta(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_git-theta"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run git-theta")
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = theta(dir, args);
    assert!(
        out.status.success(),
        "git-theta {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn err(dir: &Path, args: &[&str]) -> String {
    let out = theta(dir, args);
    assert!(!out.status.success(), "git-theta {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn models(dir: &Path) {
    ok(dir, &["example", "a", "--seed", "1"]);
    ok(dir, &["example", "b", "--seed", "2"]);
}

const FRANKEN: &str = "slices:\n  - sources:\n      - model: a\n        layer_range: [0, 3]\n  - sources:\n      - model: b\n        layer_range: [1, 4]\nmerge_method: passthrough\n";

#[test]
fn passthrough_frankenmerge_stacks_layers_and_updates_the_config() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    models(dir);
    std::fs::write(dir.join("franken.yml"), FRANKEN).expect("write config");
    ok(dir, &["merge", "franken.yml", "out"]);

    let a = theta_engine::checkpoint::open(dir.join("a")).expect("a");
    let b = theta_engine::checkpoint::open(dir.join("b")).expect("b");
    let out = theta_engine::checkpoint::open(dir.join("out")).expect("merged");
    assert_eq!(out.tensors().len(), 3 + 6 * 9);
    let same = |x: &dyn theta_engine::checkpoint::Checkpoint, xn: &str, yn: &str| {
        assert_eq!(
            x.tensor(xn).expect("src").data,
            out.tensor(yn).expect("out").data,
            "{yn} from {xn}"
        );
    };
    same(
        a.as_ref(),
        "model.embed_tokens.weight",
        "model.embed_tokens.weight",
    );
    same(
        a.as_ref(),
        "model.layers.2.mlp.up_proj.weight",
        "model.layers.2.mlp.up_proj.weight",
    );
    same(
        b.as_ref(),
        "model.layers.1.mlp.up_proj.weight",
        "model.layers.3.mlp.up_proj.weight",
    );
    same(
        b.as_ref(),
        "model.layers.3.self_attn.o_proj.weight",
        "model.layers.5.self_attn.o_proj.weight",
    );
    same(b.as_ref(), "lm_head.weight", "lm_head.weight");

    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("out/config.json")).expect("config"))
            .expect("json");
    assert_eq!(config["num_hidden_layers"], 6);
    let card = std::fs::read_to_string(dir.join("out/README.md")).expect("card");
    assert!(
        card.contains("**passthrough**") && card.contains("layer_range: [1, 4]"),
        "{card}"
    );
}

#[test]
fn bad_configurations_fail_before_anything_is_written() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    models(dir);
    let cases = [
        (
            "typo.yml",
            FRANKEN.replace("merge_method", "merge_methd"),
            "merge_methd",
        ),
        (
            "method.yml",
            FRANKEN.replace("passthrough", "passthru"),
            "unknown merge_method `passthru`",
        ),
        (
            "param.yml",
            FRANKEN.to_owned() + "parameters: {densty: 0.5}\n",
            "`densty` is not a parameter of passthrough",
        ),
        (
            "missing.yml",
            FRANKEN.replace("model: b", "model: nowhere"),
            "cannot open model nowhere",
        ),
        (
            "range.yml",
            FRANKEN.replace("[1, 4]", "[3, 5]"),
            "no tensors of layer 4",
        ),
    ];
    for (name, text, expected) in cases {
        std::fs::write(dir.join(name), text).expect("write");
        let e = err(dir, &["merge", name, "out"]);
        assert!(e.contains(expected), "{name}: {e}");
        assert!(!dir.join("out").exists(), "{name}: nothing written");
    }
    let e = err(
        dir,
        &["merge", "--method", "ties", "--base", "a", "b", "-o", "out"],
    );
    assert!(e.contains("`weight` is required"), "{e}");
    assert!(!dir.join("out").exists());
}

#[test]
fn ties_merges_inputs_of_mixed_dtypes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    models(dir);
    ok(dir, &["example", "c", "--seed", "3", "--dtype", "f32"]);
    let args = [
        "merge",
        "--method",
        "ties",
        "--base",
        "a",
        "b:0.5",
        "c:0.5",
        "--density",
        "0.5",
        "--device",
        "cpu",
        "-o",
    ];
    ok(dir, &[&args[..], &["out"]].concat());
    ok(dir, &[&args[..], &["again"]].concat());
    let bytes = |d: &str| std::fs::read(dir.join(d).join("model.safetensors")).expect("read");
    assert_eq!(bytes("out"), bytes("again"), "deterministic");
    let out = theta_engine::checkpoint::open(dir.join("out")).expect("out");
    let t = out
        .tensor("model.layers.0.mlp.up_proj.weight")
        .expect("tensor");
    assert_eq!(t.info.dtype, theta_engine::DType::BF16, "the base's dtype");
    let a = theta_engine::checkpoint::open(dir.join("a")).expect("a");
    let x = a.tensor("model.layers.0.mlp.up_proj.weight").expect("a");
    assert_ne!(t.data, x.data, "merged, not copied");
    assert!(t.to_f32().expect("f32").iter().all(|v| v.is_finite()));
}

#[test]
fn short_form_and_dry_run() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    models(dir);
    let plan = ok(
        dir,
        &[
            "merge",
            "--method",
            "passthrough",
            "a",
            "-o",
            "out",
            "--dry-run",
        ],
    );
    assert!(
        plan.contains("passthrough merge of 1 models into 39 tensors"),
        "{plan}"
    );
    assert!(!dir.join("out").exists());
    ok(
        dir,
        &[
            "merge",
            "--method",
            "passthrough",
            "a",
            "--param",
            "scale=2",
            "-o",
            "out",
            "--dtype",
            "float32",
        ],
    );
    let a = theta_engine::checkpoint::open(dir.join("a")).expect("a");
    let out = theta_engine::checkpoint::open(dir.join("out")).expect("out");
    let x = a
        .tensor("model.norm.weight")
        .expect("a")
        .to_f32()
        .expect("f32");
    let y = out
        .tensor("model.norm.weight")
        .expect("out")
        .to_f32()
        .expect("f32");
    assert!(
        x.iter().zip(&y).all(|(x, y)| *y == 2.0 * x),
        "scaled by 2 in f32"
    );
}

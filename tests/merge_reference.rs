//! `git theta merge` against mergekit 0.1.5: the configs and mergekit's
//! outputs in tests/fixtures/mergekit (made by its generate.py) merged again
//! here on every device, tensor by tensor within 1e-5 relative. DARE and
//! DELLA draw at random, so their tests check what the draws must satisfy.

use std::path::{Path, PathBuf};
use std::process::Command;

use theta_engine::checkpoint;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mergekit")
}

/// The devices to merge on: cpu, and gpu when one opens (lavapipe in CI).
fn devices() -> Vec<&'static str> {
    let mut v = vec!["cpu"];
    match theta_engine::compute::Device::gpu() {
        Ok(_) => v.push("gpu"),
        // A build without the `gpu` feature has nothing to require.
        Err(e @ theta_engine::compute::ComputeError::NotCompiled) => {
            eprintln!("GPU variant skipped: {e}")
        }
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

fn merge(config_or_args: &[&str], out: &Path, device: &str) {
    let mut args = vec!["merge"];
    args.extend_from_slice(config_or_args);
    let o = Command::new(env!("CARGO_BIN_EXE_git-theta"))
        .current_dir(fixtures())
        .args(&args)
        .arg(out)
        .args(["--device", device])
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .expect("run git-theta");
    assert!(
        o.status.success(),
        "git-theta {args:?} --device {device}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn tensors(path: &Path) -> Vec<(String, Vec<f32>)> {
    let ckpt = checkpoint::open(path).expect("open");
    ckpt.tensors()
        .iter()
        .map(|t| {
            let v = ckpt.tensor(&t.name).expect("tensor").to_f32().expect("f32");
            (t.name.clone(), v)
        })
        .collect()
}

#[test]
fn deterministic_methods_match_mergekit() {
    let mut names: Vec<PathBuf> = std::fs::read_dir(fixtures().join("configs"))
        .expect("configs")
        .flatten()
        .map(|e| e.path())
        .collect();
    names.sort();
    assert!(names.len() >= 14, "the fixtures are there");
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut failures = Vec::new();
    for device in devices() {
        for cfg in &names {
            let case = cfg.file_stem().unwrap_or_default().to_string_lossy();
            let out = tmp.path().join(format!("{case}-{device}"));
            merge(&[&cfg.to_string_lossy()], &out, device);
            let want = tensors(&fixtures().join(format!("expected/{case}.safetensors")));
            let got = tensors(&out);
            assert_eq!(got.len(), want.len(), "{case}: tensor count");
            let mut worst = (0f32, String::new());
            for (name, w) in &want {
                let (_, g) = got
                    .iter()
                    .find(|(n, _)| n == name)
                    .unwrap_or_else(|| panic!("{case}: no {name}"));
                assert_eq!(g.len(), w.len());
                let scale = w.iter().fold(0f32, |m, x| m.max(x.abs()));
                for (i, (a, b)) in g.iter().zip(w).enumerate() {
                    // Relative to the value, or to 1% of the tensor's largest
                    // for values that cancel to near zero (f32 rounding of
                    // the terms is ~1e-7 of their size, not of the result).
                    let rel = (a - b).abs() / b.abs().max(1e-2 * scale);
                    if rel > worst.0 || rel.is_nan() {
                        worst = (rel, format!("{name}[{i}] = {a}, mergekit {b}"));
                    }
                }
            }
            eprintln!("{case} on {device}: worst relative error {:.2e}", worst.0);
            if worst.0.is_nan() || worst.0 > 1e-5 {
                failures.push(format!(
                    "{case} on {device}: {:.2e} at {}",
                    worst.0, worst.1
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn read(dir: &Path, model: &str, name: &str) -> Vec<f32> {
    let c = checkpoint::open(dir.join(model)).expect("open");
    c.tensor(name).expect("tensor").to_f32().expect("f32")
}

const W: &str = "model.layers.1.mlp.up_proj.weight";

#[test]
fn dare_keeps_its_share_rescales_to_l1_and_is_deterministic() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = read(&fixtures(), "models/base", W);
    let a = read(&fixtures(), "models/a", W);
    let delta: Vec<f32> = a.iter().zip(&base).map(|(x, b)| x - b).collect();
    let l1 = |v: &[f32]| v.iter().map(|x| f64::from(x.abs())).sum::<f64>();
    for device in devices() {
        for (rescale, seed) in [("false", "1"), ("true", "2")] {
            let out = tmp.path().join(format!("dare-{rescale}-{device}"));
            let rp = format!("rescale={rescale}");
            let args = [
                "--method",
                "dare_linear",
                "--base",
                "models/base",
                "models/a:1",
                "--density",
                "0.3",
                "--param",
                &rp,
                "--seed",
                seed,
                "-o",
            ];
            merge(&args, &out, device);
            let got = read(&out, "", W);
            let kept: Vec<f32> = got.iter().zip(&base).map(|(x, b)| x - b).collect();
            let nonzero = delta.iter().filter(|d| **d != 0.0).count();
            let survived = kept.iter().filter(|d| **d != 0.0).count();
            let share = survived as f64 / nonzero as f64;
            assert!((share - 0.3).abs() < 0.06, "kept {share} of deltas");
            for (k, d) in kept.iter().zip(&delta) {
                if *k != 0.0 {
                    assert_eq!(k.signum(), d.signum(), "a kept delta keeps its sign");
                }
            }
            if rescale == "true" {
                let ratio = l1(&kept) / l1(&delta);
                assert!((ratio - 1.0).abs() < 1e-4, "L1 ratio {ratio}");
            } else {
                for (k, d) in kept.iter().zip(&delta) {
                    assert!(*k == 0.0 || (k - d).abs() <= 1e-6 * d.abs().max(1.0));
                }
            }
            // Same seed and device: the same bytes.
            let again = tmp.path().join(format!("dare-{rescale}-{device}-again"));
            merge(&args, &again, device);
            let bytes = |d: &Path| std::fs::read(d.join("model.safetensors")).expect("read");
            assert_eq!(bytes(&out), bytes(&again), "deterministic");
        }
    }
}

#[test]
fn dare_ties_follows_the_sign_consensus() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = read(&fixtures(), "models/base", W);
    let ds: Vec<Vec<f32>> = ["a", "b", "c"]
        .iter()
        .map(|m| {
            read(&fixtures(), &format!("models/{m}"), W)
                .iter()
                .zip(&base)
                .map(|(x, b)| x - b)
                .collect()
        })
        .collect();
    let out = tmp.path().join("dt");
    merge(
        &[
            "--method",
            "dare_ties",
            "--base",
            "models/base",
            "models/a:0.5",
            "models/b:0.3",
            "models/c:0.4",
            "--density",
            "0.5",
            "-o",
        ],
        &out,
        "cpu",
    );
    let got = read(&out, "", W);
    for (j, (g, b)) in got.iter().zip(&base).enumerate() {
        let m = g - b;
        let signs: Vec<f32> = ds
            .iter()
            .map(|d| d[j].signum())
            .filter(|s| *s != 0.0)
            .collect();
        if m != 0.0 {
            assert!(
                signs.contains(&m.signum()),
                "element {j}: a sign no model has"
            );
        }
        if !signs.is_empty() && signs.iter().all(|s| *s == signs[0]) && m != 0.0 {
            assert_eq!(m.signum(), signs[0], "element {j}: unanimous sign");
        }
    }
}

#[test]
fn della_keeps_larger_deltas_more_often() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = read(&fixtures(), "models/base", W);
    let a = read(&fixtures(), "models/a", W);
    let out = tmp.path().join("della");
    merge(
        &[
            "--method",
            "della_linear",
            "--base",
            "models/base",
            "models/a:1",
            "--density",
            "0.5",
            "--param",
            "epsilon=0.3",
            "--param",
            "rescale=false",
            "-o",
        ],
        &out,
        "cpu",
    );
    let got = read(&out, "", W);
    // Rows of 8 (the up projection is 16 × 8): rank within each row.
    let cols = 8;
    let (mut low, mut high) = ((0, 0), (0, 0));
    for r in 0..a.len() / cols {
        let row: Vec<usize> = (r * cols..(r + 1) * cols).collect();
        let mut order = row.clone();
        order.sort_by(|&x, &y| (a[x] - base[x]).abs().total_cmp(&(a[y] - base[y]).abs()));
        for (rank, &i) in order.iter().enumerate() {
            let kept = got[i] != base[i];
            let slot = if rank < cols / 2 { &mut low } else { &mut high };
            slot.0 += usize::from(kept);
            slot.1 += 1;
        }
    }
    let (pl, ph) = (low.0 as f64 / low.1 as f64, high.0 as f64 / high.1 as f64);
    assert!(ph > pl, "larger deltas kept more often ({ph} vs {pl})");
    assert!(
        ((pl + ph) / 2.0 - 0.5).abs() < 0.15,
        "about half kept ({pl}, {ph})"
    );
    let e = Command::new(env!("CARGO_BIN_EXE_git-theta"))
        .current_dir(fixtures())
        .args([
            "merge",
            "--method",
            "della",
            "--base",
            "models/base",
            "models/a:1",
            "--density",
            "0.9",
            "--param",
            "epsilon=0.2",
            "-o",
        ])
        .arg(tmp.path().join("bad"))
        .args(["--device", "cpu"])
        .output()
        .expect("run");
    assert!(!e.status.success());
    let msg = String::from_utf8_lossy(&e.stderr);
    assert!(msg.contains("epsilon") && msg.contains("tensor"), "{msg}");
}

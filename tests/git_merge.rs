//! End-to-end: `git merge`, `rebase`, `cherry-pick` and `git theta
//! mergetool` of checkpoints through git-theta's merge driver, with real git
//! and git-lfs in a sandbox. Expected values are computed here, from the
//! formulas, not by the engine.

mod common;

use std::path::Path;

use common::Sandbox;
use theta_engine::safetensors::{HeaderPlan, SafetensorsFile};
use theta_engine::{DType, TensorInfo};

/// A checkpoint: F32 tensors in file order.
type Model = Vec<(String, Vec<u64>, Vec<f32>)>;

fn values(seed: u32, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let x = (i as u32).wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(40_503);
            ((x % 20_011) as f32 / 20_011.0 - 0.5) * 0.2
        })
        .collect()
}

/// The base model: an embedding of 64 KiB (chunked at 16 KiB), attention
/// and MLP weights, a norm.
fn base_model() -> Model {
    let t = |name: &str, shape: Vec<u64>, seed| {
        let n = shape.iter().product::<u64>() as usize;
        (name.to_owned(), shape, values(seed, n))
    };
    vec![
        t("embed.weight", vec![1024, 16], 1),
        t("layers.0.attn.w", vec![32, 32], 2),
        t("layers.0.mlp.w", vec![32, 64], 3),
        t("norm.weight", vec![16], 4),
    ]
}

fn write_model(path: &Path, model: &Model) {
    let infos: Vec<TensorInfo> = model
        .iter()
        .map(|(n, s, _)| TensorInfo::new(n.clone(), DType::F32, s.clone()))
        .collect();
    let plan = HeaderPlan::new(&infos, &vec![("format".into(), "pt".into())]).expect("plan");
    let mut out = (plan.header_bytes().len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(plan.header_bytes());
    for (_, _, v) in model {
        for x in v {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    std::fs::write(path, out).expect("write model");
}

fn read_model(path: &Path) -> Model {
    let f = SafetensorsFile::open(path).expect("open merged checkpoint");
    f.tensors()
        .iter()
        .map(|t| {
            let v = f.tensor(&t.name).expect("tensor").to_f32().expect("f32");
            (t.name.clone(), t.shape.clone(), v)
        })
        .collect()
}

fn get<'a>(m: &'a Model, name: &str) -> &'a [f32] {
    &m.iter()
        .find(|(n, ..)| n == name)
        .unwrap_or_else(|| panic!("no tensor {name}"))
        .2
}

fn set(m: &mut Model, name: &str, f: impl Fn(usize, f32) -> f32) {
    let t = m.iter_mut().find(|(n, ..)| n == name).expect("tensor");
    for (i, v) in t.2.iter_mut().enumerate() {
        *v = f(i, *v);
    }
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-6 + 1e-6 * w.abs(),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

const FILE: &str = "model.safetensors";

/// A repository with the base model committed on `main`, then branches
/// `ours` and `theirs` made from it by `ours_fn` / `theirs_fn` (and the
/// files in `extra` committed with the base).
struct Setup {
    s: Sandbox,
    repo: std::path::PathBuf,
    base: Model,
    ours: Model,
    theirs: Model,
}

fn setup(
    extra: &[(&str, &str)],
    ours_fn: impl Fn(&mut Model),
    theirs_fn: impl Fn(&mut Model),
) -> Setup {
    let s = Sandbox::new();
    let repo = s.repo("repo");
    let base = base_model();
    write_model(&repo.join(FILE), &base);
    for (name, text) in extra {
        std::fs::write(repo.join(name), text).expect("extra file");
    }
    s.git(&repo, &["add", "."]);
    s.git(&repo, &["commit", "-qm", "base"]);
    let mut ours = base.clone();
    ours_fn(&mut ours);
    let mut theirs = base.clone();
    theirs_fn(&mut theirs);
    s.git(&repo, &["switch", "-qc", "theirs"]);
    write_model(&repo.join(FILE), &theirs);
    s.git(&repo, &["commit", "-qam", "theirs"]);
    s.git(&repo, &["switch", "-qc", "ours", "main"]);
    write_model(&repo.join(FILE), &ours);
    s.git(&repo, &["commit", "-qam", "ours"]);
    Setup {
        s,
        repo,
        base,
        ours,
        theirs,
    }
}

impl Setup {
    fn merged(&self) -> Model {
        read_model(&self.repo.join(FILE))
    }

    fn status_is_clean(&self) {
        assert_eq!(self.s.git(&self.repo, &["status", "--porcelain"]), "");
    }

    fn merge(&self, env: &[(&str, &str)]) -> std::process::Output {
        let mut c = self
            .s
            .cmd(&self.repo, "git", &["merge", "--no-edit", "theirs"]);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().expect("spawn git merge")
    }
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn disjoint_changes_merge_cleanly_with_both_present() {
    let t = setup(
        &[],
        |m| {
            set(m, "layers.0.attn.w", |_, v| v + 0.5);
            m.retain(|(n, ..)| n != "norm.weight");
        },
        |m| {
            set(m, "layers.0.mlp.w", |i, v| v * 2.0 + i as f32 * 1e-3);
            set(m, "embed.weight", |i, v| if i < 16 { v - 1.0 } else { v });
            m.push(("head.bias".into(), vec![8], values(9, 8)));
        },
    );
    let out = t.merge(&[]);
    assert!(out.status.success(), "{}", text(&out));
    let got = t.merged();
    let names: Vec<&str> = got.iter().map(|(n, ..)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "embed.weight",
            "layers.0.attn.w",
            "layers.0.mlp.w",
            "head.bias"
        ]
    );
    assert_eq!(
        get(&got, "layers.0.attn.w"),
        get(&t.ours, "layers.0.attn.w")
    );
    assert_eq!(
        get(&got, "layers.0.mlp.w"),
        get(&t.theirs, "layers.0.mlp.w")
    );
    assert_eq!(get(&got, "embed.weight"), get(&t.theirs, "embed.weight"));
    assert_eq!(get(&got, "head.bias"), get(&t.theirs, "head.bias"));
    // A new layout gets a new header that keeps ours' metadata.
    let file = SafetensorsFile::open(t.repo.join(FILE)).expect("open");
    assert_eq!(
        file.metadata(),
        &vec![("format".to_owned(), "pt".to_owned())]
    );
    t.status_is_clean();
    let parents = t.s.git(&t.repo, &["log", "-1", "--format=%P"]);
    assert_eq!(parents.split_whitespace().count(), 2, "a merge commit");
    // The stored manifest is what cleaning the checked-out file gives.
    std::fs::remove_file(t.repo.join(FILE)).expect("rm");
    t.s.git(&t.repo, &["checkout", "--", FILE]);
    assert_eq!(read_model(&t.repo.join(FILE)), got);
    t.status_is_clean();
}

/// ours: mlp and attn changed; theirs: the same tensors changed differently.
fn both_change(t: &mut Model, seed: u32) {
    let d = values(seed, 32 * 64);
    set(t, "layers.0.mlp.w", |i, v| v + d[i]);
    set(t, "layers.0.attn.w", |i, v| v - d[i] * 0.5);
}

fn ties_expected(
    base: &[f32],
    xs: [&[f32]; 2],
    w: [f32; 2],
    density: f32,
    lambda: f32,
) -> Vec<f32> {
    let n = base.len();
    let k = (density as f64 * n as f64) as usize;
    let trimmed: Vec<Vec<f32>> = xs
        .iter()
        .map(|x| {
            let d: Vec<f32> = x.iter().zip(base).map(|(x, b)| x - b).collect();
            let mut mags: Vec<f32> = d.iter().map(|v| v.abs()).collect();
            mags.sort_by(|a, b| b.total_cmp(a));
            let thr = if k == 0 { f32::INFINITY } else { mags[k - 1] };
            d.iter()
                .map(|&v| if v.abs() >= thr { v } else { 0.0 })
                .collect()
        })
        .collect();
    (0..n)
        .map(|i| {
            let sum: f32 = (0..2).map(|m| w[m] * trimmed[m][i]).sum();
            let (mut num, mut den) = (0f32, 0f32);
            for m in 0..2 {
                let s = trimmed[m][i];
                if (s > 0.0 && sum > 0.0) || (s < 0.0 && sum < 0.0) {
                    num += w[m] * s;
                    den += w[m];
                }
            }
            if den.abs() < 1e-8 {
                den = 1.0;
            }
            base[i] + lambda * num / den
        })
        .collect()
}

/// Spherical interpolation from `a` (t = 0) to `b` (t = 1).
fn slerp_expected(a: &[f32], b: &[f32], t: f64) -> Vec<f32> {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let theta = (dot / (na * nb)).clamp(-1.0, 1.0).acos();
    let c0 = (((1.0 - t) * theta).sin() / theta.sin()) as f32;
    let c1 = ((t * theta).sin() / theta.sin()) as f32;
    a.iter().zip(b).map(|(x, y)| c0 * x + c1 * y).collect()
}

#[test]
fn both_sides_changed_merge_by_average_task_arithmetic_slerp_and_ties() {
    let toml =
        "[merge]\nstrategy = \"ties\"\ndensity = 0.5\nweight = { ours = 1.0, theirs = 0.5 }\n";
    let t = setup(
        &[(".theta.toml", toml)],
        |m| both_change(m, 11),
        |m| both_change(m, 12),
    );
    let tensor = |m: &Model| get(m, "layers.0.mlp.w").to_vec();
    let (b, o, th) = (tensor(&t.base), tensor(&t.ours), tensor(&t.theirs));

    // The default when nothing overrides .theta.toml's ties: the file's.
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<f32>);
    let cases: Vec<Case<'_>> = vec![
        (
            "average",
            vec![("THETA_MERGE_STRATEGY", "average")],
            o.iter().zip(&th).map(|(x, y)| 0.5 * x + 0.5 * y).collect(),
        ),
        (
            "task_arithmetic",
            vec![
                ("THETA_MERGE_STRATEGY", "task_arithmetic"),
                ("THETA_MERGE_PARAMS", "lambda=0.8,weight=1:0.5"),
            ],
            b.iter()
                .zip(o.iter().zip(&th))
                .map(|(b, (x, y))| b + 0.8 * ((x - b) + 0.5 * (y - b)))
                .collect(),
        ),
        (
            "slerp",
            vec![
                ("THETA_MERGE_STRATEGY", "slerp"),
                ("THETA_MERGE_PARAMS", "t=0.3"),
            ],
            slerp_expected(&o, &th, 0.3),
        ),
        (
            "ties (.theta.toml)",
            vec![],
            ties_expected(&b, [&o, &th], [1.0, 0.5], 0.5, 1.0),
        ),
    ];
    for (what, env, want) in cases {
        t.s.git(&t.repo, &["switch", "-qC", "try", "ours"]);
        let out = t.merge(&env);
        assert!(out.status.success(), "{what}: {}", text(&out));
        assert!(text(&out).contains("merged by"), "{what}: {}", text(&out));
        let got = t.merged();
        assert_close(get(&got, "layers.0.mlp.w"), &want, what);
        assert_eq!(get(&got, "norm.weight"), get(&t.base, "norm.weight"));
        t.status_is_clean();
    }
}

#[test]
fn pattern_rules_pick_strategies_by_tensor_name() {
    let toml = r#"
[merge]
strategy = "average"

[[merge.rules]]
pattern = "embed*"
strategy = "theirs"

[[merge.rules]]
pattern = ["*.attn.*"]
strategy = "ours"
"#;
    let change = |seed| {
        move |m: &mut Model| {
            both_change(m, seed);
            set(m, "embed.weight", |i, v| v + seed as f32 + i as f32 * 1e-4);
        }
    };
    let t = setup(&[(".theta.toml", toml)], change(21), change(22));
    let out = t.merge(&[]);
    assert!(out.status.success(), "{}", text(&out));
    let got = t.merged();
    assert_eq!(get(&got, "embed.weight"), get(&t.theirs, "embed.weight"));
    assert_eq!(
        get(&got, "layers.0.attn.w"),
        get(&t.ours, "layers.0.attn.w")
    );
    let avg: Vec<f32> = get(&t.ours, "layers.0.mlp.w")
        .iter()
        .zip(get(&t.theirs, "layers.0.mlp.w"))
        .map(|(x, y)| 0.5 * x + 0.5 * y)
        .collect();
    assert_close(get(&got, "layers.0.mlp.w"), &avg, "mlp by the default");
}

#[test]
fn a_shape_conflict_is_reported_resolved_by_mergetool_and_aborted_cleanly() {
    let grow = |rows: u64, seed: u32| {
        move |m: &mut Model| {
            let t = m
                .iter_mut()
                .find(|(n, ..)| n == "embed.weight")
                .expect("embed");
            t.1 = vec![rows, 16];
            t.2 = values(seed, rows as usize * 16);
            set(m, "layers.0.mlp.w", |i, v| {
                v + seed as f32 * 1e-3 * i as f32
            });
        }
    };
    let t = setup(&[], grow(1030, 31), grow(1040, 32));
    let ours_bytes = std::fs::read(t.repo.join(FILE)).expect("read");
    let out = t.merge(&[]);
    assert!(!out.status.success(), "a conflict");
    let msg = text(&out);
    assert!(
        msg.contains(
            "embed.weight: changed differently: ours F32 [1030, 16], theirs F32 [1040, 16]"
        ),
        "{msg}"
    );
    assert!(msg.contains("CONFLICT"), "{msg}");
    // Ours is left in place; the index holds the three versions.
    assert_eq!(std::fs::read(t.repo.join(FILE)).expect("read"), ours_bytes);
    let unmerged = t.s.git(&t.repo, &["ls-files", "-u"]);
    assert_eq!(unmerged.lines().count(), 3, "{unmerged}");

    t.s.git(&t.repo, &["merge", "--abort"]);
    t.status_is_clean();
    assert_eq!(std::fs::read(t.repo.join(FILE)).expect("read"), ours_bytes);

    // Again, then write the versions out.
    assert!(!t.merge(&[]).status.success());
    let dir = t.s.tmp.path().join("versions");
    let listed = t.s.git(
        &t.repo,
        &[
            "theta",
            "mergetool",
            "--write-versions",
            dir.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(listed.lines().count(), 3, "{listed}");
    assert_eq!(read_model(&dir.join("base").join(FILE)), t.base);
    assert_eq!(read_model(&dir.join("ours").join(FILE)), t.ours);
    assert_eq!(read_model(&dir.join("theirs").join(FILE)), t.theirs);

    // A strategy that cannot settle shapes leaves the conflict; theirs does.
    let out = t.s.run(
        &t.repo,
        "git",
        &["theta", "mergetool", "--strategy", "average"],
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("embed.weight: changed differently"),
        "{}",
        text(&out)
    );
    let out =
        t.s.git(&t.repo, &["theta", "mergetool", "--strategy", "theirs"]);
    assert!(out.contains("resolved model.safetensors"), "{out}");
    assert_eq!(t.s.git(&t.repo, &["ls-files", "-u"]), "");
    assert_eq!(read_model(&t.repo.join(FILE)), t.theirs);
    t.s.git(&t.repo, &["commit", "-q", "--no-edit"]);
    t.status_is_clean();
}

#[test]
fn delete_against_modify_and_manual_rules_conflict() {
    let toml = "[[merge.rules]]\npattern = \"*.mlp.*\"\nstrategy = \"manual\"\n";
    let t = setup(
        &[(".theta.toml", toml)],
        |m| {
            m.retain(|(n, ..)| n != "norm.weight");
            both_change(m, 41);
        },
        |m| {
            set(m, "norm.weight", |_, v| v + 1.0);
            both_change(m, 42);
        },
    );
    let out = t.merge(&[]);
    assert!(!out.status.success());
    let msg = text(&out);
    assert!(
        msg.contains("norm.weight: deleted in ours, modified in theirs"),
        "{msg}"
    );
    assert!(
        msg.contains(
            "layers.0.mlp.w: changed on both sides and `manual (rule *.mlp.*)` leaves it to you"
        ),
        "{msg}"
    );
    assert!(!msg.contains("layers.0.attn.w:"), "attn is averaged: {msg}");
    // Task arithmetic cannot settle a deletion.
    let out = t.s.run(
        &t.repo,
        "git",
        &["theta", "mergetool", "--strategy", "task_arithmetic", FILE],
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("norm.weight: deleted in ours"),
        "{}",
        text(&out)
    );
    // Interactively: a typo is asked again; task arithmetic for the MLP,
    // theirs (the modified norm) for the deletion.
    let mut child =
        t.s.cmd(&t.repo, "git", &["theta", "mergetool", "--interactive"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn mergetool");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(b"task-arithmetic lamda=1\ntask_arithmetic lambda=1\ntheirs\n")
            .expect("answers");
    }
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("unknown parameter `lamda`"),
        "{}",
        text(&out)
    );
    let got = t.merged();
    assert_eq!(get(&got, "norm.weight"), get(&t.theirs, "norm.weight"));
    let ta: Vec<f32> = get(&t.base, "layers.0.mlp.w")
        .iter()
        .zip(
            get(&t.ours, "layers.0.mlp.w")
                .iter()
                .zip(get(&t.theirs, "layers.0.mlp.w")),
        )
        .map(|(b, (x, y))| b + 1.0 * ((x - b) + (y - b)))
        .collect();
    assert_close(
        get(&got, "layers.0.mlp.w"),
        &ta,
        "task arithmetic at the prompt",
    );
    t.s.git(&t.repo, &["commit", "-q", "--no-edit"]);
    t.status_is_clean();
}

#[test]
fn rebase_and_cherry_pick_use_the_driver() {
    let t = setup(&[], |m| both_change(m, 51), |m| both_change(m, 52));
    let avg: Vec<f32> = get(&t.ours, "layers.0.mlp.w")
        .iter()
        .zip(get(&t.theirs, "layers.0.mlp.w"))
        .map(|(x, y)| 0.5 * x + 0.5 * y)
        .collect();
    // Rebase theirs onto ours: the replayed commit merges with ours.
    t.s.git(&t.repo, &["switch", "-qc", "rebased", "theirs"]);
    let out = t.s.run(&t.repo, "git", &["rebase", "ours"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        t.s.git(&t.repo, &["rev-parse", "HEAD~1"]),
        t.s.git(&t.repo, &["rev-parse", "ours"])
    );
    assert_close(get(&t.merged(), "layers.0.mlp.w"), &avg, "rebase");
    t.status_is_clean();

    t.s.git(&t.repo, &["switch", "-qc", "picked", "ours"]);
    let out = t.s.run(&t.repo, "git", &["cherry-pick", "theirs"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_close(get(&t.merged(), "layers.0.mlp.w"), &avg, "cherry-pick");
    t.status_is_clean();
}

#[test]
fn a_merge_commit_s_new_objects_are_pushed_and_cloned() {
    let t = setup(&[], |m| both_change(m, 61), |m| both_change(m, 62));
    let remote = t.s.tmp.path().join("remote.git");
    std::fs::create_dir_all(&remote).expect("mkdir");
    t.s.git(&remote, &["init", "-q", "--bare"]);
    let url = format!("file://{}", remote.display());
    let out = t.merge(&[]);
    assert!(out.status.success(), "{}", text(&out));
    let merged = common::sha256_file(&t.repo.join(FILE));
    t.s.git(&t.repo, &["remote", "add", "origin", &url]);
    t.s.git(&t.repo, &["push", "-q", "origin", "ours:main"]);

    let clone = t.s.tmp.path().join("clone");
    let out =
        t.s.run(t.s.tmp.path(), "git", &["clone", "-q", &url, "clone"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(common::sha256_file(&clone.join(FILE)), merged);
    assert_eq!(t.s.git(&clone, &["status", "--porcelain"]), "");
}

#[test]
fn install_configures_the_driver_and_uninstall_removes_it() {
    let s = Sandbox::new();
    let get = |key: &str| s.run(&s.home, "git", &["config", "--global", "--get", key]);
    let driver = get("merge.theta.driver");
    assert_eq!(
        String::from_utf8_lossy(&driver.stdout).trim(),
        "git-theta merge-driver %O %A %B %P"
    );
    let repo = s.repo("repo");
    let attrs = std::fs::read_to_string(repo.join(".gitattributes")).expect("attrs");
    assert!(attrs.contains("merge=theta"), "{attrs}");
    s.git(&s.home, &["theta", "uninstall"]);
    assert!(!get("merge.theta.driver").status.success());
    assert!(!get("merge.theta.name").status.success());
}

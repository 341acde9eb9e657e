//! A sandbox for running real git and git-lfs with git-theta: HOME in a
//! temporary folder, no system config, the built binary first on PATH.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

/// A temporary HOME with a repository folder in it.
pub struct Sandbox {
    /// Keeps the folder alive.
    pub tmp: tempfile::TempDir,
    /// The sandbox HOME.
    pub home: PathBuf,
    /// PATH with git-theta's folder first.
    path: std::ffi::OsString,
}

impl Sandbox {
    /// A fresh sandbox with `git theta install` done globally (in its HOME).
    pub fn new() -> Sandbox {
        let tmp = tempfile::tempdir().expect("tempdir");
        let home = tmp.path().join("home");
        std::fs::create_dir_all(&home).expect("home");
        let bin = Path::new(env!("CARGO_BIN_EXE_git-theta"));
        let mut dirs = vec![bin.parent().expect("bin dir").to_path_buf()];
        dirs.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        let path = std::env::join_paths(dirs).expect("PATH");
        let s = Sandbox { tmp, home, path };
        s.run_ok(
            &s.home,
            "git",
            &["config", "--global", "user.name", "Theta Tester"],
        );
        s.run_ok(
            &s.home,
            "git",
            &["config", "--global", "user.email", "t@example.com"],
        );
        s.run_ok(
            &s.home,
            "git",
            &["config", "--global", "init.defaultBranch", "main"],
        );
        s.run_ok(&s.home, "git", &["theta", "install"]);
        s
    }

    /// A command with the sandbox environment, run in `dir`.
    pub fn cmd(&self, dir: &Path, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new(program);
        c.args(args)
            .current_dir(dir)
            .env("HOME", &self.home)
            .env("XDG_CONFIG_HOME", self.home.join(".config"))
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env_remove("GIT_CONFIG_GLOBAL")
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("PATH", &self.path);
        c
    }

    /// Runs and returns the output, whatever the status.
    pub fn run(&self, dir: &Path, program: &str, args: &[&str]) -> Output {
        self.cmd(dir, program, args).output().expect("spawn")
    }

    /// Runs, requiring success; returns stdout.
    pub fn run_ok(&self, dir: &Path, program: &str, args: &[&str]) -> String {
        let out = self.run(dir, program, args);
        assert!(
            out.status.success(),
            "`{program} {}` failed in {}:\n{}\n{}",
            args.join(" "),
            dir.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A new repository `name` tracking `*.safetensors`.
    pub fn repo(&self, name: &str) -> PathBuf {
        let dir = self.tmp.path().join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        self.run_ok(&dir, "git", &["init", "-q"]);
        self.run_ok(&dir, "git", &["theta", "track", "*.safetensors"]);
        // Small chunks so that tests exercise chunking on small models.
        self.run_ok(&dir, "git", &["config", "theta.chunkSize", "256KiB"]);
        dir
    }

    /// `git args...` in `dir`, requiring success.
    pub fn git(&self, dir: &Path, args: &[&str]) -> String {
        self.run_ok(dir, "git", args)
    }
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> String {
    let bytes = std::fs::read(path).expect("read");
    let d = Sha256::digest(&bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every object file under `repo`'s LFS store.
pub fn objects(repo: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let root = repo.join(".git/lfs/objects");
    let mut stack = vec![root];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Changes the first bytes of tensor `name` in the safetensors file `path`.
pub fn poke_tensor(path: &Path, name: &str) {
    let mut bytes = std::fs::read(path).expect("read");
    let file = theta_engine::safetensors::SafetensorsFile::open(path).expect("open");
    let entry = file
        .entries()
        .iter()
        .find(|e| e.info.name == name)
        .expect("tensor")
        .clone();
    let start = 8 + file.header_bytes().len() + entry.begin as usize;
    drop(file);
    for b in &mut bytes[start..start + 4] {
        *b ^= 0x55;
    }
    std::fs::write(path, bytes).expect("write");
}

/// The byte range of tensor `name`'s data in the safetensors file `path`.
pub fn tensor_range(path: &Path, name: &str) -> std::ops::Range<usize> {
    let file = theta_engine::safetensors::SafetensorsFile::open(path).expect("open");
    let e = file
        .entries()
        .iter()
        .find(|e| e.info.name == name)
        .expect("tensor");
    let start = 8 + file.header_bytes().len();
    start + e.begin as usize..start + e.end as usize
}

/// Writes an F32 safetensors file of `tensors` (name, shape, values).
pub fn write_f32(path: &Path, tensors: &[(&str, Vec<u64>, Vec<f32>)]) {
    use theta_engine::{DType, TensorInfo, safetensors::HeaderPlan};
    let infos: Vec<TensorInfo> = tensors
        .iter()
        .map(|(n, s, _)| TensorInfo::new(*n, DType::F32, s.clone()))
        .collect();
    let plan = HeaderPlan::new(&infos, &vec![]).expect("plan");
    let mut out = (plan.header_bytes().len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(plan.header_bytes());
    // The plan orders tensors by name; write them in its order.
    for info in plan.tensors() {
        let (_, _, v) = tensors.iter().find(|t| t.0 == info.name).expect("tensor");
        for x in v {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    std::fs::write(path, out).expect("write");
}

/// Tensor `name` of the safetensors file `path`, as f32.
pub fn read_f32(path: &Path, name: &str) -> Vec<f32> {
    let file = theta_engine::safetensors::SafetensorsFile::open(path).expect("open");
    file.tensor(name).expect("tensor").to_f32().expect("f32")
}

/// Diff statistics computed by the test: rel.change, cosine, max|Δ|, changed fraction, ‖Δ‖.
pub fn diff_stats(a: &[f32], b: &[f32]) -> [f64; 5] {
    let (mut aa, mut bb, mut ab, mut dd, mut mx, mut ch) = (0f64, 0f64, 0f64, 0f64, 0f64, 0usize);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        aa += x * x;
        bb += y * y;
        ab += x * y;
        dd += (y - x) * (y - x);
        mx = mx.max((y - x).abs());
        ch += usize::from(x != y);
    }
    [
        dd.sqrt() / aa.sqrt(),
        ab / (aa.sqrt() * bb.sqrt()),
        mx,
        ch as f64 / a.len() as f64,
        dd.sqrt(),
    ]
}

/// The manifest line of tensor `name` in the blob `spec` (`rev:path`).
pub fn manifest_entry(s: &Sandbox, repo: &Path, spec: &str, name: &str) -> serde_json::Value {
    let text = s.git(repo, &["cat-file", "blob", spec]);
    let line = text
        .lines()
        .find(|l| l.contains(&format!("\"name\":\"{name}\"")))
        .unwrap_or_else(|| panic!("no manifest line for {name} in {spec}:\n{text}"));
    serde_json::from_str(line).expect("json")
}

//! `git theta diff`, and the two drivers `git theta install` configures:
//! `diff-driver` (git's external diff command, `diff.theta.command`, run by
//! `git diff` and by `git log -p --ext-diff` / `git show --ext-diff`) and
//! `textconv` (`diff.theta.textconv`, what plain `git log -p` and `git show`
//! use). Spec of the output: `docs/diff.md`; of `--json`: `docs/diff-json.md`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use theta_engine::compute::Device;

use crate::commands::doctor::DeviceArgs;
use crate::commands::filter::{clean_options, options_for};
use crate::commands::track::theta_filtered;
use crate::vcs::diff::{self, Order, Version};
use crate::vcs::diff_render::{self, Palette};
use crate::vcs::manifest::{FileFormat, Manifest, looks_like_manifest};
use crate::vcs::store::{Store, sha256_hex};
use crate::vcs::transport::LfsFetcher;
use crate::vcs::{diff_html, git};

/// When to color.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorWhen {
    /// On a terminal, or into git's pager when git's colors are on.
    #[default]
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// Arguments of `git theta diff`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// No revision: working tree against the index (as `git diff`). One:
    /// working tree against it (`--cached`: the index against it). Two, or
    /// `A..B`: A against B.
    #[arg(value_name = "REV", num_args = 0..=2)]
    pub revs: Vec<String>,
    /// Compare the index with REV (default HEAD) instead of the working tree.
    #[arg(long, visible_alias = "staged")]
    pub cached: bool,
    /// Only these paths (after `--`), as git pathspecs.
    #[arg(last = true, value_name = "PATH")]
    pub paths: Vec<String>,
    /// Print JSON (schema: docs/diff-json.md) instead of text.
    #[arg(long, conflicts_with = "stat")]
    pub json: bool,
    /// One line per checkpoint.
    #[arg(long)]
    pub stat: bool,
    /// Also write a self-contained HTML report with a per-layer chart.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Order of the tensors: by name, or largest change first.
    #[arg(long, value_enum, default_value_t = Order::Name)]
    pub sort: Order,
    /// Color the text output.
    #[arg(long, value_enum, default_value_t = ColorWhen::Auto)]
    pub color: ColorWhen,
    /// The compute device.
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// The object store: objects are hashed on a first read and trusted while
/// their file is untouched; `THETA_DIFF_VERIFY=0` skips even the first
/// hash (docs/diff.md, "Verification").
fn store() -> anyhow::Result<Store> {
    let store = Store::new(git::lfs_dir()?);
    Ok(match std::env::var("THETA_DIFF_VERIFY").as_deref() {
        Ok("0" | "false" | "no") => store.without_hash_check(),
        _ => store,
    })
}

/// One side of a comparison, as git names it.
#[derive(Clone, Debug)]
enum Side {
    /// `REV:path`.
    Rev(String),
    /// `:path` (the index).
    Index,
    /// The working tree.
    Worktree,
}

impl Side {
    fn label(&self) -> String {
        match self {
            Side::Rev(r) => r.clone(),
            Side::Index => "index".into(),
            Side::Worktree => "working tree".into(),
        }
    }
}

/// `git cat-file blob SPEC` as a version: absent, a stored manifest, or a
/// plain blob (compared as a whole).
fn blob_version<'s>(spec: &str, store: &'s Store) -> anyhow::Result<Option<Version<'s>>> {
    let out = git::output(&["cat-file", "blob", spec], None)?;
    if !out.success {
        return Ok(None);
    }
    Ok(Some(if looks_like_manifest(&out.stdout) {
        let m = Manifest::parse(&out.stdout).with_context(|| format!("the manifest of {spec}"))?;
        Version::stored(m, store)
    } else {
        Version::not_checkpoint(&sha256_hex(&out.stdout))
    }))
}

/// A file on disk as a version: a manifest (not smudged) is read as stored;
/// a checkpoint is hashed as `git add` would hash `path`, storing nothing.
fn file_version<'s>(
    file: &Path,
    path: &str,
    store: &'s Store,
) -> anyhow::Result<Option<Version<'s>>> {
    let mut head = [0u8; 32];
    let n = match std::fs::File::open(file) {
        Ok(mut f) => std::io::Read::read(&mut f, &mut head)
            .with_context(|| format!("reading {}", file.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {}", file.display())),
    };
    if looks_like_manifest(&head[..n]) {
        let bytes = std::fs::read(file)?;
        let m = Manifest::parse(&bytes).with_context(|| format!("{}", file.display()))?;
        return Ok(Some(Version::stored(m, store)));
    }
    let options = options_for(&clean_options()?, path);
    Ok(Some(Version::file(file, &options)?))
}

fn version<'s>(side: &Side, path: &str, store: &'s Store) -> anyhow::Result<Option<Version<'s>>> {
    match side {
        Side::Rev(r) => blob_version(&format!("{r}:{path}"), store),
        Side::Index => blob_version(&format!(":{path}"), store),
        Side::Worktree => file_version(Path::new(path), path, store),
    }
}

/// The paths git sees as changed between the sides (plumbing only: no
/// filter or driver runs), limited to the pathspecs.
fn changed_paths(old: &Side, new: &Side, paths: &[String]) -> anyhow::Result<Vec<String>> {
    let mut args: Vec<String> = match (old, new) {
        (Side::Index, Side::Worktree) => vec!["diff-files".into()],
        (Side::Rev(r), Side::Worktree) => vec!["diff-index".into(), r.clone()],
        (Side::Rev(r), Side::Index) => vec!["diff-index".into(), "--cached".into(), r.clone()],
        (Side::Rev(a), Side::Rev(b)) => vec!["diff-tree".into(), "-r".into(), a.clone(), b.clone()],
        _ => anyhow::bail!("unsupported comparison"),
    };
    args.extend(["--name-only".into(), "-z".into(), "--".into()]);
    args.extend(paths.iter().cloned());
    theta_filtered(git::run(&args)?)
}

/// A revision that names the empty tree when HEAD does not exist yet.
fn rev_or_empty(rev: &str) -> String {
    let ok = git::output(&["rev-parse", "--verify", "--quiet", rev], None).is_ok_and(|o| o.success);
    if ok || rev != "HEAD" {
        rev.to_owned()
    } else {
        "4b825dc642cb6eb9a060e54bf8d69288fbee4904".to_owned()
    }
}

fn sides(args: &Args) -> anyhow::Result<(Side, Side)> {
    let mut revs = args.revs.clone();
    if let [one] = revs.as_slice()
        && let Some((a, b)) = one.split_once("..")
        && !one.contains("...")
    {
        let or_head = |s: &str| if s.is_empty() { "HEAD" } else { s }.to_owned();
        revs = vec![or_head(a), or_head(b)];
    }
    Ok(match (revs.as_slice(), args.cached) {
        ([], false) => (Side::Index, Side::Worktree),
        ([], true) => (Side::Rev(rev_or_empty("HEAD")), Side::Index),
        ([r], false) => (Side::Rev(r.clone()), Side::Worktree),
        ([r], true) => (Side::Rev(r.clone()), Side::Index),
        ([a, b], false) => (Side::Rev(a.clone()), Side::Rev(b.clone())),
        _ => anyhow::bail!("--cached takes at most one revision"),
    })
}

fn colors(when: ColorWhen) -> bool {
    match when {
        ColorWhen::Always => true,
        ColorWhen::Never => false,
        ColorWhen::Auto => {
            let tty = std::io::stdout().is_terminal()
                || std::env::var_os("GIT_PAGER_IN_USE").is_some_and(|v| v == "true");
            std::env::var_os("NO_COLOR").is_none()
                && git::text(&["config", "--get-colorbool", "color.diff", &tty.to_string()])
                    .is_ok_and(|s| s == "true")
        }
    }
}

/// Runs `git theta diff`.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let (old, new) = sides(args)?;
    let prefix = git::text(&["rev-parse", "--show-prefix"])?;
    let paths: Vec<String> = args.paths.iter().map(|p| format!("{prefix}{p}")).collect();
    let top = git::toplevel()?;
    std::env::set_current_dir(&top)?;
    let store = store()?;
    let device = match args.device.device {
        Some(_) => args.device.device()?,
        None => Device::from_env(None)?.0,
    };
    let mut diffs = Vec::new();
    for path in changed_paths(&old, &new, &paths)? {
        let a = version(&old, &path, &store)?;
        let b = version(&new, &path, &store)?;
        let d = diff::diff(
            &path,
            a.as_ref(),
            b.as_ref(),
            &device,
            args.sort,
            &mut LfsFetcher,
        )
        .with_context(|| path.clone())?;
        if !d.is_empty() {
            diffs.push(d);
        }
    }
    let mut out = std::io::stdout().lock();
    let palette = Palette::new(colors(args.color));
    if args.json {
        let doc = serde_json::json!({
            "schema": "git-theta-diff/1",
            "old": old.label(),
            "new": new.label(),
            "device": device.name(),
            "files": diffs,
        });
        serde_json::to_writer_pretty(&mut out, &doc)?;
        writeln!(out)?;
    } else if args.stat {
        let width = diffs
            .iter()
            .map(|d| d.path.chars().count())
            .max()
            .unwrap_or(0);
        for d in &diffs {
            writeln!(out, "{}", diff_render::stat_line(d, width, &palette))?;
        }
        writeln!(out, " {} checkpoint(s) changed", diffs.len())?;
    } else {
        for d in &diffs {
            write!(out, "{}", diff_render::text(d, &palette))?;
        }
    }
    if let Some(file) = &args.html {
        let page = diff_html::page(&diffs, &old.label(), &new.label());
        let at = if file.is_absolute() {
            file.clone()
        } else {
            top.join(&prefix).join(file)
        };
        theta_engine::io::write_atomic(&at, page.as_bytes())?;
        eprintln!("git-theta: wrote {}", at.display());
    }
    Ok(())
}

/// Arguments git gives an external diff command.
#[derive(Debug, clap::Args)]
pub struct DriverArgs {
    /// `path old-file old-hex old-mode new-file new-hex new-mode`, or only
    /// `path` for an unmerged path.
    #[arg(num_args = 1..=9, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// A side as git hands it to the driver: `file hex mode`.
fn driver_side<'s>(
    path: &str,
    file: &str,
    hex: &str,
    store: &'s Store,
) -> anyhow::Result<Option<Version<'s>>> {
    if hex == "." {
        return Ok(None);
    }
    // The blob id names the clean form (a manifest): read that rather than
    // the file, which git has rebuilt or which is the working-tree copy.
    if hex.bytes().any(|b| b != b'0')
        && let Some(v) = blob_version(hex, store)?
    {
        return Ok(Some(v));
    }
    file_version(Path::new(file), path, store)
}

/// Runs `diff-driver` (git's `diff.theta.command`).
pub fn run_driver(args: &DriverArgs) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let a = &args.args;
    if a.len() < 7 {
        writeln!(
            out,
            "* Unmerged path {}",
            a.first().map_or("", String::as_str)
        )?;
        return Ok(());
    }
    let path = &a[0];
    let store = store()?;
    let old = driver_side(path, &a[1], &a[2], &store)?;
    let new = driver_side(path, &a[4], &a[5], &store)?;
    let device = Device::from_env(None)?.0;
    let order = match git::config_get("theta.diffSort")?.as_deref() {
        Some("change") => Order::Change,
        _ => Order::Name,
    };
    let d = diff::diff(
        path,
        old.as_ref(),
        new.as_ref(),
        &device,
        order,
        &mut LfsFetcher,
    )
    .with_context(|| path.clone())?;
    let palette = Palette::new(colors(ColorWhen::Auto));
    write!(out, "{}", diff_render::text(&d, &palette))?;
    Ok(())
}

/// Arguments of `textconv`.
#[derive(Debug, clap::Args)]
pub struct TextconvArgs {
    /// The file git hands over (a manifest, or a rebuilt checkpoint).
    pub file: PathBuf,
}

/// Runs `textconv` (git's `diff.theta.textconv`): one line per tensor —
/// dtype, shape, a short id of its contents and its statistics — so that
/// git's line diff shows which tensors changed and how their statistics
/// moved. Contents ids follow the objects, so a tensor stored with another
/// chunking reads as changed.
pub fn run_textconv(args: &TextconvArgs) -> anyhow::Result<()> {
    let store = store()?;
    let name = args.file.display().to_string();
    let v = file_version(&args.file, &name, &store)?
        .with_context(|| format!("{name} does not exist"))?;
    let m = &v.manifest;
    let mut out = std::io::stdout().lock();
    if m.head.format == FileFormat::Opaque {
        let ids: Vec<&str> = m.head.objects.iter().map(|o| o.oid.as_str()).collect();
        writeln!(
            out,
            "not a safetensors checkpoint: {} bytes, contents {}",
            m.head.size,
            &sha256_hex(ids.join(",").as_bytes())[..12]
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "safetensors checkpoint: {} tensors, {} bytes",
        m.tensors.len(),
        m.head.size
    )?;
    for t in &m.tensors {
        let ids: Vec<&str> = t.objects.iter().map(|o| o.oid.as_str()).collect();
        let stats = t.stats.as_ref().map_or_else(String::new, |s| {
            format!(
                " mean={:.6e} std={:.6e} min={:.6e} max={:.6e}",
                s.mean, s.std, s.min, s.max
            )
        });
        writeln!(
            out,
            "{} {} {} contents={}{stats}",
            t.name,
            t.dtype,
            crate::format::shape(&t.shape),
            &sha256_hex(ids.join(",").as_bytes())[..12],
        )?;
    }
    Ok(())
}

//! `git merge` of tracked checkpoints: the merge driver git runs
//! (`merge-driver %O %A %B %P`, plumbing) and `git theta mergetool`, which
//! resolves what the driver left as a conflict. See `docs/git-merge.md`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use theta_engine::compute::Device;

use crate::commands::filter::clean_options;
use crate::vcs::clean::CleanOptions;
use crate::vcs::git;
use crate::vcs::manifest::{Manifest, looks_like_manifest};
use crate::vcs::merge::policy::{self, Policy};
use crate::vcs::merge::{self, Conflict, Context, Merged, prompt, strategy};
use crate::vcs::smudge;
use crate::vcs::store::Store;
use crate::vcs::transport::LfsFetcher;

/// Arguments git passes to the driver (`%O %A %B %P`).
#[derive(Debug, clap::Args)]
pub struct DriverArgs {
    /// The merge base's manifest (empty when there is no common ancestor).
    pub base: PathBuf,
    /// Ours' manifest; the merged manifest is written here.
    pub ours: PathBuf,
    /// Theirs' manifest.
    pub theirs: PathBuf,
    /// The file's path in the repository (for messages).
    pub path: Option<String>,
}

/// Arguments of `mergetool`.
#[derive(Debug, clap::Args)]
#[command(after_help = format!(
    "Strategies: {}.\n\nExamples:\n  git theta mergetool --strategy ties --param density=0.5\n  git theta mergetool --strategy theirs model.safetensors\n  git theta mergetool --write-versions /tmp/versions model.safetensors",
    strategy::names()
))]
pub struct ToolArgs {
    /// Conflicted checkpoints to resolve; default: every conflicted tracked file.
    pub paths: Vec<String>,
    /// Resolve every tensor both sides changed with this strategy, instead
    /// of .theta.toml's default and rules.
    #[arg(long, short = 's')]
    pub strategy: Option<String>,
    /// A parameter of the strategy, NAME=VALUE (VALUE `A:B` gives ours A,
    /// theirs B), e.g. --param density=0.5 --param weight=0.7:0.3.
    #[arg(long = "param", value_name = "NAME=VALUE", requires = "strategy")]
    pub params: Vec<String>,
    /// Write the base, ours and theirs checkpoints under DIR/base, DIR/ours
    /// and DIR/theirs for manual work, and resolve nothing.
    #[arg(long, value_name = "DIR", conflicts_with = "strategy")]
    pub write_versions: Option<PathBuf>,
    /// Ask which strategy settles each remaining conflict (the default on a
    /// terminal without --strategy); an answer ending in `!` applies to all remaining.
    #[arg(long, short = 'i', conflicts_with_all = ["strategy", "write_versions"])]
    pub interactive: bool,
}

/// The policy for this merge: `THETA_MERGE_STRATEGY` if set, else the
/// committed `.theta.toml` (the working tree's, else HEAD's), else the
/// built-in default.
pub fn load_policy() -> anyhow::Result<Policy> {
    if let Some(p) = Policy::from_env()? {
        return Ok(p);
    }
    let from_tree = git::toplevel()
        .ok()
        .map(|top| top.join(policy::FILE))
        .filter(|p| p.is_file());
    let text = match &from_tree {
        Some(p) => Some(
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?,
        ),
        None => git::output(
            &["cat-file", "blob", &format!("HEAD:{}", policy::FILE)],
            None,
        )
        .ok()
        .filter(|o| o.success)
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned()),
    };
    Ok(match text {
        Some(t) => Policy::from_toml(&t, policy::FILE)?,
        None => Policy::builtin(),
    })
}

/// Opens the compute device on first use, once.
fn lazy_device() -> impl FnMut() -> Result<Device, String> {
    let mut dev: Option<Device> = None;
    move || {
        if let Some(d) = &dev {
            return Ok(d.clone());
        }
        let (d, why) = Device::from_env(None).map_err(|e| e.to_string())?;
        if std::env::var_os("GIT_THETA_TRACE").is_some() {
            eprintln!(
                "git-theta: merging on {}{}",
                d.name(),
                why.map(|w| format!(" ({w})")).unwrap_or_default()
            );
        }
        dev = Some(d.clone());
        Ok(d)
    }
}

/// Parses a blob as a manifest; `None` for an empty blob (no base).
fn manifest_of(bytes: &[u8], what: &str) -> Result<Option<Manifest>, Conflict> {
    if bytes.is_empty() {
        return Ok(None);
    }
    if !looks_like_manifest(bytes) {
        return Err(Conflict {
            tensor: None,
            reason: format!(
                "{what} is not a git-theta manifest (committed before the file was tracked?)"
            ),
        });
    }
    Manifest::parse(bytes).map(Some).map_err(|e| Conflict {
        tensor: None,
        reason: format!("{what}: {e}"),
    })
}

/// Merges three blobs with the repository's store and settings.
fn merge_blobs(
    base: &[u8],
    ours: &[u8],
    theirs: &[u8],
    policy: &Policy,
    clean: &CleanOptions,
) -> anyhow::Result<Result<Merged, Vec<Conflict>>> {
    let parse = || -> Result<_, Conflict> {
        let o = manifest_of(ours, "ours")?;
        let t = manifest_of(theirs, "theirs")?;
        match (o, t) {
            (Some(o), Some(t)) => Ok((manifest_of(base, "the base")?, o, t)),
            _ => Err(Conflict {
                tensor: None,
                reason: "one side is empty".into(),
            }),
        }
    };
    let (b, o, t) = match parse() {
        Ok(x) => x,
        Err(c) => return Ok(Err(vec![c])),
    };
    let store = Store::new(git::lfs_dir().context("git-theta runs inside a git repository")?);
    let clean = clean.clone().with_previous(&o);
    let mut device = lazy_device();
    let mut cx = Context {
        store: &store,
        fetcher: &mut LfsFetcher,
        clean: &clean,
        device: &mut device,
    };
    Ok(merge::merge(b.as_ref(), &o, &t, policy, &mut cx))
}

fn print_conflicts(path: &str, conflicts: &[Conflict]) {
    eprintln!(
        "git-theta: CONFLICT in {path}: {} tensor{} need{} a decision:",
        conflicts.len(),
        if conflicts.len() == 1 { "" } else { "s" },
        if conflicts.len() == 1 { "s" } else { "" }
    );
    for c in conflicts {
        eprintln!("    {c}");
    }
}

/// Runs the driver: merges %O, %A, %B and writes the result to %A. On a
/// conflict %A is left as it was (ours) and the exit status is non-zero.
pub fn run_driver(args: &DriverArgs) -> anyhow::Result<()> {
    let path = args.path.as_deref().unwrap_or("<checkpoint>");
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    let (base, ours, theirs) = (read(&args.base)?, read(&args.ours)?, read(&args.theirs)?);
    let policy = load_policy()?;
    let started = std::time::Instant::now();
    match merge_blobs(&base, &ours, &theirs, &policy, &clean_options()?)? {
        Ok(m) => {
            theta_engine::io::write_atomic(&args.ours, &m.manifest.to_bytes())?;
            eprintln!(
                "git-theta: merged {path}: {} ({:.1} s)",
                m.summary,
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Err(conflicts) => {
            print_conflicts(path, &conflicts);
            eprintln!(
                "hint: resolve with `git theta mergetool --strategy STRATEGY {path}`, write the \
                 versions out with `git theta mergetool --write-versions DIR {path}`, or \
                 `git merge --abort`."
            );
            bail!("automatic merge of {path} failed; ours is left in place")
        }
    }
}

/// A conflicted file: its mode and the blobs of stages 1 (base), 2 (ours)
/// and 3 (theirs), by object id.
struct Unmerged {
    path: String,
    mode: String,
    stages: [Option<String>; 3],
}

/// The conflicted entries of the index that git-theta tracks.
fn unmerged() -> anyhow::Result<Vec<Unmerged>> {
    let listing = git::run(&["ls-files", "-u", "-z"])?;
    let mut out: Vec<Unmerged> = Vec::new();
    for rec in listing.split(|&b| b == 0).filter(|r| !r.is_empty()) {
        let rec = String::from_utf8_lossy(rec);
        let Some((meta, path)) = rec.split_once('\t') else {
            continue;
        };
        let f: Vec<&str> = meta.split(' ').collect();
        let (Some(mode), Some(oid), Some(stage)) = (f.first(), f.get(1), f.get(2)) else {
            continue;
        };
        let Ok(stage @ 1..=3) = stage.parse::<usize>() else {
            continue;
        };
        if out.last().is_none_or(|u| u.path != path) {
            out.push(Unmerged {
                path: path.to_owned(),
                mode: String::new(),
                stages: [None, None, None],
            });
        }
        if let Some(u) = out.last_mut() {
            if stage == 2 || u.mode.is_empty() {
                u.mode = (*mode).to_owned();
            }
            u.stages[stage - 1] = Some((*oid).to_owned());
        }
    }
    if out.is_empty() {
        return Ok(out);
    }
    let mut paths = Vec::new();
    for u in &out {
        paths.extend_from_slice(u.path.as_bytes());
        paths.push(0);
    }
    let attrs = git::run_with_input(&["check-attr", "--stdin", "-z", "filter"], Some(paths))?;
    let fields: Vec<&[u8]> = attrs.split(|&b| b == 0).collect();
    let tracked: Vec<String> = fields
        .chunks_exact(3)
        .filter(|f| f[2] == b"theta")
        .map(|f| String::from_utf8_lossy(f[0]).into_owned())
        .collect();
    out.retain(|u| tracked.contains(&u.path));
    Ok(out)
}

fn blob(oid: Option<&String>) -> anyhow::Result<Vec<u8>> {
    match oid {
        Some(o) => Ok(git::run(&["cat-file", "blob", o])?),
        None => Ok(vec![]),
    }
}

/// Runs `mergetool`.
pub fn run_tool(args: &ToolArgs) -> anyhow::Result<()> {
    let top = git::toplevel()?;
    // PATHs are relative to where the command runs; git paths to the top.
    let prefix = git::text(&["rev-parse", "--show-prefix"])?;
    std::env::set_current_dir(&top).with_context(|| format!("cannot enter {}", top.display()))?;
    let mut files = unmerged()?;
    if !args.paths.is_empty() {
        let wanted: Vec<String> = args
            .paths
            .iter()
            .map(|p| format!("{prefix}{}", p.trim_start_matches("./")))
            .collect();
        for w in &wanted {
            if !files.iter().any(|u| &u.path == w) {
                bail!("{w} is not a conflicted checkpoint tracked by git-theta (see `git status`)");
            }
        }
        files.retain(|u| wanted.contains(&u.path));
    }
    if files.is_empty() {
        println!("git-theta: no conflicted checkpoints.");
        return Ok(());
    }
    if let Some(dir) = &args.write_versions {
        return write_versions(&files, dir);
    }
    let interactive = args.interactive
        || (args.strategy.is_none() && std::io::IsTerminal::is_terminal(&std::io::stdin()));
    let mut policy = match &args.strategy {
        Some(s) => {
            let list: Vec<&str> = args.params.iter().map(String::as_str).collect();
            let params =
                policy::parse_assignments(&list).map_err(|m| anyhow::anyhow!("--param {m}"))?;
            Policy::single(s, &params, "--strategy")?
        }
        None => load_policy()?,
    };
    let clean = clean_options()?;
    let mut failed = 0;
    for u in &files {
        let [b, o, t] = &u.stages;
        if o.is_none() || t.is_none() {
            eprintln!(
                "git-theta: {}: deleted on one side; keep it with `git add {0}` or drop it with `git rm {0}`",
                u.path
            );
            failed += 1;
            continue;
        }
        let (b, o, t) = (blob(b.as_ref())?, blob(o.as_ref())?, blob(t.as_ref())?);
        loop {
            let conflicts = match merge_blobs(&b, &o, &t, &policy, &clean)? {
                Ok(m) => {
                    stage(u, &m)?;
                    break;
                }
                Err(c) => c,
            };
            print_conflicts(&u.path, &conflicts);
            let choices = if interactive {
                prompt::ask(
                    &conflicts,
                    &mut std::io::stdin().lock(),
                    &mut std::io::stderr(),
                )?
            } else {
                vec![]
            };
            if choices.is_empty() {
                failed += 1;
                break;
            }
            for (name, chosen) in choices {
                policy.choose(&name, chosen);
            }
        }
    }
    if failed > 0 {
        bail!("{failed} checkpoint(s) still conflicted");
    }
    Ok(())
}

/// Stages the merged manifest for `u` and writes its checkpoint.
fn stage(u: &Unmerged, m: &Merged) -> anyhow::Result<()> {
    let oid = git::run_with_input(
        &["hash-object", "-w", "--no-filters", "--stdin"],
        Some(m.manifest.to_bytes()),
    )?;
    let oid = String::from_utf8_lossy(&oid).trim().to_owned();
    git::run(&[
        "update-index",
        "--cacheinfo",
        &format!("{},{oid},{}", u.mode, u.path),
    ])?;
    git::run(&["checkout-index", "-f", "--", &u.path])?;
    println!("git-theta: resolved {}: {}", u.path, m.summary);
    Ok(())
}

/// Writes each stage's checkpoint under DIR/{base,ours,theirs}/PATH.
fn write_versions(files: &[Unmerged], dir: &Path) -> anyhow::Result<()> {
    let store = Store::new(git::lfs_dir()?);
    for u in files {
        for (stage, name) in u.stages.iter().zip(["base", "ours", "theirs"]) {
            let Some(oid) = stage else {
                continue;
            };
            let manifest = blob(Some(oid))?;
            let target = dir.join(name).join(&u.path);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            let mut out = theta_engine::io::AtomicFile::create(&target)?;
            smudge::smudge(
                &mut &manifest[..],
                &mut ToAtomic(&mut out),
                &store,
                &mut LfsFetcher,
            )
            .with_context(|| format!("{}: {name}", u.path))?;
            out.commit()?;
            println!("{}", target.display());
        }
    }
    eprintln!(
        "git-theta: the versions are written; put your result at the conflicted path and \
         `git add` it (or `git merge --abort`)."
    );
    Ok(())
}

/// `io::Write` onto an [`theta_engine::io::AtomicFile`] (which buffers).
struct ToAtomic<'a>(&'a mut theta_engine::io::AtomicFile);

impl std::io::Write for ToAtomic<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write_all(buf).map_err(std::io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

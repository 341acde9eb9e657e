//! Printing a [`FileDiff`] for people: the full listing (what the diff
//! driver and `git theta diff` print) and the one-line `--stat` form.
//! Colors follow git's diff colors (bold meta, green added, red removed)
//! and are only used when asked to.

use std::fmt::Write as _;

use super::diff::{Change, FileDiff, FileStatus, Layout, Summary, TensorDiff};
use crate::format;

/// ANSI colors, or none.
#[derive(Clone, Copy, Debug)]
pub struct Palette {
    on: bool,
}

impl Palette {
    /// Colors when `on`.
    pub fn new(on: bool) -> Palette {
        Palette { on }
    }

    fn paint(&self, code: &str, s: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{s}\x1b[m")
        } else {
            s.to_owned()
        }
    }

    fn change(&self, c: Change) -> String {
        let code = match c {
            Change::Added => "32",
            Change::Removed => "31",
            Change::Reshaped | Change::Retyped => "33",
            Change::Modified => "36",
        };
        self.paint(code, &format!("{:<8}", c.label()))
    }
}

/// A number in 4 significant digits, exponent form (`1.234e-2`).
pub fn sci(x: f64) -> String {
    if x == 0.0 {
        "0".into()
    } else if x.is_infinite() {
        "inf".into()
    } else {
        format!("{x:.3e}")
    }
}

fn opt(x: Option<f64>, f: impl Fn(f64) -> String) -> String {
    x.map_or_else(|| "-".into(), f)
}

fn layout(l: &Layout) -> String {
    format!("{} {}", l.dtype, format::shape(&l.shape))
}

/// What the file's tensors did, in a few words: `37 modified, 1 added`.
pub fn counts(d: &FileDiff) -> String {
    let mut parts = Vec::new();
    for c in [
        Change::Modified,
        Change::Added,
        Change::Removed,
        Change::Reshaped,
        Change::Retyped,
    ] {
        let n = d.tensors.iter().filter(|t| t.change == c).count();
        if n > 0 {
            parts.push(format!("{n} {}", c.label()));
        }
    }
    if parts.is_empty() {
        parts.push("no tensor changed".into());
    }
    parts.join(", ")
}

fn header(d: &FileDiff, p: &Palette) -> String {
    let what = match d.status {
        FileStatus::Modified => String::new(),
        FileStatus::Added => " (new file)".into(),
        FileStatus::Deleted => " (deleted)".into(),
        FileStatus::NotCheckpoint => " (not a safetensors checkpoint on both sides)".into(),
    };
    p.paint("1", &format!("diff --theta a/{0} b/{0}{what}", d.path))
}

/// The full listing: a header, the added/removed/reshaped/retyped tensors,
/// a row per modified tensor, a line per layer and a total. Unchanged
/// tensors are counted, not listed.
pub fn text(d: &FileDiff, p: &Palette) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", header(d, p));
    if d.status == FileStatus::NotCheckpoint {
        let _ = writeln!(out, "contents differ");
        return out;
    }
    let _ = writeln!(
        out,
        "tensors: {} → {}; {}; {} unchanged",
        d.tensors_old,
        d.tensors_new,
        counts(d),
        d.unchanged
    );
    let width = d
        .tensors
        .iter()
        .map(|t| t.name.chars().count())
        .max()
        .unwrap_or(0)
        .max(6);
    for t in d.tensors.iter().filter(|t| t.change != Change::Modified) {
        let what = match (&t.old, &t.new) {
            (Some(o), Some(n)) => format!("{} → {}", layout(o), layout(n)),
            (Some(l), None) | (None, Some(l)) => layout(l),
            (None, None) => String::new(),
        };
        let _ = writeln!(out, "{} {:<width$}  {what}", p.change(t.change), t.name);
    }
    if d.tensors.iter().any(|t| t.change == Change::Modified) {
        let _ = writeln!(
            out,
            "{}",
            p.paint(
                "2",
                &format!(
                    "{:<8} {:<width$}  {:>10} {:>10} {:>10} {:>8} {:>10}",
                    "", "tensor", "rel.change", "cosine", "max|Δ|", "changed", "‖Δ‖"
                )
            )
        );
    }
    for t in d.tensors.iter().filter(|t| t.change == Change::Modified) {
        let _ = writeln!(out, "{} {}", p.change(t.change), row(t, width));
    }
    if d.layers.iter().any(|l| l.modified > 0) {
        for l in d.layers.iter().filter(|l| l.modified > 0) {
            let name = match l.layer {
                Some(i) => format!("layer {i}"),
                None => "outside layers".into(),
            };
            let _ = writeln!(out, "{}", summary_line(&name, l));
        }
        let _ = writeln!(out, "{}", p.paint("1", &summary_line("total", &d.total)));
    }
    out
}

fn row(t: &TensorDiff, width: usize) -> String {
    let Some(s) = &t.stats else {
        return t.name.clone();
    };
    format!(
        "{:<width$}  {:>10} {:>10} {:>10} {:>7.2}% {:>10}",
        t.name,
        opt(s.relative_change, sci),
        opt(s.cosine, |c| format!("{c:.6}")),
        opt(s.max_abs_diff, sci),
        s.changed_fraction * 100.0,
        opt(s.norm_diff, sci),
    )
}

fn summary_line(name: &str, s: &Summary) -> String {
    let frac = if s.numel > 0 {
        s.changed as f64 / s.numel as f64 * 100.0
    } else {
        0.0
    };
    format!(
        "{name}: {} modified, rel.change {}, ‖Δ‖ {}, {frac:.2}% of {} elements changed",
        s.modified,
        opt(s.relative_change, sci),
        sci(s.norm_diff),
        format::count(s.numel),
    )
}

/// `--stat`: one line per checkpoint.
pub fn stat_line(d: &FileDiff, width: usize, p: &Palette) -> String {
    let rel = match d.total.relative_change {
        Some(r) => format!(", rel.change {}", sci(r)),
        None => String::new(),
    };
    let what = match d.status {
        FileStatus::NotCheckpoint => "not a checkpoint; contents differ".to_owned(),
        FileStatus::Added => format!("new, {} tensors", d.tensors_new),
        FileStatus::Deleted => format!("deleted, {} tensors", d.tensors_old),
        FileStatus::Modified => format!("{}{rel}; {} unchanged", counts(d), d.unchanged),
    };
    format!(" {:<width$} | {}", d.path, p.paint("1", &what))
}

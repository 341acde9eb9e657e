//! `git theta diff --html FILE`: one self-contained page (no scripts, no
//! external resources) with, per checkpoint, an inline-SVG chart of the
//! relative change per layer by kind of tensor, the layer summaries and the
//! table of changed tensors.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::diff::{FileDiff, TensorDiff};
use super::diff_render::{counts, sci};

/// Kinds of tensor the chart tells apart, with their colors.
pub const KINDS: &[(&str, &str)] = &[
    ("q", "#4e79a7"),
    ("k", "#f28e2b"),
    ("v", "#e15759"),
    ("o", "#76b7b2"),
    ("mlp", "#59a14f"),
    ("norm", "#edc948"),
    ("embed", "#b07aa1"),
    ("other", "#9c755f"),
];

/// The kind of tensor `name` is, from the names Llama, Mistral, GPT-2,
/// BERT and Falcon checkpoints use.
pub fn kind(name: &str) -> &'static str {
    let n = name.to_ascii_lowercase();
    let parts: Vec<&str> = n.split('.').collect();
    let has = |keys: &[&str]| parts.iter().any(|p| keys.contains(p));
    if n.contains("norm") || has(&["ln_1", "ln_2", "ln_f", "ln"]) {
        "norm"
    } else if n.contains("embed") || has(&["wte", "wpe", "lm_head", "embeddings"]) {
        "embed"
    } else if has(&["q_proj", "query", "wq", "q"]) {
        "q"
    } else if has(&["k_proj", "key", "wk", "k"]) {
        "k"
    } else if has(&["v_proj", "value", "wv", "v"]) {
        "v"
    } else if has(&["o_proj", "out_proj", "wo", "c_proj"]) && !n.contains("mlp") {
        "o"
    } else if n.contains("mlp")
        || n.contains("ffn")
        || n.contains("feed_forward")
        || has(&[
            "gate_proj",
            "up_proj",
            "down_proj",
            "fc1",
            "fc2",
            "c_fc",
            "intermediate",
            "w1",
            "w2",
            "w3",
        ])
    {
        "mlp"
    } else if n.contains("attn") || n.contains("attention") {
        "o"
    } else {
        "other"
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A layer as the chart orders it: numbered layers, then the rest.
type LayerKey = (bool, u64);

/// Relative change per (layer, kind): √Σ‖Δ‖² / √Σ‖old‖² over the modified
/// tensors of that kind in that layer. Layer `None` (outside layers) last.
pub fn chart_data(d: &FileDiff) -> BTreeMap<LayerKey, BTreeMap<&'static str, f64>> {
    let mut sums: BTreeMap<LayerKey, BTreeMap<&'static str, (f64, f64)>> = BTreeMap::new();
    for t in &d.tensors {
        let Some(s) = &t.stats else { continue };
        let (Some(nd), Some(no)) = (s.norm_diff, s.norm_old) else {
            continue;
        };
        let e = sums
            .entry((t.layer.is_none(), t.layer.unwrap_or(0)))
            .or_default()
            .entry(kind(&t.name))
            .or_default();
        e.0 += nd * nd;
        e.1 += no * no;
    }
    sums.into_iter()
        .map(|(layer, kinds)| {
            let rel = kinds
                .into_iter()
                .map(|(k, (d2, o2))| {
                    let r = if o2 > 0.0 { (d2 / o2).sqrt() } else { 0.0 };
                    (k, r)
                })
                .collect();
            (layer, rel)
        })
        .collect()
}

fn chart(d: &FileDiff) -> String {
    let data = chart_data(d);
    if data.is_empty() {
        return "<p>No modified floating-point tensors to chart.</p>\n".into();
    }
    let max = data
        .values()
        .flat_map(|k| k.values().copied())
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(f64::MIN_POSITIVE);
    let (bar, gap, left, top, height) = (10.0, 14.0, 70.0, 20.0, 220.0);
    let group = |n: usize| n as f64 * bar + gap;
    let widths: Vec<f64> = data.values().map(|k| group(k.len())).collect();
    let width = left + widths.iter().sum::<f64>() + 20.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width:.0}" height="{:.0}" role="img" aria-label="relative change per layer by kind of tensor">"#,
        top + height + 50.0
    );
    for i in 0..=4 {
        let v = max * f64::from(i) / 4.0;
        let y = top + height - height * f64::from(i) / 4.0;
        let _ = writeln!(
            s,
            r##"<line x1="{left}" x2="{:.0}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.0}" y="{:.1}" font-size="10" text-anchor="end">{}</text>"##,
            width - 10.0,
            left - 4.0,
            y + 3.0,
            sci(v)
        );
    }
    let mut x = left + gap / 2.0;
    for ((outside, layer), kinds) in &data {
        let label = if *outside {
            "other".to_owned()
        } else {
            layer.to_string()
        };
        let start = x;
        for (k, color) in KINDS {
            let Some(&v) = kinds.get(k) else { continue };
            let h = if v.is_finite() {
                height * v / max
            } else {
                height
            };
            let _ = writeln!(
                s,
                r#"<rect class="bar" x="{x:.1}" y="{:.1}" width="{bar}" height="{h:.1}" fill="{color}"><title>layer {label}, {k}: {}</title></rect>"#,
                top + height - h,
                sci(v)
            );
            x += bar;
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.0}" font-size="10" text-anchor="middle">{label}</text>"#,
            (start + x) / 2.0,
            top + height + 14.0
        );
        x += gap;
    }
    let mut lx = left;
    for (k, color) in KINDS {
        let _ = writeln!(
            s,
            r#"<rect x="{lx:.0}" y="{:.0}" width="10" height="10" fill="{color}"/><text x="{:.0}" y="{:.0}" font-size="11">{k}</text>"#,
            top + height + 26.0,
            lx + 14.0,
            top + height + 35.0
        );
        lx += 60.0;
    }
    let _ = writeln!(
        s,
        r#"<text x="12" y="{:.0}" font-size="11" transform="rotate(-90 12 {:.0})" text-anchor="middle">‖Δ‖/‖old‖</text>"#,
        top + height / 2.0,
        top + height / 2.0
    );
    s.push_str("</svg>\n");
    s
}

fn tensor_row(t: &TensorDiff) -> String {
    let cell = |x: Option<f64>| x.map_or_else(|| "-".into(), sci);
    match &t.stats {
        Some(s) => format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.2}%</td><td>{}</td></tr>",
            esc(&t.name),
            t.change.label(),
            cell(s.relative_change),
            s.cosine.map_or_else(|| "-".into(), |c| format!("{c:.6}")),
            cell(s.max_abs_diff),
            s.changed_fraction * 100.0,
            cell(s.norm_diff),
        ),
        None => {
            let l = |l: &Option<super::diff::Layout>| {
                l.as_ref().map_or_else(String::new, |l| {
                    format!("{} {}", l.dtype, crate::format::shape(&l.shape))
                })
            };
            format!(
                "<tr><td>{}</td><td>{}</td><td colspan=\"5\">{} → {}</td></tr>",
                esc(&t.name),
                t.change.label(),
                esc(&l(&t.old)),
                esc(&l(&t.new))
            )
        }
    }
}

/// The whole page for `diffs` between `old` and `new` (labels).
pub fn page(diffs: &[FileDiff], old: &str, new: &str) -> String {
    let mut s = String::new();
    let title = format!("git theta diff {old} {new}");
    let _ = writeln!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>\nbody{{font-family:system-ui,sans-serif;margin:2em;color:#222}}\ntable{{border-collapse:collapse;font-size:13px}}\ntd,th{{padding:2px 8px;border-bottom:1px solid #eee;text-align:right}}\ntd:first-child,th:first-child{{text-align:left;font-family:monospace}}\n</style>\n</head>\n<body>\n<h1>{}</h1>",
        esc(&title),
        esc(&title)
    );
    for d in diffs {
        let _ = writeln!(
            s,
            "<section>\n<h2>{}</h2>\n<p>{}; {} unchanged</p>",
            esc(&d.path),
            esc(&counts(d)),
            d.unchanged
        );
        s.push_str("<h3>Relative change per layer, by kind of tensor</h3>\n");
        s.push_str(&chart(d));
        s.push_str("<h3>Layers</h3>\n<table>\n<tr><th>layer</th><th>modified</th><th>rel.change</th><th>‖Δ‖</th></tr>\n");
        for l in d.layers.iter().chain(std::iter::once(&d.total)) {
            let name = if std::ptr::eq(l, &d.total) {
                "total".to_owned()
            } else {
                l.layer
                    .map_or_else(|| "outside layers".into(), |i| i.to_string())
            };
            let _ = writeln!(
                s,
                "<tr><td>{name}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                l.modified,
                l.relative_change.map_or_else(|| "-".into(), sci),
                sci(l.norm_diff)
            );
        }
        s.push_str("</table>\n<h3>Tensors</h3>\n<table>\n<tr><th>tensor</th><th>change</th><th>rel.change</th><th>cosine</th><th>max|Δ|</th><th>changed</th><th>‖Δ‖</th></tr>\n");
        for t in &d.tensors {
            s.push_str(&tensor_row(t));
            s.push('\n');
        }
        s.push_str("</table>\n</section>\n");
    }
    s.push_str("</body>\n</html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_of_common_names() {
        for (name, k) in [
            ("model.layers.0.self_attn.q_proj.weight", "q"),
            ("model.layers.0.self_attn.k_proj.weight", "k"),
            ("model.layers.0.self_attn.v_proj.weight", "v"),
            ("model.layers.0.self_attn.o_proj.weight", "o"),
            ("model.layers.0.mlp.down_proj.weight", "mlp"),
            ("model.layers.0.input_layernorm.weight", "norm"),
            ("model.embed_tokens.weight", "embed"),
            ("lm_head.weight", "embed"),
            ("transformer.h.3.attn.c_attn.weight", "o"),
            ("transformer.h.3.mlp.c_proj.weight", "mlp"),
            ("encoder.layer.1.attention.self.query.weight", "q"),
            ("step", "other"),
        ] {
            assert_eq!(kind(name), k, "{name}");
        }
    }
}

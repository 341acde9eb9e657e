// Fused statistics over a pair of tensors (a, b), optionally taken relative
// to a base (a - base, b - base): per workgroup, in f32, the sums
// a^2, b^2, (b-a)^2, a*b, (b-a), the largest finite |b-a|, and the counts of
// changed elements (bitwise) and of non-finite a and b. The host adds the
// per-workgroup partials in f64, in order. Each workgroup covers
// WG * ITEMS elements; each thread ITEMS of them, strided by WG.

struct Params {
    len: u32,
    seg_words: u32,
    has_base: u32,
    pad0: u32,
}

override IN_DT: u32 = 0u;
const ITEMS: u32 = 16u;
// Words per partial: a2, b2, d2, dot, sum_d, max_d, changed, nonfinite_a, nonfinite_b, pad.
const PARTIAL: u32 = 10u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> inputs: array<u32>;
@group(0) @binding(2) var<storage, read> base: array<u32>;
@group(0) @binding(3) var<storage, read_write> partials: array<u32>;

var<workgroup> sh_f: array<array<f32, 256>, 6>;
var<workgroup> sh_u: array<array<u32, 256>, 3>;

fn is_finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

@compute @workgroup_size(WG)
fn stats(@builtin(workgroup_id) wid: vec3<u32>,
         @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let g = group_index(wid, nwg);
    let start = g * WG * ITEMS;
    var a2 = 0.0;
    var b2 = 0.0;
    var d2 = 0.0;
    var dot = 0.0;
    var sd = 0.0;
    var md = 0.0;
    var changed = 0u;
    var nfa = 0u;
    var nfb = 0u;
    for (var k = 0u; k < ITEMS; k++) {
        let j = start + k * WG + lid;
        if (j < p.len) {
            var a = decode(inputs[word_of(j, IN_DT)], j, IN_DT);
            var b = decode(inputs[p.seg_words + word_of(j, IN_DT)], j, IN_DT);
            if (p.has_base != 0u) {
                let c = decode(base[word_of(j, IN_DT)], j, IN_DT);
                a = a - c;
                b = b - c;
            }
            let d = b - a;
            a2 += a * a;
            b2 += b * b;
            d2 += d * d;
            dot += a * b;
            sd += d;
            if (is_finite(d) && abs(d) > md) {
                md = abs(d);
            }
            changed += select(0u, 1u, bitcast<u32>(a) != bitcast<u32>(b));
            nfa += select(0u, 1u, !is_finite(a));
            nfb += select(0u, 1u, !is_finite(b));
        }
    }
    sh_f[0][lid] = a2;
    sh_f[1][lid] = b2;
    sh_f[2][lid] = d2;
    sh_f[3][lid] = dot;
    sh_f[4][lid] = sd;
    sh_f[5][lid] = md;
    sh_u[0][lid] = changed;
    sh_u[1][lid] = nfa;
    sh_u[2][lid] = nfb;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            for (var q = 0u; q < 5u; q++) {
                sh_f[q][lid] += sh_f[q][lid + s];
            }
            sh_f[5][lid] = max(sh_f[5][lid], sh_f[5][lid + s]);
            for (var q = 0u; q < 3u; q++) {
                sh_u[q][lid] += sh_u[q][lid + s];
            }
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        let o = g * PARTIAL;
        for (var q = 0u; q < 6u; q++) {
            partials[o + q] = bitcast<u32>(sh_f[q][0]);
        }
        for (var q = 0u; q < 3u; q++) {
            partials[o + 6u + q] = sh_u[q][0];
        }
        partials[o + 9u] = 0u;
    }
}

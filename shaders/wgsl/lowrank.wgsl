// Low-rank reconstruction out = W + s * (B A) for W [rows x cols],
// B [rows x rank], A [rank x cols], one pair of output elements per thread.
// `lowrank_tiled` (even cols) gives each workgroup a TR x TC tile of the
// output and stages TK-deep slices of B and A in workgroup memory, so each
// A element is read from memory once per TR rows instead of once per row;
// `lowrank` (any shape) reads A straight from memory. Either way the sum
// over the rank runs in order k = 0..rank, like the CPU twin, so the
// results are bit-identical.

struct Params {
    len: u32,
    cols: u32,
    rank: u32,
    row0: u32,
    scale: f32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

override IN_DT: u32 = 0u;
override OUT_DT: u32 = 0u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> b_mat: array<u32>;
@group(0) @binding(3) var<storage, read> a_mat: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<u32>;

fn one(j: u32) -> f32 {
    let row = j / p.cols;
    let col = j - row * p.cols;
    var acc = 0.0;
    for (var k = 0u; k < p.rank; k++) {
        let bi = row * p.rank + k;
        let ai = k * p.cols + col;
        let bv = decode(b_mat[word_of(bi, IN_DT)], bi, IN_DT);
        let av = decode(a_mat[word_of(ai, IN_DT)], ai, IN_DT);
        acc = acc + bv * av;
    }
    let wv = decode(w[word_of(j, IN_DT)], j, IN_DT);
    return wv + p.scale * acc;
}

@compute @workgroup_size(WG)
fn lowrank(@builtin(workgroup_id) wid: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let pair = group_index(wid, nwg) * WG + lid;
    let j = pair * 2u;
    if (j >= p.len) {
        return;
    }
    let v0 = one(j);
    var v1 = 0.0;
    if (j + 1u < p.len) {
        v1 = one(j + 1u);
    }
    store_pair(pair, v0, v1);
}

// Tile of lowrank_tiled: TR rows x TC columns, one column pair per thread,
// so it needs WG = TR * TC / 2 = 256 (the engine's WG); slices of TK ranks.
const TR: u32 = 8u;
const TC: u32 = 64u;
const TK: u32 = 32u;

var<workgroup> a_tile: array<f32, 2048>; // TK x TC
var<workgroup> b_tile: array<f32, 256>; // TR x TK

@compute @workgroup_size(WG)
fn lowrank_tiled(@builtin(workgroup_id) wid: vec3<u32>,
                 @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let rows = p.len / p.cols;
    let tiles_c = (p.cols + TC - 1u) / TC;
    let tile = group_index(wid, nwg);
    // Uniform per workgroup: spare groups of a 2-D grid leave together.
    if (tile >= ((rows + TR - 1u) / TR) * tiles_c) {
        return;
    }
    let r0 = (tile / tiles_c) * TR;
    let c0 = (tile % tiles_c) * TC;
    let lr = lid / (TC / 2u);
    let lc = (lid % (TC / 2u)) * 2u;
    let row = r0 + lr;
    let col = c0 + lc;
    var acc0 = 0.0;
    var acc1 = 0.0;
    for (var k0 = 0u; k0 < p.rank; k0 += TK) {
        // WG = 256 threads stage TK x TC = 2048 A values and TR x TK = 256
        // B values (0 outside the matrices; never summed, see below).
        for (var t = lid; t < TK * TC; t += WG) {
            let k = k0 + t / TC;
            let c = c0 + t % TC;
            var v = 0.0;
            if (k < p.rank && c < p.cols) {
                let ai = k * p.cols + c;
                v = decode(a_mat[word_of(ai, IN_DT)], ai, IN_DT);
            }
            a_tile[t] = v;
        }
        for (var t = lid; t < TR * TK; t += WG) {
            let r = r0 + t / TK;
            let k = k0 + t % TK;
            var v = 0.0;
            if (k < p.rank && r < rows) {
                let bi = r * p.rank + k;
                v = decode(b_mat[word_of(bi, IN_DT)], bi, IN_DT);
            }
            b_tile[t] = v;
        }
        workgroupBarrier();
        let kn = min(TK, p.rank - k0);
        for (var kk = 0u; kk < kn; kk++) {
            let bv = b_tile[lr * TK + kk];
            acc0 = acc0 + bv * a_tile[kk * TC + lc];
            acc1 = acc1 + bv * a_tile[kk * TC + lc + 1u];
        }
        workgroupBarrier();
    }
    // cols is even, so col + 1 < cols and the pair is one output word.
    if (row < rows && col < p.cols) {
        let j = row * p.cols + col;
        let w0 = decode(w[word_of(j, IN_DT)], j, IN_DT);
        let w1 = decode(w[word_of(j + 1u, IN_DT)], j + 1u, IN_DT);
        store_pair(j / 2u, w0 + p.scale * acc0, w1 + p.scale * acc1);
    }
}

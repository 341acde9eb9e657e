// Low-rank reconstruction out = W + s * (B A) for W [rows x cols],
// B [rows x rank], A [rank x cols], one pair of output elements per thread.
// The rank is small (LoRA: 4..256), so A is read straight from memory:
// neighbouring threads read neighbouring columns. The sum over the rank runs
// in order k = 0..rank, like the CPU twin, so the results are bit-identical.

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
    if (OUT_DT == DT_F32) {
        out[j] = bitcast<u32>(v0);
        out[j + 1u] = bitcast<u32>(v1);
    } else {
        out[pair] = encode16(v0, OUT_DT) | (encode16(v1, OUT_DT) << 16u);
    }
}

// Merging N tensors element by element, optionally around a base:
//   delta_i = x_i - base   (x_i when there is no base)
//   sparsify: none | magnitude (keep threshold_i <= |delta_i| < upper_i) |
//             random (keep with probability p_i); kept deltas times scale_i
//   combine:  0 linear       sum_i w_i delta_i
//             3 linear mean  the same over sum_i w_i (1 when near zero)
//             1 ties mean    elect the sign of sum_i w_i delta_i (+ at zero),
//                            then the deltas whose w_i delta_i carry it,
//                            summed and divided by their weights (2: undivided)
//   out = base + lambda * combined
// Each thread writes one pair of elements, so F16/BF16 outputs are whole u32
// words. Must match theta_engine::compute::ops::merge_element exactly.

struct Params {
    n_models: u32,
    len: u32,
    seg_words: u32,
    has_base: u32,
    sparsify: u32,
    combine: u32,
    lambda: f32,
    name_hash: u32,
    seed_lo: u32,
    seed_hi: u32,
    offset_lo: u32,
    offset_hi: u32,
}

struct Model {
    weight: f32,
    threshold_bits: u32,
    keep_below: u32,
    keep_all: u32,
    scale: f32,
    upper_bits: u32,
    pad0: u32,
    pad1: u32,
}

// Dtype of the inputs and of the output (DT_*), fixed per pipeline.
override IN_DT: u32 = 0u;
override OUT_DT: u32 = 0u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> models: array<Model>;
@group(0) @binding(2) var<storage, read> inputs: array<u32>;
@group(0) @binding(3) var<storage, read> base: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<u32>;

fn sparsify(d: f32, i: u32, j: u32) -> f32 {
    let m = models[i];
    if (p.sparsify == 1u) {
        let a = bitcast<u32>(d) & 0x7fffffffu;
        if (a >= m.threshold_bits && a < m.upper_bits) {
            return d * m.scale;
        }
        return 0.0;
    }
    if (p.sparsify == 2u) {
        if (m.keep_all != 0u) {
            return d;
        }
        let lo = p.offset_lo + j;
        let hi = p.offset_hi + select(0u, 1u, lo < j);
        if (draw(p.seed_lo, p.seed_hi, p.name_hash, i, lo, hi) < m.keep_below) {
            return d * m.scale;
        }
        return 0.0;
    }
    return d;
}

fn merge_one(j: u32) -> f32 {
    var b = 0.0;
    if (p.has_base != 0u) {
        b = decode(base[word_of(j, IN_DT)], j, IN_DT);
    }
    var sum = 0.0;
    for (var i = 0u; i < p.n_models; i++) {
        let x = decode(inputs[i * p.seg_words + word_of(j, IN_DT)], j, IN_DT);
        var d = x;
        if (p.has_base != 0u) {
            d = x - b;
        }
        sum += models[i].weight * sparsify(d, i, j);
    }
    var combined = sum;
    if (p.combine == 1u || p.combine == 2u) {
        var num = 0.0;
        var den = 0.0;
        for (var i = 0u; i < p.n_models; i++) {
            let x = decode(inputs[i * p.seg_words + word_of(j, IN_DT)], j, IN_DT);
            var d = x;
            if (p.has_base != 0u) {
                d = x - b;
            }
            let v = models[i].weight * sparsify(d, i, j);
            if ((v > 0.0 && sum >= 0.0) || (v < 0.0 && sum < 0.0)) {
                num += v;
                den += models[i].weight;
            }
        }
        if (p.combine == 2u) {
            combined = num;
        } else {
            if (den == 0.0) {
                den = 1.0;
            }
            combined = num / den;
        }
    } else if (p.combine == 3u) {
        var den = 0.0;
        for (var i = 0u; i < p.n_models; i++) {
            den += models[i].weight;
        }
        if (abs(den) < 1e-8) {
            den = 1.0;
        }
        combined = sum / den;
    }
    return b + p.lambda * combined;
}

@compute @workgroup_size(WG)
fn merge(@builtin(workgroup_id) wid: vec3<u32>,
         @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let pair = group_index(wid, nwg) * WG + lid;
    let j = pair * 2u;
    if (j >= p.len) {
        return;
    }
    let v0 = merge_one(j);
    var v1 = 0.0;
    if (j + 1u < p.len) {
        v1 = merge_one(j + 1u);
    }
    store_pair(pair, v0, v1);
}

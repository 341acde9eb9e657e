// Radix select of the k-th largest |x - base| (TIES' magnitude trim) without
// sorting: four passes of a 256-bin histogram over 8 bits of the magnitude's
// bit pattern (non-negative floats order like their bits), each restricted
// to the elements whose higher bits match the prefix chosen so far. The host
// walks the histogram from the top to pick the next byte.

struct Params {
    len: u32,
    has_base: u32,
    shift: u32,
    prefix: u32,
}

override IN_DT: u32 = 0u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> inputs: array<u32>;
@group(0) @binding(2) var<storage, read> base: array<u32>;
@group(0) @binding(3) var<storage, read_write> hist: array<atomic<u32>, 256>;

var<workgroup> local_hist: array<atomic<u32>, 256>;

@compute @workgroup_size(WG)
fn histogram(@builtin(workgroup_id) wid: vec3<u32>,
             @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    for (var b = lid; b < 256u; b += WG) {
        atomicStore(&local_hist[b], 0u);
    }
    workgroupBarrier();
    let start = group_index(wid, nwg) * WG * 4u;
    for (var k = 0u; k < 4u; k++) {
        let j = start + k * WG + lid;
        if (j < p.len) {
            var d = decode(inputs[word_of(j, IN_DT)], j, IN_DT);
            if (p.has_base != 0u) {
                d = d - decode(base[word_of(j, IN_DT)], j, IN_DT);
            }
            let bits = bitcast<u32>(d) & 0x7fffffffu;
            // Bits above the current byte must equal the prefix (none on the first pass).
            let high_ok = p.shift == 24u || (bits >> (p.shift + 8u)) == p.prefix;
            if (high_ok) {
                atomicAdd(&local_hist[(bits >> p.shift) & 0xffu], 1u);
            }
        }
    }
    workgroupBarrier();
    for (var b = lid; b < 256u; b += WG) {
        let c = atomicLoad(&local_hist[b]);
        if (c != 0u) {
            atomicAdd(&hist[b], c);
        }
    }
}

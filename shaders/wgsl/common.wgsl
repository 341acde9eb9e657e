// Prelude shared by every kernel: dtype codes, exact F16/BF16 decoding and
// round-to-nearest-even encoding with u32 bit operations (the same results as
// the `half` crate on the CPU), the 2-D dispatch index, and a counter-based
// random generator. Prepended to each kernel file by the registry.

const DT_F32: u32 = 0u;
const DT_F16: u32 = 1u;
const DT_BF16: u32 = 2u;

// Threads per workgroup; the engine sets it (and keys its pipeline cache on it).
override WG: u32 = 256u;

fn f16_to_f32(h: u32) -> f32 {
    let s = (h & 0x8000u) << 16u;
    let e = (h >> 10u) & 0x1fu;
    let m = h & 0x3ffu;
    if (e == 0u) {
        // Zero or subnormal: m * 2^-24 is exact and normal in f32.
        let v = f32(m) * 5.9604645e-8;
        return bitcast<f32>(bitcast<u32>(v) | s);
    }
    if (e == 31u) {
        return bitcast<f32>(s | 0x7f800000u | (m << 13u));
    }
    return bitcast<f32>(s | ((e + 112u) << 23u) | (m << 13u));
}

fn f32_to_f16(v: f32) -> u32 {
    let x = bitcast<u32>(v);
    let sign = (x & 0x80000000u) >> 16u;
    let ex = x & 0x7f800000u;
    let man = x & 0x007fffffu;
    if (ex == 0x7f800000u) {
        var nan_bit = 0u;
        if (man != 0u) {
            nan_bit = 0x0200u;
        }
        return sign | 0x7c00u | nan_bit | (man >> 13u);
    }
    let half_exp = i32(ex >> 23u) - 127 + 15;
    if (half_exp >= 31) {
        return sign | 0x7c00u;
    }
    if (half_exp <= 0) {
        if (14 - half_exp > 24) {
            return sign;
        }
        let m = man | 0x00800000u;
        var half_man = m >> u32(14 - half_exp);
        let round_bit = 1u << u32(13 - half_exp);
        if ((m & round_bit) != 0u && (m & (3u * round_bit - 1u)) != 0u) {
            half_man += 1u;
        }
        return sign | half_man;
    }
    let r = sign | (u32(half_exp) << 10u) | (man >> 13u);
    if ((man & 0x1000u) != 0u && (man & 0x2fffu) != 0u) {
        return r + 1u;
    }
    return r;
}

fn f32_to_bf16(v: f32) -> u32 {
    let x = bitcast<u32>(v);
    if ((x & 0x7fffffffu) > 0x7f800000u) {
        return (x >> 16u) | 0x0040u;
    }
    if ((x & 0x8000u) != 0u && (x & 0x17fffu) != 0u) {
        return (x >> 16u) + 1u;
    }
    return x >> 16u;
}

// The word holding element `i` of a tensor of dtype `dt`.
fn word_of(i: u32, dt: u32) -> u32 {
    if (dt == DT_F32) {
        return i;
    }
    return i >> 1u;
}

// Element `i`, given the word that holds it.
fn decode(word: u32, i: u32, dt: u32) -> f32 {
    if (dt == DT_F32) {
        return bitcast<f32>(word);
    }
    let h = (word >> (16u * (i & 1u))) & 0xffffu;
    if (dt == DT_F16) {
        return f16_to_f32(h);
    }
    return bitcast<f32>(h << 16u);
}

fn encode16(v: f32, dt: u32) -> u32 {
    if (dt == DT_F16) {
        return f32_to_f16(v);
    }
    return f32_to_bf16(v);
}

// Linear workgroup index of a (possibly 2-D) dispatch.
fn group_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.y * nwg.x + wid.x;
}

// lowbias32 (Chris Wellons): a full-avalanche 32-bit mixer.
fn mix32(x: u32) -> u32 {
    var h = x;
    h ^= h >> 16u;
    h *= 0x7feb352du;
    h ^= h >> 15u;
    h *= 0x846ca68bu;
    h ^= h >> 16u;
    return h;
}

// The random word for (seed, tensor name hash, model, element index).
fn draw(seed_lo: u32, seed_hi: u32, name: u32, model: u32, idx_lo: u32, idx_hi: u32) -> u32 {
    var h = mix32(seed_lo ^ 0x9e3779b9u);
    h = mix32(h ^ seed_hi);
    h = mix32(h ^ name);
    h = mix32(h ^ model);
    h = mix32(h ^ idx_hi);
    return mix32(h ^ idx_lo);
}

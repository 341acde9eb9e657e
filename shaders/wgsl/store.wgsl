// The shared tail of the elementwise kernels (merge, lowrank): each thread
// computes the output elements j = 2 * pair and j + 1 and stores them, as two
// f32 words or as one word of two packed F16/BF16 halves. Prepended to the
// kernels that declare `out: array<u32>` and `p.len`; WGSL module-scope
// declarations may come in any order.

fn store_pair(pair: u32, v0: f32, v1: f32) {
    let j = pair * 2u;
    if (OUT_DT == DT_F32) {
        out[j] = bitcast<u32>(v0);
        if (j + 1u < p.len) {
            out[j + 1u] = bitcast<u32>(v1);
        }
    } else {
        out[pair] = encode16(v0, OUT_DT) | (encode16(v1, OUT_DT) << 16u);
    }
}

//! Blocks of F32/F16/BF16 bytes to and from f32 slices, by bit operations
//! on whole slices (the compiler vectorises them), and the runtime choice of
//! instruction set the chunk loops are compiled for.
//!
//! The conversions give exactly the bits of `half` (and of the WGSL
//! `unpack`/`pack` in `common.wgsl`): BF16 decode is a shift, BF16 encode
//! rounds to nearest even and quiets NaNs; F16 goes through F16C's
//! `vcvtph2ps`/`vcvtps2ph` in the AVX2 and AVX-512 tiers (inlined into the
//! loops, the instructions `half` uses too), else through `half`'s slice
//! conversions.

use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::DType;

/// Elements per inner block: every buffer a chunk loop touches stays in L1.
pub(super) const BLOCK: usize = 1024;

/// `half::bf16::to_f32` of the bits `h`: a shift.
#[inline(always)]
pub(super) fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// `half::bf16::from_f32`, branch-free so a loop of it vectorises.
/// Rounding to nearest even is one add: `0x7fff` plus the kept part's
/// lowest bit carries into it exactly when the dropped half is above
/// `0x8000`, or equal with that bit odd. No finite or infinite value
/// overflows the u32 (the largest, −∞, is `0xff80_0000`); NaNs are quieted
/// instead.
#[inline(always)]
pub(super) fn bf16_bits(x: f32) -> u16 {
    // One float compare, where testing the bits takes a mask and a compare.
    let nan = x.is_nan();
    let x = x.to_bits();
    let rounded = x.wrapping_add(0x7fff + ((x >> 16) & 1)) >> 16;
    (if nan { (x >> 16) | 0x0040 } else { rounded }) as u16
}

/// Decodes `dst.len()` elements of `dtype` from `src` into `dst`; `tmp`
/// holds F16 bits when `src` is not 2-byte aligned.
#[inline(always)]
pub(super) fn decode(src: &[u8], dtype: DType, dst: &mut [f32], tmp: &mut Vec<u16>) {
    match dtype {
        DType::F32 => {
            for (d, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        DType::BF16 => {
            for (d, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = bf16_to_f32(u16::from_le_bytes([b[0], b[1]]));
            }
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `f16c` says the CPU has F16C.
        DType::F16 if f16c() => unsafe { f16c::decode(src, dst) },
        DType::F16 => match bytemuck::try_cast_slice::<u8, f16>(src) {
            Ok(h) => h.convert_to_f32_slice(dst),
            Err(_) => {
                tmp.clear();
                tmp.extend(
                    src.chunks_exact(2)
                        .map(|b| u16::from_le_bytes([b[0], b[1]])),
                );
                bytemuck::cast_slice::<u16, f16>(tmp).convert_to_f32_slice(dst);
            }
        },
        // The backends only take the three kernel dtypes (`dtype_code`).
        _ => dst.fill(f32::NAN),
    }
}

/// Encodes `src` into `dst` (elements of `dtype`); `tmp` as in [`decode`].
#[inline(always)]
pub(super) fn encode(src: &[f32], dst: &mut [u8], dtype: DType, tmp: &mut Vec<u16>) {
    match dtype {
        DType::F32 => {
            for (d, &x) in dst.chunks_exact_mut(4).zip(src) {
                d.copy_from_slice(&x.to_le_bytes());
            }
        }
        DType::BF16 => {
            for (d, &x) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&bf16_bits(x).to_le_bytes());
            }
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `decode`.
        DType::F16 if f16c() => unsafe { f16c::encode(src, dst) },
        DType::F16 => match bytemuck::try_cast_slice_mut::<u8, f16>(dst) {
            Ok(h) => h.convert_from_f32_slice(src),
            Err(_) => {
                tmp.clear();
                tmp.resize(src.len(), 0);
                bytemuck::cast_slice_mut::<u16, f16>(tmp).convert_from_f32_slice(src);
                for (d, &h) in dst.chunks_exact_mut(2).zip(tmp.iter()) {
                    d.copy_from_slice(&h.to_le_bytes());
                }
            }
        },
        _ => {}
    }
}

/// Whether the tier the loops run has AVX2 (and F16C, which the AVX2 and
/// AVX-512 tiers require).
#[inline(always)]
pub(super) fn avx2() -> bool {
    cfg!(target_arch = "x86_64") && isa() >= Isa::Avx2
}

/// Whether the tier the loops run converts F16 with F16C: [`avx2`].
#[inline(always)]
pub(super) fn f16c() -> bool {
    avx2()
}

/// F16 conversions by F16C, 8 elements an instruction. `#[inline]` with
/// F16C enabled: they inline into the AVX2 and AVX-512 copies of a loop
/// (which enable F16C), and are only called where [`f16c`] holds.
#[cfg(target_arch = "x86_64")]
pub(super) mod f16c {
    use std::arch::x86_64::{
        __m256, _mm_loadu_si128, _mm_storeu_si128, _mm256_add_ps, _mm256_cvtph_ps, _mm256_cvtps_ph,
        _mm256_loadu_ps, _mm256_mul_ps, _mm256_set1_ps, _mm256_setzero_ps, _mm256_storeu_ps,
        _mm256_sub_ps,
    };

    /// `_mm256_cvtps_ph`'s rounding: to nearest even, as `half` and WGSL.
    const NEAREST: i32 = 0;

    /// Eight little-endian F16 elements as f32.
    ///
    /// # Safety
    /// The CPU has F16C.
    #[target_feature(enable = "avx,f16c")]
    #[inline]
    unsafe fn to_f32x8(c: &[u8; 16]) -> [f32; 8] {
        let mut d = [0f32; 8];
        // SAFETY: 8 f32 out, unaligned; F16C is the caller's.
        unsafe { _mm256_storeu_ps(d.as_mut_ptr(), load_f16x8(c)) };
        d
    }

    /// Eight little-endian F16 elements as f32, in a register.
    ///
    /// # Safety
    /// The CPU has F16C.
    #[target_feature(enable = "avx,f16c")]
    #[inline]
    unsafe fn load_f16x8(c: &[u8; 16]) -> __m256 {
        // SAFETY: 16 bytes in, unaligned.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(c.as_ptr().cast())) }
    }

    /// Eight f32 as little-endian F16 elements.
    ///
    /// # Safety
    /// The CPU has F16C.
    #[target_feature(enable = "avx,f16c")]
    #[inline]
    unsafe fn to_f16x8(c: &[f32; 8]) -> [u8; 16] {
        let mut d = [0u8; 16];
        // SAFETY: 8 f32 in, 16 bytes out, unaligned.
        unsafe {
            let v = _mm256_cvtps_ph::<NEAREST>(_mm256_loadu_ps(c.as_ptr()));
            _mm_storeu_si128(d.as_mut_ptr().cast(), v);
        }
        d
    }

    /// `N` little-endian F16 elements as f32 (`N` a multiple of 8).
    ///
    /// # Safety
    /// The CPU has F16C.
    #[target_feature(enable = "avx,f16c")]
    #[inline]
    pub(in crate::compute::cpu) unsafe fn lanes<const N: usize>(x: &[[u8; 2]; N]) -> [f32; N] {
        let mut out = [0f32; N];
        let x: &[u8] = x.as_flattened();
        for (c, d) in x.as_chunks().0.iter().zip(out.as_chunks_mut().0) {
            // SAFETY: the caller's.
            *d = unsafe { to_f32x8(c) };
        }
        out
    }

    /// Decodes `dst.len()` F16 elements from `src`.
    ///
    /// # Safety
    /// The CPU has F16C.
    #[target_feature(enable = "avx,f16c")]
    #[inline]
    pub(super) unsafe fn decode(src: &[u8], dst: &mut [f32]) {
        let (whole, rest) = src[..dst.len() * 2].as_chunks::<16>();
        let (head, tail) = dst.split_at_mut(whole.len() * 8);
        for (c, d) in whole.iter().zip(head.as_chunks_mut().0) {
            // SAFETY: the caller's.
            *d = unsafe { to_f32x8(c) };
        }
        if !tail.is_empty() {
            let mut c = [0u8; 16];
            c[..rest.len()].copy_from_slice(rest);
            // SAFETY: the caller's.
            tail.copy_from_slice(&unsafe { to_f32x8(&c) }[..tail.len()]);
        }
    }

    /// `acc[j] = Σᵢ w[i]·(xᵢ[j] − b[j])`, or `Σᵢ w[i]·xᵢ[j]` without a base,
    /// summed from 0 in model order (the reference's operations for an
    /// unthinned linear merge), over F16 models `xs` (`2 · acc.len()` bytes
    /// each). In vector registers: the compiler's vectorisation of the
    /// all-models loop shuffles F16C's results lane by lane.
    ///
    /// # Safety
    /// The CPU has F16C.
    #[target_feature(enable = "avx,f16c")]
    #[inline]
    pub(in crate::compute::cpu) unsafe fn weighted_sum<const M: usize>(
        xs: [&[u8]; M],
        b: Option<&[f32]>,
        w: [f32; M],
        acc: &mut [f32],
    ) {
        let n = acc.len();
        let xs = xs.map(|x| x[..2 * n].as_chunks::<16>());
        let b = b.map(|b| b[..n].as_chunks::<8>());
        let (head, tail) = acc.as_chunks_mut::<8>();
        let w = w.map(|w| _mm256_set1_ps(w));
        // SAFETY (every block below): the caller's.
        let eight = |x: [&[u8; 16]; M], b: Option<&[f32; 8]>| -> __m256 {
            unsafe {
                let mut sum = _mm256_setzero_ps();
                for i in 0..M {
                    let mut d = load_f16x8(x[i]);
                    if let Some(b) = b {
                        d = _mm256_sub_ps(d, _mm256_loadu_ps(b.as_ptr()));
                    }
                    sum = _mm256_add_ps(sum, _mm256_mul_ps(w[i], d));
                }
                sum
            }
        };
        for (c, a) in head.iter_mut().enumerate() {
            let sum = eight(xs.map(|x| &x.0[c]), b.map(|b| &b.0[c]));
            unsafe { _mm256_storeu_ps(a.as_mut_ptr(), sum) };
        }
        if !tail.is_empty() {
            // The last few elements, padded to eight.
            let r = tail.len();
            let x: [[u8; 16]; M] = std::array::from_fn(|i| {
                let mut c = [0u8; 16];
                c[..2 * r].copy_from_slice(xs[i].1);
                c
            });
            let bt = b.map(|b| {
                let mut c = [0f32; 8];
                c[..r].copy_from_slice(b.1);
                c
            });
            let mut out = [0f32; 8];
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), eight(x.each_ref(), bt.as_ref())) };
            tail.copy_from_slice(&out[..r]);
        }
    }

    /// Encodes `src` into `dst` as F16 elements.
    ///
    /// # Safety
    /// The CPU has F16C.
    #[target_feature(enable = "avx,f16c")]
    #[inline]
    pub(super) unsafe fn encode(src: &[f32], dst: &mut [u8]) {
        let (whole, rest) = src.as_chunks::<8>();
        let (head, tail) = dst[..src.len() * 2].split_at_mut(whole.len() * 16);
        for (c, d) in whole.iter().zip(head.as_chunks_mut().0) {
            // SAFETY: the caller's.
            *d = unsafe { to_f16x8(c) };
        }
        if !rest.is_empty() {
            let mut c = [0f32; 8];
            c[..rest.len()].copy_from_slice(rest);
            // SAFETY: the caller's.
            tail.copy_from_slice(&unsafe { to_f16x8(&c) }[..tail.len()]);
        }
    }
}

/// Calls `f` with the index of each nonzero byte of `flags`, in order:
/// eight at a time, since most words are zero and a set byte's index is its
/// word's trailing zeros over eight.
#[inline(always)]
pub(super) fn for_each_set(flags: &[u8], mut f: impl FnMut(usize)) {
    let words = flags.chunks_exact(8);
    let tail = words.remainder();
    for (j, word) in words.enumerate() {
        let mut bits = u64::from_le_bytes([
            word[0], word[1], word[2], word[3], word[4], word[5], word[6], word[7],
        ]);
        while bits != 0 {
            f(j * 8 + (bits.trailing_zeros() / 8) as usize);
            bits &= bits - 1;
        }
    }
    let done = flags.len() - tail.len();
    for (j, &b) in tail.iter().enumerate() {
        if b != 0 {
            f(done + j);
        }
    }
}

/// Calls `f` with the index of each set bit of `bits` (bit `j % 8` of
/// byte `j / 8`), in order: eight bytes at a time, since most are zero.
#[inline(always)]
pub(super) fn for_each_bit(bits: &[u8], mut f: impl FnMut(usize)) {
    let (words, tail) = bits.as_chunks::<8>();
    let tail_words = tail.iter().rev().fold(0u64, |w, &b| w << 8 | u64::from(b));
    let all = words
        .iter()
        .map(|w| u64::from_le_bytes(*w))
        .chain([tail_words]);
    for (k, mut w) in all.enumerate() {
        while w != 0 {
            f(k * 64 + w.trailing_zeros() as usize);
            w &= w - 1;
        }
    }
}

/// The instruction sets the chunk loops are compiled for, narrowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Isa {
    /// The build's target baseline (SSE2 on x86-64).
    Baseline,
    /// AVX2, FMA and F16C.
    Avx2,
    /// AVX-512 F, BW, VL and DQ, besides AVX2, FMA and F16C.
    Avx512,
}

impl Isa {
    /// Every tier, narrowest first.
    #[cfg(test)]
    pub(super) const ALL: [Isa; 3] = [Isa::Baseline, Isa::Avx2, Isa::Avx512];

    /// The widest tier this CPU has.
    pub(super) fn detected() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") && has!("f16c") {
                if has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512dq") {
                    return Isa::Avx512;
                }
                return Isa::Avx2;
            }
        }
        Isa::Baseline
    }

    /// The tier `THETA_CPU_ISA` names (`baseline`, `avx2`, `avx512`), capped
    /// at what the CPU has; unset, the widest the CPU has.
    fn from_env() -> Isa {
        let best = Isa::detected();
        let asked = match std::env::var("THETA_CPU_ISA") {
            Err(_) => return best,
            Ok(v) => v,
        };
        let isa = match asked.trim() {
            "baseline" => Isa::Baseline,
            "avx2" => Isa::Avx2,
            "avx512" => Isa::Avx512,
            other => {
                eprintln!("THETA_CPU_ISA={other} is not baseline, avx2 or avx512: using {best:?}");
                return best;
            }
        };
        if isa > best {
            eprintln!("THETA_CPU_ISA={asked}: this CPU has at most {best:?}");
        }
        isa.min(best)
    }
}

#[cfg(test)]
thread_local! {
    /// A tier forced on this thread (tests: see [`on_every_isa`]).
    static FORCED: std::cell::Cell<Option<Isa>> = const { std::cell::Cell::new(None) };
}

/// The tier the chunk loops run: [`Isa::detected`] or `THETA_CPU_ISA`, read
/// once per process.
#[inline]
pub(super) fn isa() -> Isa {
    #[cfg(test)]
    if let Some(isa) = FORCED.with(std::cell::Cell::get) {
        return isa;
    }
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(Isa::from_env)
}

/// Runs `body` once per tier this CPU has, each on its own rayon pool
/// whose threads run that tier, so tests in parallel do not race on it.
#[cfg(test)]
pub(super) fn on_every_isa(body: impl Fn(Isa) + Sync) {
    for isa in Isa::ALL.into_iter().filter(|&i| i <= Isa::detected()) {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .start_handler(move |_| FORCED.with(|f| f.set(Some(isa))))
            .build()
            .expect("a rayon pool");
        pool.install(|| body(isa));
    }
}

/// Defines `fn NAME(args) -> R { BODY }` three times, compiled for AVX-512
/// (F, BW, VL, DQ), for AVX2 (with FMA and F16C) and for the build's
/// baseline, and runs the copy [`isa`] names. What BODY calls must be
/// `#[inline(always)]` to land in each copy. Rust never contracts
/// `a * b + c` into an FMA nor reorders float operations, so every copy
/// gives the same bits.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn imp($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                use $crate::compute::cpu::lanes::{isa, Isa};
                // `unsafe fn`: safe `#[target_feature]` functions need Rust 1.86.
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    imp($($arg),*)
                }
                #[target_feature(enable = "avx2,fma,f16c")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    imp($($arg),*)
                }
                match isa() {
                    // SAFETY: `isa` names no tier the CPU lacks.
                    Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: as above.
                    Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    Isa::Baseline => {}
                }
            }
            imp($($arg),*)
        }
    };
}
pub(super) use multiversion;

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    #[test]
    fn bf16_encode_matches_half_on_every_rounding_case() {
        for hi in 0..=u16::MAX as u32 {
            for lo in [0, 1, 0x3fff, 0x4000, 0x7fff, 0x8000, 0x8001, 0xc000, 0xffff] {
                let x = f32::from_bits(hi << 16 | lo);
                assert_eq!(
                    bf16_bits(x),
                    bf16::from_f32(x).to_bits(),
                    "{:#x}",
                    x.to_bits()
                );
            }
        }
    }

    #[test]
    fn decode_encode_match_half_aligned_or_not() {
        on_every_isa(|_| decode_encode_match_half_on_this_isa());
    }

    fn decode_encode_match_half_on_this_isa() {
        let xs: Vec<f32> = (0..1000u32)
            .map(|i| f32::from_bits(super::super::super::ops::mix32(i)))
            .chain([
                0.0,
                -0.0,
                f32::INFINITY,
                f32::NEG_INFINITY,
                f32::NAN,
                65504.0,
                1e-8,
            ])
            .collect();
        let mut tmp = Vec::new();
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let s = dtype.size();
            let mut want = vec![0u8; xs.len() * s];
            crate::convert::encode_chunk(&xs, &mut want, dtype);
            // One byte of offset makes the slices unaligned.
            for off in [0, 1] {
                let mut buf = vec![0u8; xs.len() * s + 1];
                encode(&xs, &mut buf[off..off + xs.len() * s], dtype, &mut tmp);
                assert_eq!(&buf[off..off + xs.len() * s], &want[..], "{dtype} encode");
                let mut got = vec![0f32; xs.len()];
                decode(&buf[off..off + xs.len() * s], dtype, &mut got, &mut tmp);
                let mut back = vec![0f32; xs.len()];
                crate::convert::decode_chunk(&want, dtype, &mut back);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&back), "{dtype} decode");
            }
        }
        // Every F16 bit pattern (NaN payloads, subnormals), at an odd length
        // and offset so that the last few go through the padded tail.
        let all: Vec<u8> = (0..=u16::MAX).flat_map(u16::to_le_bytes).collect();
        for (off, n) in [(0, 65536), (2, 65533)] {
            let mut got = vec![0f32; n];
            decode(&all[off..off + 2 * n], DType::F16, &mut got, &mut tmp);
            for (j, g) in got.iter().enumerate() {
                let h = (off / 2 + j) as u16;
                let want = f16::from_bits(h).to_f32();
                assert_eq!(g.to_bits(), want.to_bits(), "F16 {h:#06x}");
            }
        }
    }
}

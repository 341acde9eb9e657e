//! Update kinds: how one step of a tensor's chain turns the bytes of the
//! steps before it into new bytes.
//!
//! Every kind is an [`Update`] registered in [`ALL`] and named in the
//! manifest (`"update": "sparse"`), like the encodings of [`super::codec`]:
//! a new kind is one new type here, not a match spread through the code.
//! Rebuilding a tensor ([`super::smudge::read_tensor`]) decodes the dense
//! base and applies each later step in order, one chunk of rows at a time.
//! The payload formats are specified in `docs/manifest.md`.

use theta_engine::DType;

pub use super::lowrank::{Ia3, LowRank};

/// The tensor a step applies to.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    /// Its name (for messages).
    pub name: &'a str,
    /// Its dtype.
    pub dtype: DType,
    /// Its shape.
    pub shape: &'a [u64],
}

impl Target<'_> {
    /// Elements per row (the product of every dimension but the first; 1 for
    /// a vector, and for a scalar).
    pub fn row_len(&self) -> u64 {
        self.shape.iter().skip(1).product()
    }

    /// Rows (the first dimension; 1 for a scalar).
    pub fn rows(&self) -> u64 {
        self.shape.first().copied().unwrap_or(1)
    }
}

/// One kind of update step.
pub trait Update: Sync {
    /// The name written in manifests.
    fn name(&self) -> &'static str;
    /// Whether a step has one object per chunk of the tensor (object `i`
    /// applies to chunk `i`), rather than objects every chunk reads.
    fn per_chunk(&self) -> bool;
    /// Applies the step to `dense`, the current bytes of rows `row0..` of
    /// `t`. `payload` holds the chunk's object (per-chunk kinds) or all the
    /// step's objects, decoded.
    fn apply(
        &self,
        t: &Target<'_>,
        row0: u64,
        payload: &[&[u8]],
        dense: &mut [u8],
    ) -> Result<(), String>;
}

/// The objects are the bytes: a snapshot, the first step of every chain.
pub struct Dense;

impl Update for Dense {
    fn name(&self) -> &'static str {
        super::manifest::DENSE
    }

    fn per_chunk(&self) -> bool {
        true
    }

    fn apply(
        &self,
        _: &Target<'_>,
        _: u64,
        payload: &[&[u8]],
        dense: &mut [u8],
    ) -> Result<(), String> {
        match payload {
            [p] if p.len() == dense.len() => {
                dense.copy_from_slice(p);
                Ok(())
            }
            _ => Err(format!(
                "a dense object must hold the chunk's {} bytes",
                dense.len()
            )),
        }
    }
}

/// Changed elements only: their positions and new values, exact.
///
/// A chunk's object is either the chunk's bytes themselves (when that is no
/// larger: the object's length equals the chunk's) or, strictly shorter, a
/// list: the count (u64 LE), the positions in the chunk as LEB128 gaps (the
/// first position, then each position minus the previous one minus 1), then
/// the new elements' bytes in order.
pub struct Sparse;

impl Sparse {
    /// The object for a chunk that changed from `old` to `new` (elements of
    /// `esize` bytes): the list, or `new` itself when the list is not
    /// shorter. Returns the object and the number of changed elements.
    pub fn encode(old: &[u8], new: &[u8], esize: usize, force_list: bool) -> (Vec<u8>, u64) {
        let mut gaps = Vec::new();
        let mut values = Vec::new();
        let mut count = 0u64;
        let mut next = 0u64;
        let limit = if force_list { usize::MAX } else { new.len() };
        for (i, (o, n)) in old
            .chunks_exact(esize)
            .zip(new.chunks_exact(esize))
            .enumerate()
        {
            if o == n {
                continue;
            }
            let i = i as u64;
            leb128(&mut gaps, i - next);
            next = i + 1;
            values.extend_from_slice(n);
            count += 1;
            if 8 + gaps.len() + values.len() >= limit {
                return (new.to_vec(), count);
            }
        }
        let mut out = Vec::with_capacity(8 + gaps.len() + values.len());
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&gaps);
        out.extend_from_slice(&values);
        (out, count)
    }
}

fn leb128(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn read_leb128(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at)?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

impl Update for Sparse {
    fn name(&self) -> &'static str {
        "sparse"
    }

    fn per_chunk(&self) -> bool {
        true
    }

    fn apply(
        &self,
        t: &Target<'_>,
        _: u64,
        payload: &[&[u8]],
        dense: &mut [u8],
    ) -> Result<(), String> {
        let [p] = payload else {
            return Err("a sparse step needs one object per chunk".into());
        };
        if p.len() == dense.len() {
            dense.copy_from_slice(p);
            return Ok(());
        }
        let esize = t.dtype.size();
        let elements = (dense.len() / esize) as u64;
        let bad = |m: &str| format!("sparse object: {m}");
        let count = u64::from_le_bytes(
            p.get(..8)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| bad("shorter than its count"))?,
        );
        let values_len = count
            .checked_mul(esize as u64)
            .filter(|&n| n <= p.len() as u64 - 8)
            .ok_or_else(|| bad("count larger than the object"))? as usize;
        let values = &p[p.len() - values_len..];
        let gaps_end = p.len() - values_len;
        let mut at = 8;
        let mut next = 0u64;
        for v in values.chunks_exact(esize) {
            let gap =
                read_leb128(&p[..gaps_end], &mut at).ok_or_else(|| bad("truncated positions"))?;
            let i = next
                .checked_add(gap)
                .filter(|&i| i < elements)
                .ok_or_else(|| bad("position past the chunk's end"))?;
            let start = i as usize * esize;
            dense[start..start + esize].copy_from_slice(v);
            next = i + 1;
        }
        if at != gaps_end {
            return Err(bad("positions and values do not add up"));
        }
        Ok(())
    }
}

/// Every known update kind.
pub static ALL: &[&dyn Update] = &[&Dense, &Sparse, &LowRank, &Ia3];

/// Looks an update kind up by its manifest name.
pub fn by_name(name: &str) -> Option<&'static dyn Update> {
    ALL.iter().copied().find(|u| u.name() == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(shape: &[u64]) -> Target<'_> {
        Target {
            name: "w",
            dtype: DType::BF16,
            shape,
        }
    }

    #[test]
    fn sparse_round_trips_and_falls_back_to_bytes() {
        let old: Vec<u8> = (0..2000u32).map(|i| (i % 251) as u8).collect();
        let mut new = old.clone();
        for i in [0usize, 2, 300, 1998] {
            new[i] ^= 0xff;
        }
        let (obj, count) = Sparse::encode(&old, &new, 2, false);
        assert_eq!(count, 4);
        assert!(obj.len() < 30, "{}", obj.len());
        let mut rebuilt = old.clone();
        let shape = [1000];
        Sparse
            .apply(&target(&shape), 0, &[&obj], &mut rebuilt)
            .expect("apply");
        assert_eq!(rebuilt, new);
        // Everything changed: the object is the bytes.
        let all: Vec<u8> = old.iter().map(|b| b ^ 1).collect();
        let (obj, _) = Sparse::encode(&old, &all, 2, false);
        assert_eq!(obj, all);
        let mut rebuilt = old.clone();
        Sparse
            .apply(&target(&shape), 0, &[&obj], &mut rebuilt)
            .expect("apply");
        assert_eq!(rebuilt, all);
        // Unchanged: an empty list.
        let (obj, count) = Sparse::encode(&old, &old, 2, false);
        assert_eq!((obj.len(), count), (8, 0));
    }

    #[test]
    fn hostile_sparse_objects_are_errors() {
        let shape = [4];
        let mut dense = vec![0u8; 8];
        for bad in [
            &b"\x01\0\0"[..],
            b"\xff\xff\xff\xff\xff\xff\xff\xff\0\0",
            b"\x01\0\0\0\0\0\0\0\x09\0\0",
            b"\x01\0\0\0\0\0\0\0\x80\x80\0\0",
        ] {
            assert!(
                Sparse
                    .apply(&target(&shape), 0, &[bad], &mut dense)
                    .is_err()
            );
        }
    }

    #[test]
    fn every_kind_is_found_by_name() {
        for u in ALL {
            assert_eq!(by_name(u.name()).map(|u| u.name()), Some(u.name()));
        }
        assert!(by_name("from-the-future").is_none());
    }
}

//! Object encodings: how a tensor chunk's bytes are stored as an object.
//!
//! Every encoding is a [`Codec`] registered in [`ALL`] and named in the
//! manifest (`"encoding": "raw"`), so later encodings (lossless compression,
//! XOR deltas) are one new type here, not a match spread through the code.

use std::borrow::Cow;

/// One way of storing bytes as an object.
pub trait Codec: Sync {
    /// The name written in manifests.
    fn name(&self) -> &'static str;
    /// The object bytes for `raw` tensor bytes.
    fn encode<'a>(&self, raw: &'a [u8]) -> Cow<'a, [u8]>;
    /// The tensor bytes of a stored object, which must be `raw_len` long.
    fn decode<'a>(&self, stored: &'a [u8], raw_len: u64) -> Result<Cow<'a, [u8]>, String>;
}

/// The bytes as they are: the object is the tensor chunk itself.
pub struct Raw;

impl Codec for Raw {
    fn name(&self) -> &'static str {
        "raw"
    }

    fn encode<'a>(&self, raw: &'a [u8]) -> Cow<'a, [u8]> {
        Cow::Borrowed(raw)
    }

    fn decode<'a>(&self, stored: &'a [u8], raw_len: u64) -> Result<Cow<'a, [u8]>, String> {
        if stored.len() as u64 == raw_len {
            Ok(Cow::Borrowed(stored))
        } else {
            Err(format!(
                "raw object of {} bytes where {raw_len} were expected",
                stored.len()
            ))
        }
    }
}

/// Every known encoding.
pub static ALL: &[&dyn Codec] = &[&Raw];

/// The encoding new objects are written with.
pub fn default_codec() -> &'static dyn Codec {
    &Raw
}

/// Looks an encoding up by its manifest name.
pub fn by_name(name: &str) -> Option<&'static dyn Codec> {
    ALL.iter().copied().find(|c| c.name() == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_codec_round_trips_and_is_found_by_name() {
        let data = b"0123456789abcdef";
        for c in ALL {
            let stored = c.encode(data);
            let back = c.decode(&stored, data.len() as u64).expect("decode");
            assert_eq!(&back[..], data);
            assert_eq!(by_name(c.name()).map(|c| c.name()), Some(c.name()));
        }
        assert!(by_name("zstd-from-the-future").is_none());
        assert!(Raw.decode(b"abc", 4).is_err());
    }
}

//! Parsing and validation of the safetensors JSON header.
//!
//! The parser never trusts a number in the file before checking it: sizes are
//! multiplied with overflow checks, offsets are compared with the real length
//! of the data section, and nothing is allocated by a size the file merely
//! claims (the header itself is limited to [`MAX_HEADER_LEN`] bytes, already
//! mapped).

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, MapAccess, Visitor};

use crate::DType;
use crate::error::FormatProblem;
use crate::tensor::{Metadata, TensorInfo};

/// Largest header accepted, as in the reference implementation (100 MB).
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// One tensor entry of a header, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Name, dtype and shape.
    pub info: TensorInfo,
    /// Start of its bytes, relative to the data section.
    pub begin: u64,
    /// End of its bytes (exclusive), relative to the data section.
    pub end: u64,
}

/// A parsed and validated header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// `__metadata__`, in file order; empty when absent.
    pub metadata: Metadata,
    /// Tensor entries, sorted by their offsets (the order of their bytes).
    pub entries: Vec<Entry>,
}

/// A problem found while parsing, with the tensor it concerns.
pub type Problem = (Option<String>, FormatProblem);

/// Parses a whole safetensors file held in memory (or mapped): the 8-byte
/// length prefix, the JSON header and the data section's layout. Returns the
/// header's length in bytes and the validated header. No tensor bytes are
/// read or copied, and nothing is allocated by a size the file claims.
pub fn parse_file(bytes: &[u8]) -> Result<(usize, Header), Problem> {
    let len = bytes.len() as u64;
    let Some((prefix, rest)) = bytes.split_first_chunk::<8>() else {
        return Err((None, FormatProblem::TooShort { len }));
    };
    let claimed = u64::from_le_bytes(*prefix);
    if claimed > MAX_HEADER_LEN {
        let problem = FormatProblem::HeaderTooLarge {
            claimed,
            limit: MAX_HEADER_LEN,
        };
        return Err((None, problem));
    }
    let available = rest.len() as u64;
    if claimed > available {
        return Err((None, FormatProblem::HeaderBeyondFile { claimed, available }));
    }
    // `claimed <= rest.len()`, so it fits in usize.
    let (json, data) = rest.split_at(claimed as usize);
    let header = parse(json, Some(data.len() as u64))?;
    Ok((json.len(), header))
}

/// Parses the JSON header `bytes` of a file whose data section is `data_len`
/// bytes long, and checks that the entries tile the data section exactly.
/// With `data_len` unknown (`None`, a header kept apart from its data), the
/// entries must still tile `[0, end of the last)` without gap or overlap.
pub fn parse(bytes: &[u8], data_len: Option<u64>) -> Result<Header, Problem> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        (
            None,
            FormatProblem::HeaderNotUtf8 {
                valid_up_to: e.valid_up_to(),
            },
        )
    })?;
    let raw = parse_json(text)?;

    let mut seen = HashSet::with_capacity(raw.tensors.len());
    let mut entries = Vec::with_capacity(raw.tensors.len());
    for (name, raw_entry) in raw.tensors {
        if !seen.insert(name.clone()) {
            return Err((Some(name), FormatProblem::DuplicateName));
        }
        let entry = check_entry(&name, raw_entry, data_len).map_err(|p| (Some(name), p))?;
        entries.push(entry);
    }
    entries.sort_by_key(|e| (e.begin, e.end));
    check_tiling(&entries, data_len)?;
    Ok(Header {
        metadata: raw.metadata.unwrap_or_default(),
        entries,
    })
}

fn check_entry(name: &str, raw: RawEntry, data_len: Option<u64>) -> Result<Entry, FormatProblem> {
    let dtype: DType = raw
        .dtype
        .parse()
        .map_err(|_| FormatProblem::UnknownDType(raw.dtype.clone()))?;
    let info = TensorInfo::new(name, dtype, raw.shape);
    let expected = info
        .checked_nbytes()
        .ok_or_else(|| FormatProblem::ShapeOverflow {
            shape: info.shape.clone(),
        })?;
    let (begin, end) = raw.data_offsets;
    if end < begin {
        return Err(FormatProblem::ReversedOffsets { begin, end });
    }
    if end - begin != expected {
        return Err(FormatProblem::SizeMismatch {
            shape: info.shape.clone(),
            dtype,
            expected,
            actual: end - begin,
        });
    }
    if let Some(available) = data_len.filter(|&n| end > n) {
        return Err(FormatProblem::OutOfRange { end, available });
    }
    Ok(Entry { info, begin, end })
}

/// Entries sorted by offset must cover `[0, data_len)` with no overlap and no gap.
fn check_tiling(entries: &[Entry], data_len: Option<u64>) -> Result<(), Problem> {
    let mut cursor = 0u64;
    let mut last: Option<&Entry> = None;
    for e in entries {
        if e.begin < cursor {
            let other = last.map(|l| l.info.name.clone()).unwrap_or_default();
            let problem = FormatProblem::Overlap {
                begin: e.begin,
                end: e.end,
                other,
            };
            return Err((Some(e.info.name.clone()), problem));
        }
        if e.begin > cursor {
            let problem = FormatProblem::Gap {
                begin: cursor,
                end: e.begin,
            };
            return Err((Some(e.info.name.clone()), problem));
        }
        cursor = e.end;
        if e.end > e.begin {
            last = Some(e);
        }
    }
    if let Some(n) = data_len.filter(|&n| cursor < n) {
        return Err((None, FormatProblem::TrailingBytes { extra: n - cursor }));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

struct RawHeader {
    metadata: Option<Metadata>,
    tensors: Vec<(String, RawEntry)>,
}

fn parse_json(text: &str) -> Result<RawHeader, Problem> {
    let current = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = HeaderSeed { current: &current }
        .deserialize(&mut de)
        .and_then(|h| de.end().map(|()| h));
    parsed.map_err(|e| (current.take(), FormatProblem::HeaderJson(e.to_string())))
}

/// Deserializes the top-level object in order, remembering the key being
/// read so that an error can name its tensor. Duplicates are kept here and
/// rejected by [`parse`], which can say which name repeats.
struct HeaderSeed<'a> {
    current: &'a RefCell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for HeaderSeed<'_> {
    type Value = RawHeader;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<RawHeader, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for HeaderSeed<'_> {
    type Value = RawHeader;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object of tensor entries")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawHeader, A::Error> {
        let mut header = RawHeader {
            metadata: None,
            tensors: Vec::new(),
        };
        while let Some(key) = map.next_key::<String>()? {
            *self.current.borrow_mut() = Some(key.clone());
            if key == "__metadata__" {
                if header.metadata.is_some() {
                    return Err(de::Error::custom("`__metadata__` appears more than once"));
                }
                header.metadata = Some(map.next_value::<OrderedStrings>()?.0);
            } else {
                let entry = map.next_value::<RawEntry>()?;
                header.tensors.push((key, entry));
            }
        }
        *self.current.borrow_mut() = None;
        Ok(header)
    }
}

/// A JSON object of string values, kept in file order.
struct OrderedStrings(Metadata);

impl<'de> Deserialize<'de> for OrderedStrings {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OrderedStrings;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`__metadata__` as an object of string values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedStrings, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, String>()? {
                    out.push((k, v));
                }
                Ok(OrderedStrings(out))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry_json(name: &str, dtype: &str, shape: &str, b: u64, e: u64) -> String {
        format!(r#""{name}":{{"dtype":"{dtype}","shape":{shape},"data_offsets":[{b},{e}]}}"#)
    }

    #[test]
    fn parses_in_offset_order_with_metadata() {
        let json = format!(
            "{{\"__metadata__\":{{\"z\":\"1\",\"a\":\"2\"}},{},{}}}",
            entry_json("b", "F32", "[2]", 8, 16),
            entry_json("a", "BF16", "[2,2]", 0, 8)
        );
        let h = parse(json.as_bytes(), Some(16)).expect("valid");
        assert_eq!(
            h.metadata,
            vec![("z".into(), "1".into()), ("a".into(), "2".into())]
        );
        let names: Vec<_> = h.entries.iter().map(|e| e.info.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn json_error_names_the_tensor() {
        let json = r#"{"w":{"dtype":"F32","shape":[1]}}"#;
        let (tensor, problem) = parse(json.as_bytes(), Some(4)).expect_err("missing field");
        assert_eq!(tensor.as_deref(), Some("w"));
        assert!(matches!(problem, FormatProblem::HeaderJson(m) if m.contains("data_offsets")));
    }

    #[test]
    fn empty_tensors_are_fine_anywhere() {
        let json = format!(
            "{{{},{},{}}}",
            entry_json("e", "F32", "[0,3]", 4, 4),
            entry_json("x", "F32", "[1]", 0, 4),
            entry_json("s", "F16", "[]", 4, 6),
        );
        let h = parse(json.as_bytes(), Some(6)).expect("valid");
        assert_eq!(h.entries.len(), 3);
    }
}

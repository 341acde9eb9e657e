//! Streaming safetensors writer: the header is planned from names, dtypes
//! and shapes, then tensors are written one at a time (or in parts), so a
//! file of any size is written holding at most one tensor's bytes.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::file::SafetensorsFile;
use super::header::{self, Entry};
use crate::error::FormatProblem;
use crate::io::AtomicFile;
use crate::tensor::{Metadata, TensorInfo};
use crate::{Error, Result};

/// The layout of a safetensors file before its bytes exist: the exact header
/// bytes and where each tensor's bytes go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderPlan {
    header: Vec<u8>,
    entries: Vec<Entry>,
}

impl HeaderPlan {
    /// Plans a new file holding `tensors` in the given order, with
    /// `metadata` as `__metadata__` (omitted when empty). The header is
    /// compact JSON padded with spaces to a multiple of 8 bytes, as the
    /// reference implementation writes it.
    pub fn new(
        tensors: &[TensorInfo],
        metadata: &Metadata,
    ) -> Result<Self, (Option<String>, FormatProblem)> {
        let mut seen = HashSet::with_capacity(tensors.len());
        let mut json = String::from("{");
        if !metadata.is_empty() {
            json.push_str("\"__metadata__\":{");
            for (i, (k, v)) in metadata.iter().enumerate() {
                if i > 0 {
                    json.push(',');
                }
                push_json_str(&mut json, k);
                json.push(':');
                push_json_str(&mut json, v);
            }
            json.push('}');
        }
        let mut entries = Vec::with_capacity(tensors.len());
        let mut offset = 0u64;
        for t in tensors {
            let bad = |p| (Some(t.name.clone()), p);
            if t.name == "__metadata__" || !seen.insert(t.name.as_str()) {
                return Err(bad(FormatProblem::DuplicateName));
            }
            let n = t.checked_nbytes().ok_or_else(|| {
                bad(FormatProblem::ShapeOverflow {
                    shape: t.shape.clone(),
                })
            })?;
            let end = offset.checked_add(n).ok_or_else(|| {
                bad(FormatProblem::ShapeOverflow {
                    shape: t.shape.clone(),
                })
            })?;
            if json.len() > 1 {
                json.push(',');
            }
            push_json_str(&mut json, &t.name);
            json.push_str(":{\"dtype\":\"");
            json.push_str(t.dtype.name());
            json.push_str("\",\"shape\":[");
            for (i, d) in t.shape.iter().enumerate() {
                if i > 0 {
                    json.push(',');
                }
                json.push_str(&d.to_string());
            }
            json.push_str(&format!("],\"data_offsets\":[{offset},{end}]}}"));
            entries.push(Entry {
                info: t.clone(),
                begin: offset,
                end,
            });
            offset = end;
        }
        json.push('}');
        while json.len() % 8 != 0 {
            json.push(' ');
        }
        if json.len() as u64 > header::MAX_HEADER_LEN {
            let problem = FormatProblem::HeaderTooLarge {
                claimed: json.len() as u64,
                limit: header::MAX_HEADER_LEN,
            };
            return Err((None, problem));
        }
        Ok(HeaderPlan {
            header: json.into_bytes(),
            entries,
        })
    }

    /// The layout of an existing file, so that writing its tensors back
    /// reproduces it byte for byte (header, padding, order, metadata).
    pub fn of_file(file: &SafetensorsFile) -> Self {
        HeaderPlan {
            header: file.header_bytes().to_vec(),
            entries: file.entries().to_vec(),
        }
    }

    /// The layout described by stored header bytes (as kept by a manifest),
    /// validated as a reader would validate them.
    pub fn from_header_bytes(bytes: &[u8]) -> Result<Self, (Option<String>, FormatProblem)> {
        if bytes.len() as u64 > header::MAX_HEADER_LEN {
            let problem = FormatProblem::HeaderTooLarge {
                claimed: bytes.len() as u64,
                limit: header::MAX_HEADER_LEN,
            };
            return Err((None, problem));
        }
        let parsed = header::parse(bytes, None)?;
        Ok(HeaderPlan {
            header: bytes.to_vec(),
            entries: parsed.entries,
        })
    }

    /// The exact header bytes.
    pub fn header_bytes(&self) -> &[u8] {
        &self.header
    }

    /// Tensors in the order their bytes are written.
    pub fn tensors(&self) -> impl ExactSizeIterator<Item = &TensorInfo> {
        self.entries.iter().map(|e| &e.info)
    }

    /// Length of the data section.
    pub fn data_len(&self) -> u64 {
        self.entries.last().map_or(0, |e| e.end)
    }

    /// Length of the whole file.
    pub fn file_len(&self) -> u64 {
        8 + self.header.len() as u64 + self.data_len()
    }
}

fn push_json_str(out: &mut String, s: &str) {
    // Serializing a &str cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

/// Writes a safetensors file tensor by tensor, atomically: the file appears
/// at its path only when [`SafetensorsWriter::finish`] succeeds.
pub struct SafetensorsWriter {
    out: AtomicFile,
    plan: HeaderPlan,
    next: usize,
    filled: u64,
}

impl SafetensorsWriter {
    /// Starts the file at `path` and writes its header.
    pub fn create(path: impl AsRef<Path>, plan: HeaderPlan) -> Result<Self> {
        let mut out = AtomicFile::create(path)?;
        out.write_all(&(plan.header.len() as u64).to_le_bytes())?;
        out.write_all(&plan.header)?;
        Ok(SafetensorsWriter {
            out,
            plan,
            next: 0,
            filled: 0,
        })
    }

    /// The plan being written.
    pub fn plan(&self) -> &HeaderPlan {
        &self.plan
    }

    /// The tensor whose bytes are expected next, if any.
    pub fn next_tensor(&self) -> Option<&TensorInfo> {
        self.plan.entries.get(self.next).map(|e| &e.info)
    }

    /// Writes all of tensor `name`'s bytes. Tensors come in plan order;
    /// empty tensors may be skipped.
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<()> {
        self.write_part(name, data)?;
        if self.filled != 0 {
            return Err(self.misuse(name, "the tensor's bytes were written only in part".into()));
        }
        Ok(())
    }

    /// Writes the next part of tensor `name`'s bytes; the tensor is complete
    /// once its size has been written, and the next one begins.
    pub fn write_part(&mut self, name: &str, part: &[u8]) -> Result<()> {
        let entry = loop {
            let Some(entry) = self.plan.entries.get(self.next) else {
                return Err(self.misuse(name, "all planned tensors were already written".into()));
            };
            if entry.info.name == name {
                break entry;
            }
            if self.filled == 0 && entry.begin == entry.end {
                self.next += 1;
                continue;
            }
            let msg = format!(
                "expected the bytes of `{}` next (tensors are written in plan order)",
                entry.info.name
            );
            return Err(self.misuse(name, msg));
        };
        let size = entry.end - entry.begin;
        let total = self.filled + part.len() as u64;
        if total > size {
            return Err(self.misuse(
                name,
                format!("{total} bytes given for a tensor of {size} bytes"),
            ));
        }
        self.out.write_all(part)?;
        self.filled = total;
        if self.filled == size {
            self.next += 1;
            self.filled = 0;
        }
        Ok(())
    }

    /// Checks that every tensor was written and puts the file in place.
    pub fn finish(self) -> Result<()> {
        let rest = &self.plan.entries[self.next..];
        if let Some(e) = rest.iter().find(|e| e.begin != e.end || self.filled > 0) {
            return Err(self.misuse(&e.info.name, "not written before finish".into()));
        }
        self.out.commit()
    }

    fn misuse(&self, tensor: &str, message: String) -> Error {
        Error::usage(self.target(), Some(tensor), message)
    }

    fn target(&self) -> PathBuf {
        self.out.target().to_path_buf()
    }
}

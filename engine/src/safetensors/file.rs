//! A single safetensors file, memory-mapped.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::header::{self, Entry, Header};
use crate::error::FormatProblem;
use crate::tensor::{Metadata, TensorInfo, TensorView};
use crate::{Error, Result};

/// A safetensors file opened through a read-only memory map.
///
/// Opening reads and validates the header only; tensor bytes are paged in
/// when a view of them is read, so opening a multi-gigabyte file is instant.
/// As with any memory map, the file must not be truncated or rewritten in
/// place while it is open (git-theta itself always writes through a
/// temporary file and a rename).
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: Mmap,
    header_len: usize,
    header: Header,
    infos: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
}

impl SafetensorsFile {
    /// Opens and validates `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        let bad = |tensor: Option<String>, problem| Error::Format {
            path: path.clone(),
            tensor,
            problem,
        };
        if len < 8 {
            return Err(bad(None, FormatProblem::TooShort { len }));
        }
        // SAFETY: the map is read-only; see the type's documentation for the
        // usual caveat about files changed underneath a map.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        let (header_len, header) = header::parse_file(&mmap).map_err(|(t, p)| bad(t, p))?;
        let infos: Vec<TensorInfo> = header.entries.iter().map(|e| e.info.clone()).collect();
        let by_name = infos
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(SafetensorsFile {
            path,
            mmap,
            header_len,
            header,
            infos,
            by_name,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Total length of the file in bytes.
    pub fn len(&self) -> u64 {
        self.mmap.len() as u64
    }

    /// Whether the file is empty (never true for a valid file).
    pub fn is_empty(&self) -> bool {
        self.mmap.is_empty()
    }

    /// The exact JSON header bytes, trailing padding included.
    pub fn header_bytes(&self) -> &[u8] {
        &self.mmap[8..8 + self.header_len]
    }

    /// `__metadata__`, in file order.
    pub fn metadata(&self) -> &Metadata {
        &self.header.metadata
    }

    /// Tensors in the order of their bytes in the file.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.infos
    }

    /// Validated header entries (with offsets), in the order of their bytes.
    pub fn entries(&self) -> &[Entry] {
        &self.header.entries
    }

    /// Looks a tensor up by name.
    pub fn get(&self, name: &str) -> Option<TensorView<'_>> {
        self.by_name.get(name).map(|&i| self.view(i))
    }

    /// The `i`-th tensor in byte order.
    pub fn view(&self, i: usize) -> TensorView<'_> {
        let e = &self.header.entries[i];
        let start = 8 + self.header_len + e.begin as usize;
        TensorView {
            info: &self.infos[i],
            data: &self.mmap[start..start + (e.end - e.begin) as usize],
        }
    }

    /// Drops this process's resident pages of the `i`-th tensor: they stay
    /// in the page cache and fault back in if read again, so a streaming
    /// pass over large files does not accumulate resident memory.
    pub fn release(&self, i: usize) {
        #[cfg(unix)]
        if let Some(e) = self.header.entries.get(i) {
            let start = 8 + self.header_len + e.begin as usize;
            let len = (e.end - e.begin) as usize;
            // SAFETY: the map is read-only and shared with the file, so the
            // dropped pages are read again from the file on the next access:
            // no view's contents change.
            let _ = unsafe {
                self.mmap
                    .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len)
            };
        }
        #[cfg(not(unix))]
        let _ = i;
    }

    /// Looks a tensor up by name, with an error naming the file if absent.
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        self.get(name).ok_or_else(|| Error::NoSuchTensor {
            path: self.path.clone(),
            tensor: name.to_owned(),
        })
    }
}

impl std::fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsFile")
            .field("path", &self.path)
            .field("tensors", &self.infos.len())
            .finish()
    }
}

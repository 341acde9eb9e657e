//! Cleaning: a checkpoint's bytes (as git streams them) into a manifest and
//! objects. The file is read once, one chunk in memory at a time.

use std::collections::HashMap;
use std::io::{self, Cursor, Read, Write};

use theta_engine::compute::{Input, Moments, moments};
use theta_engine::safetensors::header::{self, MAX_HEADER_LEN};
use theta_engine::{DType, TensorInfo};

use super::choose::{self, UpdateOptions};
use super::codec;
use super::manifest::{
    DENSE, FileFormat, Head, MAGIC, Manifest, ObjectRef, Stats, TensorEntry, VERSION, VERSION_DENSE,
};
use super::store::{ObjectSink, StoreError};

/// Default largest object: bigger tensors are split into row-aligned chunks.
pub const DEFAULT_CHUNK_SIZE: u64 = 64 << 20;

/// How to clean.
#[derive(Clone, Debug)]
pub struct CleanOptions {
    /// Largest object in bytes (a single row may exceed it).
    pub chunk_size: u64,
    /// Chunking to reuse, by tensor name: a tensor with the same dtype and
    /// shape as in the previously stored manifest keeps that manifest's
    /// chunking, so that cleaning a checked-out file reproduces the stored
    /// manifest whatever this repository's chunk size setting.
    pub previous: HashMap<String, ChunkHint>,
    /// How changed tensors are stored relative to their previous version
    /// (see [`choose`]).
    pub updates: UpdateOptions,
    /// Whether to compute tensor statistics (`false`: the manifest's
    /// entries have none; for a manifest only compared, never stored).
    pub stats: bool,
}

/// A tensor's chunking in a previous manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkHint {
    /// Its dtype name.
    pub dtype: String,
    /// Its shape.
    pub shape: Vec<u64>,
    /// Its rows per object.
    pub chunk_rows: Option<u64>,
}

impl CleanOptions {
    /// Reuses the chunking of `manifest`'s tensors.
    pub fn with_previous(mut self, manifest: &Manifest) -> Self {
        self.previous = manifest
            .tensors
            .iter()
            .map(|t| {
                let hint = ChunkHint {
                    dtype: t.dtype.clone(),
                    shape: t.shape.clone(),
                    chunk_rows: t.chunk_rows,
                };
                (t.name.clone(), hint)
            })
            .collect();
        self.updates.previous = manifest
            .tensors
            .iter()
            .map(|t| (t.name.clone(), t.clone()))
            .collect();
        self
    }
}

impl CleanOptions {
    /// Rows per object for tensor `info`: the previous manifest's chunking
    /// when the tensor kept its dtype and shape, else from the chunk size.
    pub fn rows_for(&self, info: &TensorInfo) -> Option<u64> {
        let hint = self.previous.get(&info.name).filter(|h| {
            h.dtype == info.dtype.name()
                && h.shape == info.shape
                && h.chunk_rows
                    .is_none_or(|r| r >= 1 && !info.shape.is_empty())
        });
        match hint {
            Some(h) => h.chunk_rows,
            None => chunk_rows(&info.shape, info.nbytes(), self.chunk_size.max(1)),
        }
    }
}

impl Default for CleanOptions {
    fn default() -> Self {
        CleanOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
            previous: HashMap::new(),
            updates: UpdateOptions::default(),
            stats: true,
        }
    }
}

/// What a clean did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CleanSummary {
    /// Objects the manifest refers to.
    pub objects: u64,
    /// Objects written because the store lacked them.
    pub new_objects: u64,
    /// Bytes of those new objects.
    pub new_bytes: u64,
    /// Whether the input was already a manifest, passed through.
    pub passthrough: bool,
}

/// Why a file could not be cleaned.
#[derive(Debug, thiserror::Error)]
pub enum CleanError {
    /// Reading the file failed.
    #[error("reading the file: {0}")]
    Read(io::Error),
    /// Writing the manifest failed.
    #[error("writing the manifest: {0}")]
    Write(io::Error),
    /// A tensor's previous version could not be rebuilt to compare with.
    #[error("tensor `{tensor}`: rebuilding its previous version: {message}")]
    Base {
        /// The tensor.
        tensor: String,
        /// What failed.
        message: String,
    },
    /// A safetensors header whose data ends early.
    #[error("the file ends inside tensor `{tensor}`: a truncated safetensors checkpoint")]
    Truncated {
        /// The tensor whose bytes are cut short.
        tensor: String,
    },
    /// Bytes after the last tensor.
    #[error("bytes follow the last tensor: not a valid safetensors checkpoint")]
    Trailing,
    /// Storing an object failed.
    #[error("{}{source}", match tensor { Some(t) => format!("tensor `{t}`: "), None => String::new() })]
    Store {
        /// The tensor whose object it was.
        tensor: Option<String>,
        /// What failed.
        source: StoreError,
    },
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
pub(super) fn read_full(input: &mut (impl Read + ?Sized), buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

pub(super) struct Ctx<'a> {
    pub(super) sink: &'a dyn ObjectSink,
    summary: CleanSummary,
    /// Whether tensor statistics are computed.
    pub(super) stats: bool,
}

impl Ctx<'_> {
    /// Encodes, hashes and stores one object; returns its reference.
    pub(super) fn store(
        &mut self,
        tensor: Option<&str>,
        raw: &[u8],
    ) -> Result<ObjectRef, CleanError> {
        let put = put_raw(self.sink, raw);
        self.count(tensor, put)
    }

    /// Counts an object [`put_raw`] stored.
    pub(super) fn count(
        &mut self,
        tensor: Option<&str>,
        put: Result<(ObjectRef, bool), StoreError>,
    ) -> Result<ObjectRef, CleanError> {
        let (object, new) = put.map_err(|source| CleanError::Store {
            tensor: tensor.map(str::to_owned),
            source,
        })?;
        self.summary.objects += 1;
        if new {
            self.summary.new_objects += 1;
            self.summary.new_bytes += object.size;
        }
        Ok(object)
    }
}

/// Encodes `raw` with the default codec, then hashes and stores it (the
/// part of storing a chunk that can run beside its statistics); returns the
/// reference and whether the object was new.
pub(super) fn put_raw(sink: &dyn ObjectSink, raw: &[u8]) -> Result<(ObjectRef, bool), StoreError> {
    let stored = codec::default_codec().encode(raw);
    let (oid, new) = sink.hash_and_put(&stored)?;
    let object = ObjectRef {
        oid,
        size: stored.len() as u64,
    };
    Ok((object, new))
}

/// Cleans the file read from `input`, storing objects in `sink` and writing
/// the manifest to `out`. A manifest given as input is passed through; a
/// file that is not a safetensors checkpoint is stored as opaque chunks.
pub fn clean(
    input: &mut (impl Read + ?Sized),
    out: &mut (impl Write + ?Sized),
    sink: &dyn ObjectSink,
    opts: &CleanOptions,
) -> Result<CleanSummary, CleanError> {
    let chunk_size = opts.chunk_size.max(1);
    let mut ctx = Ctx {
        sink,
        summary: CleanSummary::default(),
        stats: opts.stats,
    };
    let mut prefix = [0u8; 8];
    let n = read_full(input, &mut prefix).map_err(CleanError::Read)?;
    if n == 8 && prefix[..] == MAGIC[..8] {
        out.write_all(&prefix).map_err(CleanError::Write)?;
        io::copy(input, out).map_err(CleanError::Read)?;
        ctx.summary.passthrough = true;
        return Ok(ctx.summary);
    }
    if n < 8 {
        return opaque(&prefix[..n], input, out, ctx, chunk_size);
    }
    let header_len = u64::from_le_bytes(prefix);
    if header_len > MAX_HEADER_LEN {
        return opaque(&prefix, input, out, ctx, chunk_size);
    }
    let mut header_bytes = vec![0u8; header_len as usize];
    let got = read_full(input, &mut header_bytes).map_err(CleanError::Read)?;
    let parsed = if got == header_bytes.len() {
        header::parse(&header_bytes, None).ok()
    } else {
        None
    };
    let Some(parsed) = parsed else {
        header_bytes.truncate(got);
        let mut seen = prefix.to_vec();
        seen.extend_from_slice(&header_bytes);
        return opaque(&seen, input, out, ctx, chunk_size);
    };

    let header_ref = ctx.store(None, &header_bytes)?;
    let mut buf = Vec::new();
    let mut tensors = Vec::with_capacity(parsed.entries.len());
    for entry in &parsed.entries {
        let rows_per = opts.rows_for(&entry.info);
        let tensor = match opts.updates.base_for(entry, rows_per) {
            Some(prev) => {
                choose::clean_against(entry, prev, &opts.updates, input, &mut buf, &mut ctx)?
            }
            None => {
                if opts.updates.forced == Some(choose::Forced::Sparse) {
                    eprintln!(
                        "git-theta: `{}` has no previous version to update: stored dense",
                        entry.info.name
                    );
                }
                clean_tensor(&entry.info, rows_per, input, &mut buf, &mut ctx)?
            }
        };
        tensors.push(tensor);
    }
    let mut probe = [0u8; 1];
    if read_full(input, &mut probe).map_err(CleanError::Read)? != 0 {
        return Err(CleanError::Trailing);
    }
    let data_len = parsed.entries.last().map_or(0, |e| e.end);
    let mut manifest = Manifest {
        head: Head {
            git_theta_manifest: VERSION,
            format: FileFormat::Safetensors,
            size: 8 + header_len + data_len,
            header: Some(header_ref),
            objects: vec![],
            tensors: tensors.len() as u64,
        },
        tensors,
    };
    manifest.head.git_theta_manifest = manifest.required_version();
    out.write_all(&manifest.to_bytes())
        .map_err(CleanError::Write)?;
    Ok(ctx.summary)
}

/// Rows per object for a tensor of `nbytes` with `shape`, or `None` when it
/// fits in one object.
pub fn chunk_rows(shape: &[u64], nbytes: u64, chunk_size: u64) -> Option<u64> {
    let rows = *shape.first()?;
    if nbytes <= chunk_size || rows <= 1 {
        return None;
    }
    let row_bytes = nbytes / rows;
    Some((chunk_size / row_bytes.max(1)).clamp(1, rows))
}

/// Stores tensor `info`, whose bytes are read from `input`, as objects in
/// `sink` (split every `rows_per` rows) and returns its manifest entry. This
/// is how every tensor entry is made: by cleaning, and by merges that compute
/// new tensors.
pub fn store_tensor(
    info: &TensorInfo,
    rows_per: Option<u64>,
    input: &mut (impl Read + ?Sized),
    sink: &dyn ObjectSink,
) -> Result<(TensorEntry, CleanSummary), CleanError> {
    let mut ctx = Ctx {
        sink,
        summary: CleanSummary::default(),
        stats: true,
    };
    let entry = clean_tensor(info, rows_per, input, &mut Vec::new(), &mut ctx)?;
    Ok((entry, ctx.summary))
}

/// Stores `raw` as one object (a header, say); `tensor` names it in errors.
pub fn store_object(
    sink: &dyn ObjectSink,
    tensor: Option<&str>,
    raw: &[u8],
) -> Result<ObjectRef, CleanError> {
    let mut ctx = Ctx {
        sink,
        summary: CleanSummary::default(),
        stats: true,
    };
    ctx.store(tensor, raw)
}

fn clean_tensor(
    info: &TensorInfo,
    rows_per: Option<u64>,
    input: &mut (impl Read + ?Sized),
    buf: &mut Vec<u8>,
    ctx: &mut Ctx<'_>,
) -> Result<TensorEntry, CleanError> {
    let nbytes = info.nbytes();
    let piece = match (rows_per, info.shape.first()) {
        (Some(r), Some(&rows)) if rows > 0 && nbytes > 0 => {
            r.max(1).saturating_mul(nbytes / rows).max(1)
        }
        _ => nbytes,
    };
    let mut stats = StatsAcc::new(info.dtype, ctx.stats);
    let mut objects = Vec::new();
    let mut done = 0u64;
    while done < nbytes {
        let len = piece.min(nbytes - done) as usize;
        buf.resize(len, 0);
        if read_full(input, buf).map_err(CleanError::Read)? != len {
            return Err(CleanError::Truncated {
                tensor: info.name.clone(),
            });
        }
        let sink = ctx.sink;
        let (put, ()) = rayon::join(|| put_raw(sink, buf), || stats.add(&info.name, buf));
        objects.push(ctx.count(Some(&info.name), put)?);
        done += len as u64;
    }
    Ok(TensorEntry {
        name: info.name.clone(),
        dtype: info.dtype.name().to_owned(),
        shape: info.shape.clone(),
        size: nbytes,
        update: DENSE.to_owned(),
        encoding: codec::default_codec().name().to_owned(),
        chunk_rows: rows_per,
        objects,
        base: vec![],
        stats: stats.finish(),
    })
}

fn opaque(
    seen: &[u8],
    input: &mut (impl Read + ?Sized),
    out: &mut (impl Write + ?Sized),
    mut ctx: Ctx<'_>,
    chunk_size: u64,
) -> Result<CleanSummary, CleanError> {
    let mut all = Cursor::new(seen).chain(input);
    let mut objects = Vec::new();
    let mut size = 0u64;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        (&mut all)
            .take(chunk_size)
            .read_to_end(&mut buf)
            .map_err(CleanError::Read)?;
        if buf.is_empty() {
            break;
        }
        size += buf.len() as u64;
        objects.push(ctx.store(None, &buf)?);
    }
    let manifest = Manifest {
        head: Head {
            git_theta_manifest: VERSION_DENSE,
            format: FileFormat::Opaque,
            size,
            header: None,
            objects,
            tensors: 0,
        },
        tensors: vec![],
    };
    out.write_all(&manifest.to_bytes())
        .map_err(CleanError::Write)?;
    Ok(ctx.summary)
}

/// Elements of an F64 tensor narrowed at a time for statistics.
const STATS_BLOCK: usize = 1 << 16;

/// Running statistics of a tensor: the engine's [`Moments`] of its chunks,
/// added in order.
pub(super) struct StatsAcc {
    dtype: DType,
    enabled: bool,
    moments: Moments,
    scratch: Vec<f32>,
}

impl StatsAcc {
    /// Statistics of a `dtype` tensor, if `wanted` and it is a float one.
    pub(super) fn new(dtype: DType, wanted: bool) -> StatsAcc {
        StatsAcc {
            dtype,
            enabled: wanted && matches!(dtype, DType::F64 | DType::F32 | DType::F16 | DType::BF16),
            moments: Moments::default(),
            scratch: Vec::new(),
        }
    }

    pub(super) fn add(&mut self, tensor: &str, bytes: &[u8]) {
        if !self.enabled {
            return;
        }
        if self.dtype != DType::F64 {
            self.moments.add(&moments(Input::new(self.dtype, bytes)));
            return;
        }
        // The engine's math is f32: F64 is narrowed block by block.
        let size = self.dtype.size();
        for block in bytes.chunks(STATS_BLOCK * size) {
            self.scratch.resize(block.len() / size, 0.0);
            if theta_engine::convert::to_f32(tensor, block, self.dtype, &mut self.scratch).is_err()
            {
                self.enabled = false;
                return;
            }
            self.moments.add(&moments(Input::f32(&self.scratch)));
        }
    }

    pub(super) fn finish(self) -> Option<Stats> {
        let m = self.moments;
        if !self.enabled || m.finite == 0 {
            return None;
        }
        let n = m.finite as f64;
        let mean = m.sum / n;
        let var = (m.sumsq / n - mean * mean).max(0.0);
        Some(Stats {
            min: m.min,
            max: m.max,
            mean: mean as f32,
            std: var.sqrt() as f32,
            nonfinite: m.nonfinite,
        })
    }
}

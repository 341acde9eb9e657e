//! Smudging: a manifest back into the checkpoint it was cleaned from, byte
//! for byte, streaming one object at a time. Every object is verified
//! against its id before any of its bytes are written.

use std::io::{self, Read, Write};

use theta_engine::safetensors::header;

use super::codec;
use super::manifest::{DENSE, FileFormat, Manifest, ManifestError, ObjectRef, TensorEntry};
use super::store::{Store, StoreError};
use super::update;

/// Why a checkpoint could not be rebuilt.
#[derive(Debug, thiserror::Error)]
pub enum SmudgeError {
    /// The blob is not a readable manifest.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// An object is missing, corrupt or unreadable.
    #[error("{}{source}", what(tensor.as_deref()))]
    Object {
        /// The tensor the object belongs to (`None`: the header or opaque data).
        tensor: Option<String>,
        /// What is wrong.
        source: StoreError,
    },
    /// An object does not decode.
    #[error("{}object {oid}: {message}", what(tensor.as_deref()))]
    Decode {
        /// The tensor.
        tensor: Option<String>,
        /// The object.
        oid: String,
        /// What is wrong.
        message: String,
    },
    /// The manifest contradicts itself or its header.
    #[error("inconsistent manifest: {0}")]
    Inconsistent(String),
    /// Reading the manifest failed.
    #[error("reading the manifest: {0}")]
    Read(io::Error),
    /// Writing the checkpoint failed.
    #[error("writing the checkpoint: {0}")]
    Write(io::Error),
}

fn what(tensor: Option<&str>) -> String {
    match tensor {
        Some(t) => format!("tensor `{t}`: "),
        None => String::new(),
    }
}

/// Gets objects the local store lacks (from an LFS remote).
pub trait Fetcher {
    /// Tries to bring `objects` into the local store, in one batch.
    fn fetch(&mut self, objects: &[ObjectRef]) -> Result<(), String>;
}

/// A fetcher that fetches nothing.
pub struct NoFetch;

impl Fetcher for NoFetch {
    fn fetch(&mut self, _objects: &[ObjectRef]) -> Result<(), String> {
        Ok(())
    }
}

/// Smudges the blob read from `input` into `out`. A blob that is not a
/// manifest (a file committed before it was tracked) is passed through.
pub fn smudge(
    input: &mut (impl Read + ?Sized),
    out: &mut (impl Write + ?Sized),
    store: &Store,
    fetcher: &mut dyn Fetcher,
) -> Result<(), SmudgeError> {
    let mut blob = Vec::new();
    input
        .take(super::manifest::MAX_LEN as u64 + 1)
        .read_to_end(&mut blob)
        .map_err(SmudgeError::Read)?;
    if !super::manifest::looks_like_manifest(&blob) {
        out.write_all(&blob).map_err(SmudgeError::Write)?;
        io::copy(input, out).map_err(SmudgeError::Write)?;
        return Ok(());
    }
    let manifest = Manifest::parse(&blob)?;
    ensure_present(&manifest, store, fetcher)?;
    write_checkpoint(&manifest, store, out)
}

/// Makes sure every object of `manifest` is local, fetching the missing
/// ones in one batch; names the first one still missing otherwise.
pub fn ensure_present(
    manifest: &Manifest,
    store: &Store,
    fetcher: &mut dyn Fetcher,
) -> Result<(), SmudgeError> {
    let missing: Vec<_> = manifest
        .objects()
        .into_iter()
        .filter(|(_, o)| !store.contains(&o.oid))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let refs: Vec<ObjectRef> = missing.iter().map(|(_, o)| (*o).clone()).collect();
    if let Err(e) = fetcher.fetch(&refs) {
        eprintln!(
            "git-theta: fetching {} missing objects failed: {e}",
            refs.len()
        );
    }
    let still: Vec<_> = missing
        .into_iter()
        .filter(|(_, o)| !store.contains(&o.oid))
        .collect();
    if let Some((tensor, o)) = still.first() {
        if still.len() > 1 {
            eprintln!(
                "git-theta: {} objects are missing from the local store and could not be fetched",
                still.len()
            );
        }
        return Err(SmudgeError::Object {
            tensor: tensor.map(str::to_owned),
            source: StoreError::Missing {
                oid: o.oid.clone(),
                path: store.path(&o.oid).unwrap_or_default(),
            },
        });
    }
    Ok(())
}

fn get(store: &Store, tensor: Option<&str>, o: &ObjectRef) -> Result<Vec<u8>, SmudgeError> {
    store
        .get(&o.oid, o.size)
        .map_err(|source| SmudgeError::Object {
            tensor: tensor.map(str::to_owned),
            source,
        })
}

/// Writes the checkpoint `manifest` describes, whose objects are all local.
pub fn write_checkpoint(
    manifest: &Manifest,
    store: &Store,
    out: &mut (impl Write + ?Sized),
) -> Result<(), SmudgeError> {
    let bad = |m: String| SmudgeError::Inconsistent(m);
    let mut written = 0u64;
    match manifest.head.format {
        FileFormat::Opaque => {
            for o in &manifest.head.objects {
                let bytes = get(store, None, o)?;
                out.write_all(&bytes).map_err(SmudgeError::Write)?;
                written += bytes.len() as u64;
            }
        }
        FileFormat::Safetensors => {
            let h = manifest
                .head
                .header
                .as_ref()
                .ok_or_else(|| bad("a safetensors manifest without a header object".into()))?;
            let header_bytes = get(store, None, h)?;
            let parsed = header::parse(&header_bytes, None)
                .map_err(|(t, p)| bad(format!("stored header: {}{p}", what(t.as_deref()))))?;
            if parsed.entries.len() != manifest.tensors.len() {
                return Err(bad(format!(
                    "the header lists {} tensors, the manifest {}",
                    parsed.entries.len(),
                    manifest.tensors.len()
                )));
            }
            for (e, t) in parsed.entries.iter().zip(&manifest.tensors) {
                if e.info.name != t.name
                    || e.info.dtype.name() != t.dtype
                    || e.info.shape != t.shape
                    || e.end - e.begin != t.size
                {
                    return Err(bad(format!(
                        "tensor `{}` ({} {:?}) does not match the header's `{}` ({} {:?})",
                        t.name, t.dtype, t.shape, e.info.name, e.info.dtype, e.info.shape
                    )));
                }
            }
            out.write_all(&(header_bytes.len() as u64).to_le_bytes())
                .and_then(|()| out.write_all(&header_bytes))
                .map_err(SmudgeError::Write)?;
            written += 8 + header_bytes.len() as u64;
            for t in &manifest.tensors {
                written += write_tensor(t, store, out)?;
            }
        }
    }
    if written != manifest.head.size {
        return Err(bad(format!(
            "rebuilt {written} bytes where the manifest says {}",
            manifest.head.size
        )));
    }
    out.flush().map_err(SmudgeError::Write)
}

/// The tensor bytes each chunk of `t` (each object of its dense base) must
/// decode to.
pub fn raw_lengths(t: &TensorEntry) -> Result<Vec<u64>, SmudgeError> {
    let bad = |m: &str| SmudgeError::Inconsistent(format!("tensor `{}`: {m}", t.name));
    let objects = t.base.first().map_or(&t.objects, |s| &s.objects);
    match t.chunk_rows {
        None if t.size == 0 && objects.is_empty() => Ok(vec![]),
        None if objects.len() == 1 => Ok(vec![t.size]),
        None => Err(bad("several objects without chunk_rows")),
        Some(per) => {
            let rows = *t.shape.first().ok_or_else(|| bad("chunked scalar"))?;
            if rows == 0 || per == 0 || !t.size.is_multiple_of(rows) {
                return Err(bad("bad chunking"));
            }
            let row_bytes = t.size / rows;
            if rows.div_ceil(per) != objects.len() as u64 {
                return Err(bad("object count does not match chunk_rows"));
            }
            let mut out = Vec::with_capacity(t.objects.len());
            let mut left = rows;
            while left > 0 {
                let r = per.min(left);
                out.push(r * row_bytes);
                left -= r;
            }
            Ok(out)
        }
    }
}

/// Writes the bytes of tensor `t`, rebuilt from its objects in `store`, to
/// `out`; returns how many were written. This is the one place a tensor entry
/// becomes bytes: merge, diff and update chains read tensors through it (or
/// [`read_tensor`]). A chain (`base`) is applied one chunk of rows at a time:
/// the dense base's chunk, then each later step's update.
pub fn write_tensor(
    t: &TensorEntry,
    store: &Store,
    out: &mut (impl Write + ?Sized),
) -> Result<u64, SmudgeError> {
    let mut chain = Chain::new(t, store)?;
    let mut n = 0;
    for i in 0..chain.lengths.len() {
        let raw = chain.piece(i)?;
        out.write_all(&raw).map_err(SmudgeError::Write)?;
        n += raw.len() as u64;
    }
    Ok(n)
}

/// Rebuilds a tensor's chunks through its update chain, keeping the objects
/// that every chunk reads (low-rank factors, scale vectors) once loaded.
pub struct Chain<'a> {
    t: &'a TensorEntry,
    store: &'a Store,
    codec: &'static dyn codec::Codec,
    /// Each chunk's length in bytes.
    pub lengths: Vec<u64>,
    dtype: Option<theta_engine::DType>,
    shared: Vec<Option<Vec<Vec<u8>>>>,
}

impl<'a> Chain<'a> {
    /// Checks `t`'s chain (known kinds, a dense first step, object counts).
    pub fn new(t: &'a TensorEntry, store: &'a Store) -> Result<Chain<'a>, SmudgeError> {
        let decode_err = |message: String| SmudgeError::Decode {
            tensor: Some(t.name.clone()),
            oid: t.objects.first().map(|o| o.oid.clone()).unwrap_or_default(),
            message,
        };
        let codec = codec_of(t)?;
        let lengths = raw_lengths(t)?;
        let bad = |m: String| SmudgeError::Inconsistent(format!("tensor `{}`: {m}", t.name));
        let mut dtype = None;
        for (k, (kind, objects)) in t.steps().enumerate() {
            let u = update::by_name(kind).ok_or_else(|| {
                decode_err(format!(
                    "unknown update kind `{kind}` (written by a newer git-theta?)"
                ))
            })?;
            if k == 0 && kind != DENSE {
                return Err(bad(format!(
                    "its chain begins with `{kind}`, not a dense step"
                )));
            }
            if u.per_chunk() && objects.len() != lengths.len() {
                return Err(bad(format!(
                    "a `{kind}` step has {} objects for {} chunks",
                    objects.len(),
                    lengths.len()
                )));
            }
            if k > 0 && dtype.is_none() {
                dtype =
                    Some(t.dtype.parse().map_err(|_| {
                        bad(format!("an update chain on unknown dtype `{}`", t.dtype))
                    })?);
            }
        }
        let steps = t.base.len() + 1;
        Ok(Chain {
            t,
            store,
            codec,
            lengths,
            dtype,
            shared: vec![None; steps],
        })
    }

    fn decode(&self, o: &ObjectRef, raw_len: Option<u64>) -> Result<Vec<u8>, SmudgeError> {
        let stored = get(self.store, Some(&self.t.name), o)?;
        let len = raw_len.unwrap_or(stored.len() as u64);
        let raw = self
            .codec
            .decode(&stored, len)
            .map_err(|message| SmudgeError::Decode {
                tensor: Some(self.t.name.clone()),
                oid: o.oid.clone(),
                message,
            })?;
        // The raw codec hands back the stored bytes: keep them, uncopied.
        let decoded = match raw {
            std::borrow::Cow::Owned(v) => Some(v),
            std::borrow::Cow::Borrowed(_) => None,
        };
        Ok(decoded.unwrap_or(stored))
    }

    /// The bytes of chunk `i`, mapped from the store when the tensor has no
    /// updates and its encoding stores the bytes as they are (no copy, no
    /// fresh memory), else rebuilt as [`Chain::chunk`] does: for readers
    /// that only look at the bytes.
    pub fn piece(&mut self, i: usize) -> Result<Piece, SmudgeError> {
        if self.dtype.is_some() {
            return self.chunk(i).map(Piece::Owned);
        }
        let o = &self.t.objects[i];
        let map = self
            .store
            .map(&o.oid, o.size)
            .map_err(|source| SmudgeError::Object {
                tensor: Some(self.t.name.clone()),
                source,
            })?;
        let decode_err = |message| SmudgeError::Decode {
            tensor: Some(self.t.name.clone()),
            oid: o.oid.clone(),
            message,
        };
        let decoded = match self
            .codec
            .decode(&map, self.lengths[i])
            .map_err(decode_err)?
        {
            std::borrow::Cow::Borrowed(b) if b.len() == map.len() => None,
            other => Some(other.into_owned()),
        };
        Ok(match decoded {
            None => Piece::Mapped(map),
            Some(v) => Piece::Owned(v),
        })
    }

    /// The bytes of chunk `i`.
    pub fn chunk(&mut self, i: usize) -> Result<Vec<u8>, SmudgeError> {
        let t = self.t;
        let raw_len = self.lengths[i];
        let steps: Vec<(&str, &[ObjectRef])> = t.steps().collect();
        let mut dense = self.decode(&steps[0].1[i], Some(raw_len))?;
        let Some(dtype) = self.dtype else {
            return Ok(dense);
        };
        let target = update::Target {
            name: &t.name,
            dtype,
            shape: &t.shape,
        };
        let row0 = t.chunk_rows.unwrap_or(0) * i as u64;
        for (k, (kind, objects)) in steps.iter().enumerate().skip(1) {
            let u = update::by_name(kind).ok_or_else(|| {
                SmudgeError::Inconsistent(format!("unknown update kind `{kind}`"))
            })?;
            let fail = |o: &ObjectRef, message: String| SmudgeError::Decode {
                tensor: Some(t.name.clone()),
                oid: o.oid.clone(),
                message: format!("{kind} update: {message}"),
            };
            if u.per_chunk() {
                let o = &objects[i];
                // A per-chunk object may be shorter than the chunk (a list).
                let payload = self.decode(o, None)?;
                u.apply(&target, row0, &[&payload], &mut dense)
                    .map_err(|m| fail(o, m))?;
            } else {
                if self.shared[k].is_none() {
                    let loaded = objects
                        .iter()
                        .map(|o| self.decode(o, None))
                        .collect::<Result<Vec<_>, _>>()?;
                    self.shared[k] = Some(loaded);
                }
                let payload: Vec<&[u8]> = self.shared[k]
                    .as_ref()
                    .map(|v| v.iter().map(Vec::as_slice).collect())
                    .unwrap_or_default();
                u.apply(&target, row0, &payload, &mut dense).map_err(|m| {
                    let first = objects.first().cloned().unwrap_or(ObjectRef {
                        oid: String::new(),
                        size: 0,
                    });
                    fail(&first, m)
                })?;
            }
        }
        Ok(dense)
    }
}

/// A piece of a tensor's bytes: an object mapped from the store (when its
/// encoding stores the bytes as they are) or bytes decoded from one.
pub enum Piece {
    /// A mapped object whose bytes are the tensor's.
    Mapped(memmap2::Mmap),
    /// Decoded bytes.
    Owned(Vec<u8>),
}

impl std::ops::Deref for Piece {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Piece::Mapped(m) => m,
            Piece::Owned(v) => v,
        }
    }
}

/// The bytes of tensor `t` as pieces in order, without copying what the
/// store holds as is: the memory-mapped twin of [`write_tensor`] for readers
/// that only look at the bytes (`git theta diff`). Objects are verified as
/// [`Store::map`] says.
pub fn tensor_pieces(t: &TensorEntry, store: &Store) -> Result<Vec<Piece>, SmudgeError> {
    let mut chain = Chain::new(t, store)?;
    (0..chain.lengths.len()).map(|i| chain.piece(i)).collect()
}

fn codec_of(t: &TensorEntry) -> Result<&'static dyn codec::Codec, SmudgeError> {
    codec::by_name(&t.encoding).ok_or_else(|| SmudgeError::Decode {
        tensor: Some(t.name.clone()),
        oid: t.objects.first().map(|o| o.oid.clone()).unwrap_or_default(),
        message: format!(
            "unknown encoding `{}` (written by a newer git-theta?)",
            t.encoding
        ),
    })
}

/// The bytes of tensor `t`, rebuilt from its objects in `store`.
pub fn read_tensor(t: &TensorEntry, store: &Store) -> Result<Vec<u8>, SmudgeError> {
    let mut out = Vec::with_capacity(usize::try_from(t.size).unwrap_or(0));
    write_tensor(t, store, &mut out)?;
    if out.len() as u64 != t.size {
        return Err(SmudgeError::Inconsistent(format!(
            "tensor `{}`: rebuilt {} bytes where the manifest says {}",
            t.name,
            out.len(),
            t.size
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vcs::clean::{CleanError, CleanOptions, clean};
    use crate::vcs::store::ObjectSink;
    use theta_engine::safetensors::HeaderPlan;
    use theta_engine::{DType, TensorInfo};

    /// A safetensors file in memory: tensors `emb` [64, 16] F32 (4 KiB),
    /// `norm` [16] BF16, `step` [] I64, `empty` [0, 4] F16.
    fn checkpoint(seed: u8) -> Vec<u8> {
        let tensors = [
            TensorInfo::new("emb", DType::F32, [64, 16]),
            TensorInfo::new("norm", DType::BF16, [16]),
            TensorInfo::new("step", DType::I64, []),
            TensorInfo::new("empty", DType::F16, [0, 4]),
        ];
        let meta = vec![("format".to_owned(), "pt".to_owned())];
        let plan = HeaderPlan::new(&tensors, &meta).expect("plan");
        let mut out = (plan.header_bytes().len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(plan.header_bytes());
        for i in 0..64 * 16u32 {
            out.extend_from_slice(&((i as f32) * 0.01 + f32::from(seed)).to_le_bytes());
        }
        for _ in 0..16 {
            out.extend_from_slice(&[0x80, 0x3f]); // bf16 1.0
        }
        out.extend_from_slice(&7i64.to_le_bytes());
        out
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path().join("lfs"));
        (dir, store)
    }

    fn clean_bytes(
        file: &[u8],
        store: &Store,
        chunk: u64,
    ) -> (Vec<u8>, crate::vcs::clean::CleanSummary) {
        let mut manifest = Vec::new();
        let opts = CleanOptions {
            chunk_size: chunk,
            ..CleanOptions::default()
        };
        let s = clean(&mut &file[..], &mut manifest, store, &opts).expect("clean");
        (manifest, s)
    }

    fn smudge_bytes(manifest: &[u8], store: &Store) -> Result<Vec<u8>, SmudgeError> {
        let mut out = Vec::new();
        smudge(&mut &manifest[..], &mut out, store, &mut NoFetch).map(|()| out)
    }

    #[test]
    fn round_trips_byte_for_byte_and_deterministically() {
        let (_d, store) = store();
        let file = checkpoint(0);
        let (m1, s1) = clean_bytes(&file, &store, 1024);
        let (m2, s2) = clean_bytes(&file, &store, 1024);
        assert_eq!(m1, m2, "deterministic");
        assert_eq!(s1.objects, s2.objects);
        assert_eq!(s2.new_objects, 0, "everything already stored");
        assert_eq!(smudge_bytes(&m1, &store).expect("smudge"), file);

        let m = Manifest::parse(&m1).expect("parse");
        let emb = &m.tensors[0];
        assert_eq!(emb.chunk_rows, Some(16), "4 KiB in 1 KiB chunks of 16 rows");
        assert_eq!(emb.objects.len(), 4);
        assert!(
            m.tensors[3].objects.is_empty(),
            "empty tensor has no object"
        );
        let stats = emb.stats.as_ref().expect("stats");
        assert_eq!(stats.min, 0.0);
        assert!((stats.max - 10.23).abs() < 1e-4);
        assert!(m.tensors[2].stats.is_none(), "no stats for integers");
        // The manifest passes through clean unchanged.
        let (again, s) = clean_bytes(&m1, &store, 1024);
        assert_eq!(again, m1);
        assert!(s.passthrough);
    }

    #[test]
    fn previous_chunking_is_reused_whatever_the_setting() {
        let (_d, store) = store();
        let file = checkpoint(0);
        let (m1, _) = clean_bytes(&file, &store, 1024);
        let parsed = Manifest::parse(&m1).expect("parse");
        let opts = CleanOptions::default().with_previous(&parsed);
        let mut m2 = Vec::new();
        clean(&mut &file[..], &mut m2, &store, &opts).expect("clean");
        assert_eq!(m1, m2, "same manifest with a 64 MiB setting");
    }

    #[test]
    fn a_changed_row_stores_one_chunk() {
        let (_d, store) = store();
        let mut file = checkpoint(0);
        let (m1, _) = clean_bytes(&file, &store, 1024);
        let header_len = u64::from_le_bytes(file[..8].try_into().expect("8")) as usize;
        file[8 + header_len + 4] ^= 1; // emb, row 0
        let (m2, s) = clean_bytes(&file, &store, 1024);
        assert_eq!(s.new_objects, 1);
        assert_eq!(s.new_bytes, 1024);
        assert_ne!(m1, m2);
        assert_eq!(smudge_bytes(&m2, &store).expect("smudge"), file);
    }

    #[test]
    fn identical_tensors_are_stored_once() {
        let (_d, store) = store();
        let (_, s) = clean_bytes(&checkpoint(0), &store, 1 << 20);
        let (_, s2) = clean_bytes(&checkpoint(1), &store, 1 << 20);
        assert_eq!(
            (s.objects, s.new_objects),
            (4, 4),
            "header, emb, norm, step"
        );
        // Only `emb` differs between seeds (same layout, same header).
        assert_eq!((s2.objects, s2.new_objects), (4, 1));
    }

    #[test]
    fn other_files_round_trip_as_opaque() {
        let (_d, store) = store();
        for file in [
            &b""[..],
            b"abc",
            b"not a checkpoint at all, just text\n",
            &[0xffu8; 3000],
        ] {
            let (m, _) = clean_bytes(file, &store, 1000);
            let parsed = Manifest::parse(&m).expect("manifest");
            assert_eq!(parsed.head.format, FileFormat::Opaque);
            assert_eq!(smudge_bytes(&m, &store).expect("smudge"), file);
        }
        // Blobs that are not manifests pass through smudge.
        assert_eq!(smudge_bytes(b"plain", &store).expect("smudge"), b"plain");
    }

    #[test]
    fn truncated_checkpoints_are_refused() {
        let (_d, store) = store();
        let file = checkpoint(0);
        let mut manifest = Vec::new();
        let cut = &file[..file.len() - 3];
        let err = clean(
            &mut &cut[..],
            &mut manifest,
            &store,
            &CleanOptions::default(),
        )
        .expect_err("truncated");
        assert!(matches!(err, CleanError::Truncated { ref tensor } if tensor == "step"));
        let mut longer = file.clone();
        longer.push(0);
        let err = clean(
            &mut &longer[..],
            &mut manifest,
            &store,
            &CleanOptions::default(),
        )
        .expect_err("trailing");
        assert!(matches!(err, CleanError::Trailing));
    }

    #[test]
    fn missing_and_corrupt_objects_name_the_tensor() {
        let (_d, store) = store();
        let (m, _) = clean_bytes(&checkpoint(0), &store, 1 << 20);
        let parsed = Manifest::parse(&m).expect("parse");
        let norm = &parsed.tensors[1].objects[0];
        let path = store.path(&norm.oid).expect("path");
        std::fs::write(&path, [0u8; 32]).expect("corrupt");
        let err = smudge_bytes(&m, &store).expect_err("corrupt").to_string();
        assert!(
            err.contains("tensor `norm`") && err.contains("corrupt"),
            "{err}"
        );
        assert!(err.contains(&norm.oid), "{err}");
        std::fs::remove_file(&path).expect("rm");
        let err = smudge_bytes(&m, &store).expect_err("missing").to_string();
        assert!(
            err.contains("tensor `norm`") && err.contains("missing"),
            "{err}"
        );
        // Put it back: fine again.
        let data = [0x80u8, 0x3f].repeat(16);
        store.put(&norm.oid, &data).expect("put");
        assert!(smudge_bytes(&m, &store).is_ok());
    }

    #[test]
    fn inconsistent_manifests_are_refused() {
        let (_d, store) = store();
        let (m, _) = clean_bytes(&checkpoint(0), &store, 1 << 20);
        let mut parsed = Manifest::parse(&m).expect("parse");
        parsed.tensors.swap(0, 1);
        let err = smudge_bytes(&parsed.to_bytes(), &store).expect_err("swapped");
        assert!(matches!(err, SmudgeError::Inconsistent(_)), "{err}");
    }
}

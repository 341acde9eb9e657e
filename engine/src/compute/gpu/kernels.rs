//! The GPU side of each op: how a tensor is cut into chunks and what each
//! chunk binds; `ring.rs` pipelines the uploads, dispatches and readbacks.

use bytemuck::bytes_of;
use theta_shaders::{LOWRANK, MERGE, SELECT, STATS};

use super::ring::{Bind, Chunk, RING_CHUNK};
use super::{GpuContext, STORAGE_IN, STORAGE_OUT, WG, gpu_err};
use crate::DType;
use crate::compute::ops::{
    self, LowRankParams, MergeParams, ModelParams, SelectParams, StatSums, StatsParams,
};
use crate::compute::{Backend, ComputeError, Input, Result, dtype_code, error::invalid};

/// Bytes of `len` elements of `dtype`, padded to whole u32 words.
fn words_bytes(len: usize, dtype: DType) -> u64 {
    ((len * dtype.size()) as u64).next_multiple_of(4)
}

/// Bytes a kernel writes for `len` output elements (pairs of elements).
fn out_bytes(len: usize, dtype: DType) -> u64 {
    if dtype == DType::F32 {
        (len.next_multiple_of(2) * 4) as u64
    } else {
        (len.div_ceil(2) * 4) as u64
    }
}

fn part<'a>(x: Input<'a>, start: usize, len: usize) -> &'a [u8] {
    let s = x.dtype.size();
    &x.bytes[start * s..(start + len) * s]
}

/// Output tile of `lowrank.wgsl::lowrank_tiled` (`TR` x `TC`).
const TILE_ROWS: usize = 8;
const TILE_COLS: usize = 64;

/// The base binding of a chunk: its part of the base, or one zero word.
fn base_bind<'a>(
    base: Option<Input<'a>>,
    zero: &'a wgpu::Buffer,
    start: usize,
    len: usize,
    seg: u64,
) -> Bind<'a> {
    match base {
        Some(c) => Bind::Upload(vec![(0, part(c, start, len))], seg),
        None => Bind::Buffer(zero, 4),
    }
}

fn groups(tensor: &str, n: usize, per_group: usize) -> Result<u32> {
    u32::try_from(n.div_ceil(per_group))
        .map_err(|_| invalid(tensor, "too many workgroups for one chunk"))
}

impl GpuContext {
    /// Bytes per binding of a pipelined chunk: the ring's chunk, or less on
    /// a device with smaller bindings.
    fn chunk_limit(&self) -> u64 {
        self.binding_limit.min(RING_CHUNK)
    }
}

/// Elements per chunk so that `bytes_per_elem` bytes of each fit
/// `limit` bytes, rounded down to a multiple of `align`.
fn chunk_elems(tensor: &str, limit: u64, bytes_per_elem: u64, align: usize) -> Result<usize> {
    let ce = (limit / bytes_per_elem.max(1)) as usize / align * align;
    if ce == 0 {
        return Err(invalid(
            tensor,
            format!("{bytes_per_elem} bytes per element exceed the device's binding limit"),
        ));
    }
    Ok(ce)
}

impl Backend for GpuContext {
    #[allow(clippy::too_many_arguments)]
    fn merge(
        &self,
        tensor: &str,
        p: &MergeParams,
        models: &[ModelParams],
        inputs: &[Input<'_>],
        base: Option<Input<'_>>,
        out: &mut [u8],
        out_dtype: DType,
    ) -> Result<()> {
        let in_dt = inputs.first().map_or(DType::F32, |x| x.dtype);
        let n = out.len() / out_dtype.size();
        let m = inputs.len();
        let pipeline = self.pipeline(
            &MERGE,
            "merge",
            (dtype_code(tensor, in_dt)?, dtype_code(tensor, out_dtype)?),
        )?;
        let per_elem = (m * in_dt.size()).max(4) as u64;
        let ce = chunk_elems(tensor, self.chunk_limit(), per_elem, 2 * WG as usize)?;
        let model_buf = self.uniform(bytemuck::cast_slice(models));
        let osz = out_dtype.size();
        let zero = self.uniform(&[0u8; 4]);
        let mut stream = self.stream(tensor, &pipeline, |i, bytes| {
            let start = i * ce;
            let dst = &mut out[start * osz..(start + ce.min(n - start)) * osz];
            dst.copy_from_slice(&bytes[..dst.len()]);
            Ok(())
        });
        for start in (0..n).step_by(ce) {
            let len = ce.min(n - start);
            let seg = words_bytes(len, in_dt);
            let parts: Vec<(u64, &[u8])> = inputs
                .iter()
                .enumerate()
                .map(|(i, x)| (i as u64 * seg, part(*x, start, len)))
                .collect();
            let params = MergeParams {
                len: len as u32,
                seg_words: (seg / 4) as u32,
                offset_lo: start as u32,
                offset_hi: (start as u64 >> 32) as u32,
                ..*p
            };
            let ubuf = self.uniform(bytes_of(&params));
            let ob = out_bytes(len, out_dtype);
            stream.push(Chunk {
                binds: vec![
                    Bind::Buffer(&ubuf, size_of::<MergeParams>() as u64),
                    Bind::Buffer(&model_buf, (size_of::<ModelParams>() * m) as u64),
                    Bind::Upload(parts, seg * m as u64),
                    base_bind(base, &zero, start, len, seg),
                    Bind::Output(ob),
                ],
                groups: groups(tensor, len.div_ceil(2), WG as usize)?,
                read: ob,
            })?;
        }
        stream.finish()
    }

    fn stats(
        &self,
        tensor: &str,
        a: Input<'_>,
        b: Input<'_>,
        base: Option<Input<'_>>,
    ) -> Result<StatSums> {
        let n = a.len();
        let pipeline = self.pipeline(&STATS, "stats", (dtype_code(tensor, a.dtype)?, 0))?;
        let per_elem = (2 * a.dtype.size()).max(4) as u64;
        let ce = chunk_elems(tensor, self.chunk_limit(), per_elem, ops::STATS_BLOCK)?;
        let zero = self.uniform(&[0u8; 4]);
        let mut total = StatSums::default();
        // Block partials are summed in block order whatever the chunking,
        // since chunks are whole blocks and arrive in order.
        let mut stream = self.stream(tensor, &pipeline, |_, bytes| {
            let words: &[u32] = bytemuck::cast_slice(bytes);
            for w in words.chunks_exact(ops::STATS_PARTIAL_WORDS) {
                let f = |i: usize| f64::from(f32::from_bits(w[i]));
                total.add(&StatSums {
                    a2: f(0),
                    b2: f(1),
                    d2: f(2),
                    dot: f(3),
                    sum_d: f(4),
                    max_abs_d: f32::from_bits(w[5]),
                    changed: u64::from(w[6]),
                    nonfinite_a: u64::from(w[7]),
                    nonfinite_b: u64::from(w[8]),
                    n: 0,
                });
            }
            Ok(())
        });
        for start in (0..n).step_by(ce) {
            let len = ce.min(n - start);
            let seg = words_bytes(len, a.dtype);
            let g = groups(tensor, len, ops::STATS_BLOCK)?;
            let (x, y) = self.grid(g);
            let params = StatsParams {
                len: len as u32,
                seg_words: (seg / 4) as u32,
                has_base: u32::from(base.is_some()),
                pad: 0,
            };
            let ubuf = self.uniform(bytes_of(&params));
            let partial = (ops::STATS_PARTIAL_WORDS * 4) as u64;
            stream.push(Chunk {
                binds: vec![
                    Bind::Buffer(&ubuf, 16),
                    Bind::Upload(
                        vec![(0, part(a, start, len)), (seg, part(b, start, len))],
                        2 * seg,
                    ),
                    base_bind(base, &zero, start, len, seg),
                    Bind::Output(u64::from(x) * u64::from(y) * partial),
                ],
                groups: g,
                read: u64::from(g) * partial,
            })?;
        }
        stream.finish()?;
        total.n = n as u64;
        Ok(total)
    }

    fn kth_largest_abs(
        &self,
        tensor: &str,
        x: Input<'_>,
        base: Option<Input<'_>>,
        k: usize,
    ) -> Result<u32> {
        let n = x.len();
        let pipeline = self.pipeline(&SELECT, "histogram", (dtype_code(tensor, x.dtype)?, 0))?;
        let per_elem = x.dtype.size().max(4) as u64;
        let align = 4 * WG as usize;
        // A tensor that fits one binding is uploaded once for all four
        // passes; a larger one streams through the ring in every pass.
        let whole = chunk_elems(tensor, self.binding_limit, per_elem, align)?;
        let resident = if n <= whole {
            let seg = words_bytes(n, x.dtype);
            let input = self.upload(tensor, &[(0, x.bytes)], seg)?;
            let base_buf = match base {
                Some(c) => Some(self.upload(tensor, &[(0, c.bytes)], seg)?),
                None => None,
            };
            Some((input, base_buf, seg))
        } else {
            None
        };
        let ce = if resident.is_some() {
            n.max(1)
        } else {
            chunk_elems(tensor, self.chunk_limit(), per_elem, align)?
        };
        let zero = self.uniform(&[0u8; 4]);
        let hist = self.take(STORAGE_OUT, 1024);
        let mut remaining = k as u64;
        let mut prefix = 0u32;
        for shift in [24u32, 16, 8, 0] {
            let mut enc = self.device.create_command_encoder(&Default::default());
            enc.clear_buffer(&hist, 0, Some(1024));
            self.queue.submit([enc.finish()]);
            let mut counts = [0u32; 256];
            // The histogram accumulates over the chunks; only the last
            // chunk reads it back.
            let mut stream = self.stream(tensor, &pipeline, |_, bytes| {
                counts.copy_from_slice(bytemuck::cast_slice(&bytes[..1024]));
                Ok(())
            });
            for start in (0..n).step_by(ce) {
                let len = ce.min(n - start);
                let seg = words_bytes(len, x.dtype);
                let (input, base_b) = match &resident {
                    Some((input, base_buf, seg)) => (
                        Bind::Buffer(input, *seg),
                        match base_buf {
                            Some(b) => Bind::Buffer(b, *seg),
                            None => Bind::Buffer(&zero, 4),
                        },
                    ),
                    None => (
                        Bind::Upload(vec![(0, part(x, start, len))], seg),
                        base_bind(base, &zero, start, len, seg),
                    ),
                };
                let params = SelectParams {
                    len: len as u32,
                    has_base: u32::from(base.is_some()),
                    shift,
                    prefix,
                };
                let ubuf = self.uniform(bytes_of(&params));
                stream.push(Chunk {
                    binds: vec![
                        Bind::Buffer(&ubuf, 16),
                        input,
                        base_b,
                        Bind::Buffer(&hist, 1024),
                    ],
                    groups: groups(tensor, len, align)?,
                    read: if start + len == n { 1024 } else { 0 },
                })?;
            }
            stream.finish()?;
            let mut byte = None;
            for bin in (0..256).rev() {
                let c = u64::from(counts[bin]);
                if c >= remaining {
                    byte = Some(bin as u32);
                    break;
                }
                remaining -= c;
            }
            let byte = byte.ok_or_else(|| {
                gpu_err(
                    tensor,
                    "radix select lost elements (histogram inconsistent)",
                )
            })?;
            prefix = (prefix << 8) | byte;
        }
        self.give(STORAGE_OUT, hist);
        if let Some((input, base_buf, _)) = resident {
            self.give(STORAGE_IN, input);
            if let Some(b) = base_buf {
                self.give(STORAGE_IN, b);
            }
        }
        Ok(prefix)
    }

    #[allow(clippy::too_many_arguments)]
    fn lowrank(
        &self,
        tensor: &str,
        w: Input<'_>,
        b: Input<'_>,
        a: Input<'_>,
        shape: [usize; 3],
        scale: f32,
        out: &mut [u8],
        out_dtype: DType,
    ) -> Result<()> {
        let [rows, cols, rank] = shape;
        let (dt, osz) = (w.dtype, out_dtype.size());
        // Even rows keep a tile's column pairs inside one output word.
        let tiled = cols % 2 == 0;
        let pipeline = self.pipeline(
            &LOWRANK,
            if tiled { "lowrank_tiled" } else { "lowrank" },
            (dtype_code(tensor, dt)?, dtype_code(tensor, out_dtype)?),
        )?;
        let a_bytes = words_bytes(rank * cols, dt);
        if a_bytes > self.binding_limit {
            return Err(ComputeError::Invalid {
                tensor: tensor.to_owned(),
                detail: "A is larger than one GPU binding".into(),
            });
        }
        let a_buf = self.upload(tensor, &[(0, a.bytes)], a_bytes)?;
        let row_bytes = (cols.max(rank) * dt.size().max(osz)).max(1) as u64 + 4;
        let rows_per = ((self.chunk_limit() / row_bytes) as usize / 2 * 2).max(2);
        if (rows_per * cols) as u64 * 4 > u64::from(u32::MAX) {
            return Err(invalid(tensor, "chunk too large"));
        }
        let mut stream = self.stream(tensor, &pipeline, |i, bytes| {
            let r0 = i * rows_per;
            let len = rows_per.min(rows - r0) * cols;
            let dst = &mut out[r0 * cols * osz..(r0 * cols + len) * osz];
            dst.copy_from_slice(&bytes[..dst.len()]);
            Ok(())
        });
        for r0 in (0..rows).step_by(rows_per) {
            let nr = rows_per.min(rows - r0);
            let len = nr * cols;
            let ob = out_bytes(len, out_dtype);
            let params = LowRankParams {
                len: len as u32,
                cols: cols as u32,
                rank: rank as u32,
                row0: r0 as u32,
                scale,
                pad: [0; 3],
            };
            let ubuf = self.uniform(bytes_of(&params));
            stream.push(Chunk {
                binds: vec![
                    Bind::Buffer(&ubuf, 32),
                    Bind::Upload(vec![(0, part(w, r0 * cols, len))], words_bytes(len, dt)),
                    Bind::Upload(
                        vec![(0, part(b, r0 * rank, nr * rank))],
                        words_bytes(nr * rank, dt),
                    ),
                    Bind::Buffer(&a_buf, a_bytes),
                    Bind::Output(ob),
                ],
                groups: if tiled {
                    groups(tensor, nr.div_ceil(TILE_ROWS) * cols.div_ceil(TILE_COLS), 1)?
                } else {
                    groups(tensor, len.div_ceil(2), WG as usize)?
                },
                read: ob,
            })?;
        }
        stream.finish()?;
        self.give(STORAGE_IN, a_buf);
        Ok(())
    }
}

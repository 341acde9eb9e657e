//! The GPU side of each op: chunking, uploads, dispatch, readback.

use bytemuck::bytes_of;
use theta_shaders::{LOWRANK, MERGE, SELECT, STATS};

use super::{GpuContext, STORAGE_OUT, WG, gpu_err};
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

fn groups(tensor: &str, n: usize, per_group: usize) -> Result<u32> {
    u32::try_from(n.div_ceil(per_group))
        .map_err(|_| invalid(tensor, "too many workgroups for one chunk"))
}

impl GpuContext {
    /// Elements per chunk so that `bytes_per_elem` bytes of each fit a
    /// binding, rounded down to a multiple of `align`.
    fn chunk_elems(&self, tensor: &str, bytes_per_elem: u64, align: usize) -> Result<usize> {
        let ce = (self.binding_limit / bytes_per_elem.max(1)) as usize / align * align;
        if ce == 0 {
            return Err(invalid(
                tensor,
                format!("{bytes_per_elem} bytes per element exceed the device's binding limit"),
            ));
        }
        Ok(ce)
    }
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
        let ce = self.chunk_elems(tensor, per_elem, 2 * WG as usize)?;
        let model_buf = self.uniform(bytemuck::cast_slice(models));
        let osz = out_dtype.size();
        for start in (0..n).step_by(ce) {
            let len = ce.min(n - start);
            let seg = words_bytes(len, in_dt);
            let parts: Vec<(u64, &[u8])> = inputs
                .iter()
                .enumerate()
                .map(|(i, x)| (i as u64 * seg, part(*x, start, len)))
                .collect();
            let input = self.upload(tensor, &parts, seg * m as u64)?;
            let base_buf = match base {
                Some(b) => self.upload(tensor, &[(0, part(b, start, len))], seg)?,
                None => self.upload(tensor, &[(0, &[0u8; 4][..])], 4)?,
            };
            let base_size = if base.is_some() { seg } else { 4 };
            let ob = out_bytes(len, out_dtype);
            let output = self.take(STORAGE_OUT, ob);
            let params = MergeParams {
                len: len as u32,
                seg_words: (seg / 4) as u32,
                offset_lo: start as u32,
                offset_hi: (start as u64 >> 32) as u32,
                ..*p
            };
            let ubuf = self.uniform(bytes_of(&params));
            let dst = &mut out[start * osz..(start + len) * osz];
            self.dispatch(
                tensor,
                &pipeline,
                &[
                    (&ubuf, size_of::<MergeParams>() as u64),
                    (&model_buf, (size_of::<ModelParams>() * m) as u64),
                    (&input, seg * m as u64),
                    (&base_buf, base_size),
                    (&output, ob),
                ],
                groups(tensor, len.div_ceil(2), WG as usize)?,
                ob,
                |bytes| dst.copy_from_slice(&bytes[..dst.len()]),
            )?;
            self.give(super::STORAGE_IN, input);
            self.give(super::STORAGE_IN, base_buf);
            self.give(STORAGE_OUT, output);
        }
        Ok(())
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
        let ce = self.chunk_elems(tensor, per_elem, ops::STATS_BLOCK)?;
        let mut total = StatSums::default();
        for start in (0..n).step_by(ce) {
            let len = ce.min(n - start);
            let seg = words_bytes(len, a.dtype);
            let input = self.upload(
                tensor,
                &[(0, part(a, start, len)), (seg, part(b, start, len))],
                2 * seg,
            )?;
            let base_buf = match base {
                Some(c) => self.upload(tensor, &[(0, part(c, start, len))], seg)?,
                None => self.upload(tensor, &[(0, &[0u8; 4][..])], 4)?,
            };
            let base_size = if base.is_some() { seg } else { 4 };
            let g = groups(tensor, len, ops::STATS_BLOCK)?;
            let (x, y) = self.grid(g);
            let pbytes = (x as u64 * y as u64) * (ops::STATS_PARTIAL_WORDS * 4) as u64;
            let partials = self.take(STORAGE_OUT, pbytes);
            let params = StatsParams {
                len: len as u32,
                seg_words: (seg / 4) as u32,
                has_base: u32::from(base.is_some()),
                pad: 0,
            };
            let ubuf = self.uniform(bytes_of(&params));
            let read = g as u64 * (ops::STATS_PARTIAL_WORDS * 4) as u64;
            self.dispatch(
                tensor,
                &pipeline,
                &[
                    (&ubuf, 16),
                    (&input, 2 * seg),
                    (&base_buf, base_size),
                    (&partials, pbytes),
                ],
                g,
                read,
                |bytes| {
                    let words: &[u32] = bytemuck::cast_slice(&bytes[..read as usize]);
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
                },
            )?;
            total.n += len as u64;
            self.give(super::STORAGE_IN, input);
            self.give(super::STORAGE_IN, base_buf);
            self.give(STORAGE_OUT, partials);
        }
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
        let ce = self.chunk_elems(tensor, x.dtype.size().max(4) as u64, 4 * WG as usize)?;
        let single = n <= ce;
        let mut cached: Option<(wgpu::Buffer, wgpu::Buffer)> = None;
        let mut remaining = k as u64;
        let mut prefix = 0u32;
        for shift in [24u32, 16, 8, 0] {
            let hist = self.take(STORAGE_OUT, 1024);
            let mut enc = self.device.create_command_encoder(&Default::default());
            enc.clear_buffer(&hist, 0, Some(1024));
            self.queue.submit([enc.finish()]);
            let mut counts = [0u32; 256];
            for start in (0..n).step_by(ce) {
                let len = ce.min(n - start);
                let seg = words_bytes(len, x.dtype);
                let (input, base_buf) = match cached.take() {
                    Some(bufs) => bufs,
                    None => (
                        self.upload(tensor, &[(0, part(x, start, len))], seg)?,
                        match base {
                            Some(c) => self.upload(tensor, &[(0, part(c, start, len))], seg)?,
                            None => self.upload(tensor, &[(0, &[0u8; 4][..])], 4)?,
                        },
                    ),
                };
                let base_size = if base.is_some() { seg } else { 4 };
                let params = SelectParams {
                    len: len as u32,
                    has_base: u32::from(base.is_some()),
                    shift,
                    prefix,
                };
                let ubuf = self.uniform(bytes_of(&params));
                self.dispatch(
                    tensor,
                    &pipeline,
                    &[
                        (&ubuf, 16),
                        (&input, seg),
                        (&base_buf, base_size),
                        (&hist, 1024),
                    ],
                    groups(tensor, len, 4 * WG as usize)?,
                    1024,
                    |bytes| counts.copy_from_slice(bytemuck::cast_slice(&bytes[..1024])),
                )?;
                if single {
                    cached = Some((input, base_buf));
                } else {
                    self.give(super::STORAGE_IN, input);
                    self.give(super::STORAGE_IN, base_buf);
                }
            }
            self.give(STORAGE_OUT, hist);
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
        if let Some((input, base_buf)) = cached {
            self.give(super::STORAGE_IN, input);
            self.give(super::STORAGE_IN, base_buf);
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
        let rows_per = ((self.binding_limit / row_bytes) as usize / 2 * 2).max(2);
        if (rows_per * cols) as u64 * 4 > u64::from(u32::MAX) {
            return Err(invalid(tensor, "chunk too large"));
        }
        for r0 in (0..rows).step_by(rows_per) {
            let nr = rows_per.min(rows - r0);
            let len = nr * cols;
            let wb = self.upload(
                tensor,
                &[(0, part(w, r0 * cols, len))],
                words_bytes(len, dt),
            )?;
            let bb = self.upload(
                tensor,
                &[(0, part(b, r0 * rank, nr * rank))],
                words_bytes(nr * rank, dt),
            )?;
            let ob = out_bytes(len, out_dtype);
            let output = self.take(STORAGE_OUT, ob);
            let params = LowRankParams {
                len: len as u32,
                cols: cols as u32,
                rank: rank as u32,
                row0: r0 as u32,
                scale,
                pad: [0; 3],
            };
            let ubuf = self.uniform(bytes_of(&params));
            let dst = &mut out[r0 * cols * osz..(r0 * cols + len) * osz];
            self.dispatch(
                tensor,
                &pipeline,
                &[
                    (&ubuf, 32),
                    (&wb, words_bytes(len, dt)),
                    (&bb, words_bytes(nr * rank, dt)),
                    (&a_buf, a_bytes),
                    (&output, ob),
                ],
                if tiled {
                    groups(tensor, nr.div_ceil(TILE_ROWS) * cols.div_ceil(TILE_COLS), 1)?
                } else {
                    groups(tensor, len.div_ceil(2), WG as usize)?
                },
                ob,
                |bytes| dst.copy_from_slice(&bytes[..dst.len()]),
            )?;
            self.give(super::STORAGE_IN, wb);
            self.give(super::STORAGE_IN, bb);
            self.give(STORAGE_OUT, output);
        }
        self.give(super::STORAGE_IN, a_buf);
        Ok(())
    }
}

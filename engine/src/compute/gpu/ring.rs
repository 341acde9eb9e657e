//! The chunk pipeline: a ring of reused staging, storage and readback
//! buffers, so that chunk i+1 is written and submitted while chunk i runs and
//! chunk i−1 is read back.
//!
//! A [`Stream`] runs one pipeline over a tensor's chunks. [`Stream::push`]
//! takes a free slot, writes the chunk's inputs into the slot's staging
//! buffer (mapped for writing while the slot is idle), and submits the
//! upload copies, the dispatch and the readback copy as one command buffer,
//! asking wgpu to map the staging buffer (write) and the readback buffer
//! (read) again once that submission has completed. A slot is free again
//! when both maps have completed; its readback goes to the consumer then,
//! strictly in chunk order, so results and the order in which they are
//! reduced do not depend on the ring. `push` polls without blocking to
//! retire finished chunks and waits, for the oldest submission only, when
//! all [`RING_DEPTH`] slots are busy.
//!
//! Memory is bounded: a stream owns at most `RING_DEPTH` slots, each one
//! chunk's staging, storage and readback buffers, and a context keeps at
//! most `RING_DEPTH` idle slots for the next stream.

use std::collections::VecDeque;
use std::num::NonZeroU64;
use std::sync::mpsc::{Receiver, TryRecvError, channel};

use super::{GpuContext, POOL_GRANULE, READBACK, STORAGE_IN, STORAGE_OUT, UPLOAD, gpu_err};
use crate::compute::Result;

/// Slots per stream: one being written, one running, one being read back.
pub(super) const RING_DEPTH: usize = 3;

/// Bytes per binding of a pipelined chunk. Overlap needs a tensor to be
/// several chunks, and memory is ring × chunk; a submission's fixed cost
/// (tens of µs) is small against moving 32 MiB (1.3 ms at 25 GB/s).
pub(super) const RING_CHUNK: u64 = 32 << 20;

/// One binding of a chunk's dispatch, in binding order.
pub(super) enum Bind<'a> {
    /// A buffer that outlives the chunk (parameters, A, a histogram),
    /// bound with this many bytes.
    Buffer(&'a wgpu::Buffer, u64),
    /// Bytes at byte offsets, uploaded through the slot's staging buffer
    /// into a slot-owned storage buffer bound with this many bytes.
    Upload(Vec<(u64, &'a [u8])>, u64),
    /// A slot-owned storage buffer of this many bytes for the kernel to
    /// write.
    Output(u64),
}

/// One chunk's work: its bindings, its workgroups, and how many bytes of its
/// last binding to read back (0: none).
pub(super) struct Chunk<'a> {
    pub binds: Vec<Bind<'a>>,
    pub groups: u32,
    pub read: u64,
}

/// The reused buffers of one chunk in flight.
#[derive(Default)]
pub(super) struct Slot {
    /// `UPLOAD` staging for all of a chunk's uploads; mapped while idle.
    staging: Option<wgpu::Buffer>,
    /// One `STORAGE_IN` buffer per [`Bind::Upload`], in order.
    inputs: Vec<wgpu::Buffer>,
    /// One `STORAGE_OUT` buffer per [`Bind::Output`], in order.
    outputs: Vec<wgpu::Buffer>,
    /// `READBACK` buffer; unmapped while idle.
    readback: Option<wgpu::Buffer>,
}

type MapResult = std::result::Result<(), wgpu::BufferAsyncError>;

/// A submitted chunk waiting for its maps.
struct Busy {
    chunk: usize,
    slot: Slot,
    submission: wgpu::SubmissionIndex,
    read: u64,
    maps: Receiver<MapResult>,
    pending: usize,
}

/// A pipelined pass of one kernel over a tensor's chunks (see the module
/// docs). `consume(chunk, bytes)` receives each chunk's readback in order.
pub(super) struct Stream<'g, F> {
    gpu: &'g GpuContext,
    tensor: &'g str,
    pipeline: &'g wgpu::ComputePipeline,
    consume: F,
    free: Vec<Slot>,
    busy: VecDeque<Busy>,
    /// Index of the next chunk pushed.
    next: usize,
}

/// `bytes` rounded up to whole u32 words, at least one.
fn words(bytes: u64) -> u64 {
    bytes.max(4).next_multiple_of(4)
}

impl GpuContext {
    /// A stream of `pipeline` over the chunks of `tensor`.
    pub(super) fn stream<'g, F>(
        &'g self,
        tensor: &'g str,
        pipeline: &'g wgpu::ComputePipeline,
        consume: F,
    ) -> Stream<'g, F>
    where
        F: FnMut(usize, &[u8]) -> Result<()>,
    {
        Stream {
            gpu: self,
            tensor,
            pipeline,
            consume,
            free: Vec::new(),
            busy: VecDeque::new(),
            next: 0,
        }
    }

    fn take_slot(&self) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.pop().unwrap_or_default()
    }

    fn give_slot(&self, slot: Slot) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if slots.len() < RING_DEPTH {
            slots.push(slot);
        }
    }

    /// A staging buffer of at least `size` bytes, mapped for writing.
    fn mapped_staging(&self, size: u64) -> wgpu::Buffer {
        let rounded = size.next_multiple_of(POOL_GRANULE);
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("ring staging"),
            size: if rounded <= self.info.max_buffer {
                rounded
            } else {
                size
            },
            usage: UPLOAD,
            mapped_at_creation: true,
        })
    }
}

/// `buffers[i]`, replaced by a pooled buffer of `usage` if it is missing or
/// smaller than `size`.
fn ensure(
    gpu: &GpuContext,
    buffers: &mut Vec<wgpu::Buffer>,
    i: usize,
    usage: wgpu::BufferUsages,
    size: u64,
) {
    if i == buffers.len() {
        buffers.push(gpu.take(usage, size));
    } else if buffers[i].size() < size {
        let old = std::mem::replace(&mut buffers[i], gpu.take(usage, size));
        gpu.give(usage, old);
    }
}

impl Slot {
    /// Sizes the slot's buffers for `binds` and a `read`-byte readback, and
    /// writes the uploads one after another into the staging buffer.
    /// Returns each upload's (offset, size) in the staging buffer.
    fn stage(
        &mut self,
        gpu: &GpuContext,
        tensor: &str,
        binds: &[Bind<'_>],
        read: u64,
    ) -> Result<Vec<(u64, u64)>> {
        let mut areas = Vec::new();
        let mut staged = 0;
        for b in binds {
            if let Bind::Upload(_, size) = b {
                areas.push((staged, words(*size)));
                staged += words(*size);
            }
        }
        if staged > 0 {
            if self.staging.as_ref().is_none_or(|s| s.size() < staged) {
                self.staging = Some(gpu.mapped_staging(staged));
            }
            let staging = self.staging.as_ref().expect("staging was just ensured");
            {
                let mut view = staging
                    .get_mapped_range_mut(0..staged)
                    .map_err(|e| gpu_err(tensor, e))?;
                let uploads = binds.iter().filter_map(|b| match b {
                    Bind::Upload(parts, _) => Some(parts),
                    _ => None,
                });
                for (parts, (at, _)) in uploads.zip(&areas) {
                    for (off, bytes) in parts {
                        let start = (at + off) as usize;
                        view.slice(start..start + bytes.len())
                            .copy_from_slice(bytes);
                    }
                }
            }
            staging.unmap();
        }
        for (i, (_, size)) in areas.iter().enumerate() {
            ensure(gpu, &mut self.inputs, i, STORAGE_IN, *size);
        }
        let outputs = binds.iter().filter_map(|b| match b {
            Bind::Output(size) => Some(words(*size)),
            _ => None,
        });
        for (i, size) in outputs.enumerate() {
            ensure(gpu, &mut self.outputs, i, STORAGE_OUT, size);
        }
        if read > 0 && self.readback.as_ref().is_none_or(|r| r.size() < read) {
            let fresh = gpu.take(READBACK, read);
            if let Some(old) = self.readback.replace(fresh) {
                gpu.give(READBACK, old);
            }
        }
        Ok(areas)
    }

    /// The buffer and bound size of each of `binds`, in binding order.
    fn bound<'s>(&'s self, binds: &[Bind<'s>]) -> Vec<(&'s wgpu::Buffer, u64)> {
        let (mut inputs, mut outputs) = (self.inputs.iter(), self.outputs.iter());
        binds
            .iter()
            .map(|b| match b {
                Bind::Buffer(buffer, size) => (*buffer, words(*size)),
                Bind::Upload(_, size) => (inputs.next().expect("staged"), words(*size)),
                Bind::Output(size) => (outputs.next().expect("staged"), words(*size)),
            })
            .collect()
    }
}

impl<F> Stream<'_, F>
where
    F: FnMut(usize, &[u8]) -> Result<()>,
{
    /// Writes and submits the next chunk, first handing every finished
    /// chunk's readback to the consumer.
    pub(super) fn push(&mut self, chunk: Chunk<'_>) -> Result<()> {
        self.gpu
            .device
            .poll(wgpu::PollType::Poll)
            .map_err(|e| gpu_err(self.tensor, e))?;
        while self.busy.front().is_some() && self.retire(false)? {}
        let mut slot = loop {
            if let Some(s) = self.free.pop() {
                break s;
            }
            // No slot is free: all the slots this stream has are busy (a
            // slot lost to an error no longer counts).
            if self.busy.len() < RING_DEPTH {
                break self.gpu.take_slot();
            }
            self.retire(true)?;
        };
        // A failure below drops `slot`: its buffers are in an unknown state.
        let Chunk {
            binds,
            groups,
            read,
        } = chunk;
        let read = if read > 0 { words(read) } else { 0 };
        let gpu = self.gpu;
        let areas = slot.stage(gpu, self.tensor, &binds, read)?;

        let scope = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let bound = slot.bound(&binds);
        let entries: Vec<wgpu::BindGroupEntry<'_>> = bound
            .iter()
            .enumerate()
            .map(|(i, (buffer, size))| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer,
                    offset: 0,
                    size: NonZeroU64::new(*size),
                }),
            })
            .collect();
        let bind_group = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &self.pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        let staging = slot.staging.as_ref().filter(|_| !areas.is_empty());
        if let Some(staging) = staging {
            for (input, (at, size)) in slot.inputs.iter().zip(&areas) {
                enc.copy_buffer_to_buffer(staging, *at, input, 0, *size);
            }
        }
        {
            let (x, y) = gpu.grid(groups);
            let mut pass = enc.begin_compute_pass(&Default::default());
            pass.set_pipeline(self.pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(x, y, 1);
        }
        let (tx, maps) = channel();
        let mut pending = 0;
        if let (Some(readback), Some((last, _))) = (slot.readback.as_ref(), bound.last())
            && read > 0
        {
            enc.copy_buffer_to_buffer(last, 0, readback, 0, read);
            let tx = tx.clone();
            enc.map_buffer_on_submit(readback, wgpu::MapMode::Read, 0..read, move |r| {
                let _ = tx.send(r);
            });
            pending += 1;
        }
        if let Some(staging) = staging {
            enc.map_buffer_on_submit(staging, wgpu::MapMode::Write, .., move |r| {
                let _ = tx.send(r);
            });
            pending += 1;
        }
        let submission = gpu.queue.submit([enc.finish()]);
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(gpu_err(self.tensor, e));
        }
        self.busy.push_back(Busy {
            chunk: self.next,
            slot,
            submission,
            read,
            maps,
            pending,
        });
        self.next += 1;
        Ok(())
    }

    /// Waits for every chunk and hands the remaining readbacks over.
    pub(super) fn finish(mut self) -> Result<()> {
        while !self.busy.is_empty() {
            self.retire(true)?;
        }
        Ok(())
    }

    /// Retires the oldest busy chunk if its maps have completed (waiting for
    /// its submission when `wait`): consumes its readback and frees its slot.
    /// Returns whether it was retired.
    fn retire(&mut self, wait: bool) -> Result<bool> {
        let tensor = self.tensor;
        let Some(oldest) = self.busy.front_mut() else {
            return Ok(false);
        };
        let dropped = || gpu_err(tensor, "a buffer map was dropped");
        loop {
            match oldest.maps.try_recv() {
                Ok(r) => {
                    r.map_err(|e| gpu_err(tensor, e))?;
                    oldest.pending -= 1;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) if oldest.pending == 0 => break,
                Err(TryRecvError::Disconnected) => return Err(dropped()),
            }
        }
        if oldest.pending > 0 {
            if !wait {
                return Ok(false);
            }
            self.gpu
                .device
                .poll(wgpu::PollType::Wait {
                    submission_index: Some(oldest.submission.clone()),
                    timeout: None,
                })
                .map_err(|e| gpu_err(tensor, e))?;
            // The submission is done, so its maps have been delivered, or
            // are being delivered by another thread's poll: block for them.
            for _ in 0..oldest.pending {
                oldest
                    .maps
                    .recv()
                    .map_err(|_| dropped())?
                    .map_err(|e| gpu_err(tensor, e))?;
            }
        }
        let done = self.busy.pop_front().expect("the oldest chunk is there");
        let mut consumed = Ok(());
        if let Some(readback) = done.slot.readback.as_ref().filter(|_| done.read > 0) {
            {
                let view = readback
                    .get_mapped_range(0..done.read)
                    .map_err(|e| gpu_err(tensor, e))?;
                consumed = (self.consume)(done.chunk, &view);
            }
            readback.unmap();
        }
        self.free.push(done.slot);
        consumed.map(|()| true)
    }
}

impl<F> Drop for Stream<'_, F> {
    /// Keeps the idle slots for the next stream; busy ones (only left after
    /// an error) are dropped with their buffers.
    fn drop(&mut self) {
        for slot in self.free.drain(..) {
            self.gpu.give_slot(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use bytemuck::bytes_of;
    use theta_shaders::STATS;

    use super::*;
    use crate::compute::ComputeError;
    use crate::compute::ops::{STATS_BLOCK, STATS_PARTIAL_WORDS, StatsParams};

    /// Blocks per chunk: with 2 workgroups per dimension, a 2 × 2 grid.
    const BLOCKS: usize = 3;
    const PARTIAL: u64 = (STATS_PARTIAL_WORDS * 4) as u64;

    /// The shared GPU, or `None` (saying why) when there is none and
    /// `THETA_REQUIRE_GPU` is not 1.
    fn gpu() -> Option<std::sync::Arc<GpuContext>> {
        match GpuContext::shared() {
            Ok(g) => Some(g),
            Err(e) => {
                assert!(
                    std::env::var("THETA_REQUIRE_GPU").as_deref() != Ok("1"),
                    "THETA_REQUIRE_GPU=1 but {e}"
                );
                eprintln!("GPU test skipped: {e}");
                None
            }
        }
    }

    /// Streams `chunks` chunks of the stats kernel whose `a` is all `i + 1`
    /// in chunk `i` (and `b` zero), binding an oversized base on chunk
    /// `bad`; returns the chunks consumed, checking each one's Σ a².
    fn run(
        gpu: &GpuContext,
        tensor: &str,
        chunks: usize,
        bad: Option<usize>,
        fail_at: Option<usize>,
    ) -> (Vec<usize>, Result<()>) {
        let pipeline = gpu.pipeline(&STATS, "stats", (0, 0)).expect("pipeline");
        let len = BLOCKS * STATS_BLOCK;
        let zero = gpu.uniform(&[0u8; 4]);
        let b = vec![0f32; len];
        let a: Vec<Vec<f32>> = (0..chunks).map(|i| vec![(i + 1) as f32; len]).collect();
        let mut seen = Vec::new();
        let mut stream = gpu.stream(tensor, &pipeline, |i, bytes| {
            let words: &[u32] = bytemuck::cast_slice(bytes);
            assert_eq!(words.len(), BLOCKS * STATS_PARTIAL_WORDS);
            let v = (i + 1) as f32;
            for w in words.chunks_exact(STATS_PARTIAL_WORDS) {
                assert_eq!(
                    f32::from_bits(w[0]),
                    v * v * STATS_BLOCK as f32,
                    "chunk {i}"
                );
            }
            seen.push(i);
            if fail_at == Some(i) {
                return Err(gpu_err("consumer", "refused"));
            }
            Ok(())
        });
        let seg = (len * 4) as u64;
        let params = StatsParams {
            len: len as u32,
            seg_words: (seg / 4) as u32,
            has_base: 0,
            pad: 0,
        };
        let ubuf = gpu.uniform(bytes_of(&params));
        let mut result = Ok(());
        for (i, a) in a.iter().enumerate() {
            let base_size = if bad == Some(i) { 1 << 20 } else { 4 };
            let groups = BLOCKS as u32;
            let (x, y) = gpu.grid(groups);
            result = stream.push(Chunk {
                binds: vec![
                    Bind::Buffer(&ubuf, 16),
                    Bind::Upload(
                        vec![
                            (0, bytemuck::cast_slice(a)),
                            (seg, bytemuck::cast_slice(&b)),
                        ],
                        2 * seg,
                    ),
                    Bind::Buffer(&zero, base_size),
                    Bind::Output(u64::from(x * y) * PARTIAL),
                ],
                groups,
                read: u64::from(groups) * PARTIAL,
            });
            if result.is_err() {
                break;
            }
        }
        if result.is_ok() {
            result = stream.finish();
        } else {
            drop(stream);
        }
        (seen, result)
    }

    #[test]
    fn gpu_ring_consumes_every_chunk_in_order() {
        let Some(shared) = gpu() else { return };
        let gpu = shared.with_limits(1 << 20, 2);
        // Fewer chunks than slots, as many, one more, and many laps.
        for chunks in [0, 1, 2, RING_DEPTH, RING_DEPTH + 1, 4 * RING_DEPTH + 1] {
            let (seen, r) = run(&gpu, "t", chunks, None, None);
            r.expect("stream");
            assert_eq!(seen, (0..chunks).collect::<Vec<_>>());
            // Slots are reused as soon as they are free, so a short stream
            // may need fewer than one per chunk; never more than the ring.
            let kept = gpu.slots.lock().expect("slots").len();
            assert!(
                (chunks.min(1)..=RING_DEPTH).contains(&kept),
                "{kept} idle slots after {chunks} chunks"
            );
        }
    }

    #[test]
    fn gpu_ring_error_mid_stream_names_the_tensor_and_leaves_the_context_usable() {
        let Some(shared) = gpu() else { return };
        let gpu = shared.with_limits(1 << 20, 2);
        let (seen, r) = run(&gpu, "layers.3.w", 2 * RING_DEPTH, Some(RING_DEPTH), None);
        match r {
            Err(ComputeError::Gpu { tensor, .. }) => assert_eq!(tensor, "layers.3.w"),
            other => panic!("expected a GPU error naming the tensor, got {other:?}"),
        }
        // Only chunks before the bad one, in order (the rest were dropped).
        assert_eq!(seen, (0..seen.len()).collect::<Vec<_>>());
        assert!(seen.len() <= RING_DEPTH);
        // A consumer's error stops the stream at that chunk.
        let (seen, r) = run(&gpu, "t", 3 * RING_DEPTH, None, Some(2));
        assert!(matches!(r, Err(ComputeError::Gpu { tensor, .. }) if tensor == "consumer"));
        assert_eq!(seen, [0, 1, 2]);
        // The pooled slots still work.
        let (seen, r) = run(&gpu, "t", 2 * RING_DEPTH + 1, None, None);
        r.expect("stream after errors");
        assert_eq!(seen, (0..2 * RING_DEPTH + 1).collect::<Vec<_>>());
    }
}

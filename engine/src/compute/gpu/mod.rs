//! The GPU backend: one wgpu device per process, a pipeline cache keyed by
//! (shader, entry, dtypes, workgroup size), pooled staging and storage
//! buffers, chunking to the storage-binding limit and 2-D dispatch. Chunk
//! loops run through a ring of reused buffers that overlaps upload, compute
//! and readback (`ring.rs`).

mod kernels;
mod ring;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use theta_shaders::Shader;
use wgpu::util::DeviceExt;

use super::device::GpuInfo;
use super::{ComputeError, Result};

/// Threads per workgroup of every kernel (`WG` in the shaders).
pub(crate) const WG: u32 = 256;
/// Pooled buffers are rounded up to this many bytes so they can be reused.
const POOL_GRANULE: u64 = 1 << 20;
/// Most idle buffers kept for reuse.
const POOL_MAX: usize = 12;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct PipelineKey {
    shader: &'static str,
    entry: &'static str,
    dtypes: (u32, u32),
    workgroup: u32,
}

/// A GPU opened through wgpu, with its caches.
pub struct GpuContext {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: GpuInfo,
    /// Bytes per storage binding (chunk size bound).
    binding_limit: u64,
    /// Workgroups per dispatch dimension.
    max_groups: u32,
    pipelines: Mutex<HashMap<PipelineKey, wgpu::ComputePipeline>>,
    pool: Mutex<Vec<(wgpu::BufferUsages, wgpu::Buffer)>>,
    /// Idle ring slots, kept for the next stream.
    slots: Mutex<Vec<ring::Slot>>,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("info", &self.info)
            .finish()
    }
}

fn rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

impl GpuContext {
    /// The process's GPU, opened on first use. Software adapters (Mesa
    /// lavapipe) are accepted when nothing better is present.
    pub fn shared() -> Result<Arc<GpuContext>> {
        static SHARED: OnceLock<std::result::Result<Arc<GpuContext>, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| GpuContext::open().map(Arc::new))
            .clone()
            .map_err(|reason| ComputeError::NoAdapter { reason })
    }

    fn open() -> std::result::Result<GpuContext, String> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12;
        let instance = wgpu::Instance::new(desc);
        let mut adapters = pollster::block_on(instance.enumerate_adapters(desc_backends()));
        if adapters.is_empty() {
            return Err("no Vulkan, Metal or DX12 adapter found".into());
        }
        adapters.sort_by_key(|a| rank(a.get_info().device_type));
        let adapter = adapters.swap_remove(0);
        let ai = adapter.get_info();
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("theta"),
            required_features: wgpu::Features::empty(),
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| format!("{}: {e}", ai.name))?;
        let info = GpuInfo {
            name: ai.name.clone(),
            backend: format!("{:?}", ai.backend),
            device_type: format!("{:?}", ai.device_type),
            driver: format!("{} {}", ai.driver, ai.driver_info)
                .trim()
                .to_owned(),
            max_binding: limits.max_storage_buffer_binding_size,
            max_buffer: limits.max_buffer_size,
            max_workgroups_per_dim: limits.max_compute_workgroups_per_dimension,
            max_invocations: limits.max_compute_invocations_per_workgroup,
        };
        let binding_limit = info.max_binding.min(info.max_buffer) & !3;
        Ok(GpuContext {
            device,
            queue,
            binding_limit,
            max_groups: info.max_workgroups_per_dim,
            info,
            pipelines: Mutex::default(),
            pool: Mutex::default(),
            slots: Mutex::default(),
        })
    }

    /// The adapter's description.
    pub fn info(&self) -> &GpuInfo {
        &self.info
    }

    /// A context on the same device with smaller limits: chunks of at most
    /// `binding_bytes` per binding and `max_groups` workgroups per dispatch
    /// dimension. For tests of chunking and 2-D dispatch.
    pub fn with_limits(&self, binding_bytes: u64, max_groups: u32) -> GpuContext {
        GpuContext {
            device: self.device.clone(),
            queue: self.queue.clone(),
            info: self.info.clone(),
            binding_limit: binding_bytes.min(self.binding_limit) & !3,
            max_groups: max_groups.clamp(1, self.max_groups),
            pipelines: Mutex::default(),
            pool: Mutex::default(),
            slots: Mutex::default(),
        }
    }

    /// Waits until the GPU has finished all submitted work.
    pub fn sync(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| gpu_err("<sync>", e))
    }

    fn pipeline(
        &self,
        shader: &'static Shader,
        entry: &'static str,
        dtypes: (u32, u32),
    ) -> Result<wgpu::ComputePipeline> {
        let key = PipelineKey {
            shader: shader.name,
            entry,
            dtypes,
            workgroup: WG,
        };
        let mut cache = self.pipelines.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = cache.get(&key) {
            return Ok(p.clone());
        }
        let mut constants = vec![("WG", f64::from(WG)), ("IN_DT", f64::from(dtypes.0))];
        if shader.source.contains("override OUT_DT") {
            constants.push(("OUT_DT", f64::from(dtypes.1)));
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(shader.name),
                source: wgpu::ShaderSource::Wgsl(shader.source.into()),
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: None,
                module: &module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &constants,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(ComputeError::Shader {
                shader: shader.name,
                entry,
                detail: e.to_string(),
            });
        }
        cache.insert(key, pipeline.clone());
        Ok(pipeline)
    }

    /// A pooled buffer of at least `size` bytes with exactly `usage`.
    fn take(&self, usage: wgpu::BufferUsages, size: u64) -> wgpu::Buffer {
        let size = size.max(4).next_multiple_of(4);
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        let best = pool
            .iter()
            .enumerate()
            .filter(|(_, (u, b))| *u == usage && b.size() >= size)
            .min_by_key(|(_, (_, b))| b.size())
            .map(|(i, _)| i);
        if let Some(i) = best {
            return pool.swap_remove(i).1;
        }
        drop(pool);
        let rounded = size.next_multiple_of(POOL_GRANULE);
        let size = if rounded <= self.info.max_buffer {
            rounded
        } else {
            size
        };
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage,
            mapped_at_creation: false,
        })
    }

    fn give(&self, usage: wgpu::BufferUsages, buffer: wgpu::Buffer) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() >= POOL_MAX {
            pool.remove(0);
        }
        pool.push((usage, buffer));
    }

    fn map(
        &self,
        tensor: &str,
        buffer: &wgpu::Buffer,
        mode: wgpu::MapMode,
        size: u64,
    ) -> Result<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        buffer.map_async(mode, 0..size, move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| gpu_err(tensor, e))?;
        match rx.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(gpu_err(tensor, e)),
            Err(e) => Err(gpu_err(tensor, e)),
        }
    }

    /// Uploads `parts` (bytes at byte offsets) into a pooled storage buffer
    /// of at least `size` bytes, through a pooled, reused staging buffer.
    fn upload(&self, tensor: &str, parts: &[(u64, &[u8])], size: u64) -> Result<wgpu::Buffer> {
        let size = size.max(4).next_multiple_of(4);
        let dst = self.take(STORAGE_IN, size);
        let staging = self.take(UPLOAD, size);
        self.map(tensor, &staging, wgpu::MapMode::Write, size)?;
        {
            let mut view = staging
                .get_mapped_range_mut(0..size)
                .map_err(|e| gpu_err(tensor, e))?;
            for (off, bytes) in parts {
                let off = *off as usize;
                view.slice(off..off + bytes.len()).copy_from_slice(bytes);
            }
        }
        staging.unmap();
        let mut enc = self.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(&staging, 0, &dst, 0, size);
        self.queue.submit([enc.finish()]);
        self.give(UPLOAD, staging);
        Ok(dst)
    }

    fn uniform(&self, bytes: &[u8]) -> wgpu::Buffer {
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytes,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::STORAGE,
            })
    }

    /// The (x, y) workgroup grid for `groups` workgroups.
    fn grid(&self, groups: u32) -> (u32, u32) {
        if groups <= self.max_groups {
            (groups.max(1), 1)
        } else {
            (self.max_groups, groups.div_ceil(self.max_groups))
        }
    }
}

const STORAGE_IN: wgpu::BufferUsages =
    wgpu::BufferUsages::STORAGE.union(wgpu::BufferUsages::COPY_DST);
const STORAGE_OUT: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);
const UPLOAD: wgpu::BufferUsages =
    wgpu::BufferUsages::MAP_WRITE.union(wgpu::BufferUsages::COPY_SRC);
const READBACK: wgpu::BufferUsages =
    wgpu::BufferUsages::MAP_READ.union(wgpu::BufferUsages::COPY_DST);

fn desc_backends() -> wgpu::Backends {
    wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12
}

fn gpu_err(tensor: &str, e: impl std::fmt::Display) -> ComputeError {
    ComputeError::Gpu {
        tensor: tensor.to_owned(),
        detail: e.to_string(),
    }
}

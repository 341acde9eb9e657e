//! Choosing where kernels run.

use std::fmt;
use std::sync::Arc;

use super::gpu::GpuContext;
use super::{ComputeError, Result};

/// Where kernels run.
#[derive(Clone)]
pub enum Device {
    /// The CPU, with rayon.
    Cpu,
    /// A GPU through wgpu (one context per process).
    Gpu(Arc<GpuContext>),
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())
    }
}

/// A device as asked for: `--device` or `THETA_DEVICE`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceChoice {
    /// A GPU if an adapter is found, else the CPU.
    #[default]
    Auto,
    /// A GPU, or an error.
    Gpu,
    /// The CPU.
    Cpu,
}

impl std::str::FromStr for DeviceChoice {
    type Err = ComputeError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(DeviceChoice::Auto),
            "gpu" => Ok(DeviceChoice::Gpu),
            "cpu" => Ok(DeviceChoice::Cpu),
            _ => Err(ComputeError::UnknownDevice(s.to_owned())),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceChoice::Auto => "auto",
            DeviceChoice::Gpu => "gpu",
            DeviceChoice::Cpu => "cpu",
        })
    }
}

/// What the chosen GPU adapter is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuInfo {
    /// Adapter name.
    pub name: String,
    /// Vulkan, Metal or Dx12.
    pub backend: String,
    /// Discrete, integrated, virtual or CPU (software, like lavapipe).
    pub device_type: String,
    /// Driver name and version.
    pub driver: String,
    /// Largest storage binding, bytes: tensors are chunked to it.
    pub max_binding: u64,
    /// Largest buffer, bytes.
    pub max_buffer: u64,
    /// Most workgroups per dispatch dimension.
    pub max_workgroups_per_dim: u32,
    /// Most invocations per workgroup.
    pub max_invocations: u32,
}

fn require_gpu() -> bool {
    std::env::var("THETA_REQUIRE_GPU").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

impl Device {
    /// The GPU, opened once per process.
    pub fn gpu() -> Result<Device> {
        GpuContext::shared().map(Device::Gpu)
    }

    /// A GPU if a hardware adapter is found, else the CPU with the reason
    /// why (an error instead when `THETA_REQUIRE_GPU=1`). A software adapter
    /// (Mesa's lavapipe, WARP) is slower than the CPU path, so `auto` passes
    /// it over unless `THETA_REQUIRE_GPU=1` asks for the GPU path (as CI does
    /// to test the shaders); `--device gpu` uses it too.
    pub fn auto() -> Result<(Device, Option<String>)> {
        match Device::gpu() {
            Ok(Device::Gpu(g)) if g.info().device_type == "Cpu" && !require_gpu() => {
                let why = format!(
                    "the only GPU adapter, {}, renders in software and is slower than the CPU path (--device gpu uses it anyway)",
                    g.info().name
                );
                Ok((Device::Cpu, Some(why)))
            }
            Ok(d) => Ok((d, None)),
            Err(e) if require_gpu() => Err(e),
            Err(e) => Ok((Device::Cpu, Some(e.to_string()))),
        }
    }

    /// The device for `choice`; `THETA_REQUIRE_GPU=1` makes `auto` demand one.
    pub fn select(choice: DeviceChoice) -> Result<(Device, Option<String>)> {
        match choice {
            DeviceChoice::Auto => Device::auto(),
            DeviceChoice::Gpu => Device::gpu().map(|d| (d, None)),
            DeviceChoice::Cpu => Ok((Device::Cpu, None)),
        }
    }

    /// The device named by `flag` if given, else by `THETA_DEVICE`, else auto.
    pub fn from_env(flag: Option<DeviceChoice>) -> Result<(Device, Option<String>)> {
        let choice = match flag {
            Some(c) => c,
            None => match std::env::var("THETA_DEVICE") {
                Ok(v) => v.parse()?,
                Err(_) => DeviceChoice::Auto,
            },
        };
        Device::select(choice)
    }

    /// "cpu" or "gpu (adapter name)".
    pub fn name(&self) -> String {
        match self {
            Device::Cpu => format!("cpu ({} threads)", rayon::current_num_threads()),
            Device::Gpu(g) => format!("gpu ({})", g.info().name),
        }
    }

    /// Short label for bench ids: "cpu" or "gpu".
    pub fn label(&self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Gpu(_) => "gpu",
        }
    }
}

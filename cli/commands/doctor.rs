//! `git theta doctor`: what compute device git-theta finds and will use,
//! and [`DeviceArgs`], the `--device` flag every computing command flattens in.

use theta_engine::compute::{Device, DeviceChoice, GpuContext};

/// `--device auto|gpu|cpu`, for every command that computes. Without it,
/// `THETA_DEVICE` decides, then `auto`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DeviceArgs {
    /// Where tensor math runs: auto (a GPU if found), gpu or cpu [env: THETA_DEVICE].
    #[arg(long, value_parser = parse_choice)]
    pub device: Option<DeviceChoice>,
}

fn parse_choice(s: &str) -> Result<DeviceChoice, String> {
    s.parse()
        .map_err(|e: theta_engine::compute::ComputeError| e.to_string())
}

impl DeviceArgs {
    /// The device to use; says on stderr when `auto` fell back to the CPU.
    pub fn device(&self) -> anyhow::Result<Device> {
        let (device, why_cpu) = Device::from_env(self.device)?;
        if let Some(reason) = why_cpu {
            eprintln!("git-theta: using the CPU: {reason}");
        }
        Ok(device)
    }
}

/// Arguments of `doctor`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The device choice to report on.
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// Prints the adapter, its limits and the device commands will use.
pub fn run(args: &Args) -> anyhow::Result<()> {
    match GpuContext::shared() {
        Ok(gpu) => {
            let i = gpu.info();
            println!("gpu adapter:     {}", i.name);
            println!("backend:         {}", i.backend);
            println!("device type:     {}", i.device_type);
            println!("driver:          {}", i.driver);
            println!(
                "max binding:     {} MiB (tensors are chunked to it)",
                i.max_binding >> 20
            );
            println!("max buffer:      {} MiB", i.max_buffer >> 20);
            println!(
                "max workgroups:  {} per dimension (2-D dispatch past it)",
                i.max_workgroups_per_dim
            );
            println!("max invocations: {} per workgroup", i.max_invocations);
        }
        Err(e) => println!("gpu adapter:     none ({e})"),
    }
    println!("cpu threads:     {}", rayon_threads());
    let choice = match args.device.device {
        Some(c) => c.to_string(),
        None => std::env::var("THETA_DEVICE")
            .map_or_else(|_| "auto".to_owned(), |v| format!("{v} (THETA_DEVICE)")),
    };
    match Device::from_env(args.device.device) {
        Ok((d, why)) => {
            println!("commands will use: {} [--device {choice}]", d.name());
            if let Some(reason) = why {
                println!("  (fell back to the CPU: {reason})");
            }
        }
        Err(e) => println!("commands will fail: {e} [--device {choice}]"),
    }
    Ok(())
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

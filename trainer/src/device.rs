//! `--device` parsing.

use anyhow::{bail, Context, Result};
use candle_core::Device;

/// Parses `cpu`, `cuda` or `cuda:N` and opens the device.
pub fn parse(spec: &str) -> Result<Device> {
    let s = spec.trim().to_ascii_lowercase();
    if s == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal: usize = if s == "cuda" || s == "gpu" {
        0
    } else if let Some(n) = s.strip_prefix("cuda:") {
        n.parse()
            .with_context(|| format!("bad device '{spec}': expected cuda:N with N a GPU number"))?
    } else {
        bail!("unknown device '{spec}': use cpu, cuda or cuda:N");
    };
    if !cfg!(feature = "cuda") {
        bail!(
            "--device {spec}: this trainer was built without CUDA support; rebuild it with \
             `cargo build --release -p trainer --features cuda`, or use --device cpu"
        );
    }
    Device::new_cuda(ordinal).with_context(|| {
        format!("cannot open CUDA device {ordinal} (is the driver loaded and the GPU visible?)")
    })
}

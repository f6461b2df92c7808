//! Where the engine runs, and the one place a device value becomes a typed backend.
//!
//! Code that runs a model is written once, generic over [`Backend`], as an [`OnDevice`] job;
//! [`Device::run`] makes the backend the device names and hands it to the job. Every command and
//! stage that touches a model goes through it, so a new backend (or a new precision) is added here
//! and nowhere else, and "this build has no CUDA" is said in one place.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Backend, Cpu};

/// Where the model runs: `"cpu"`, `"cuda"` (the first GPU) or `"cuda:N"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(with = "String")]
pub enum Device {
    #[default]
    Cpu,
    /// An NVIDIA GPU by its CUDA ordinal (needs a build with `--features cuda`).
    Cuda(usize),
}

/// What a job may want to know about the device it was given.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceInfo {
    pub device: Device,
    /// `cpu`, or the GPU's name.
    pub name: String,
    /// The GPU's nominal bf16 peak (GFLOP/s), when its model is known.
    pub bf16_peak_gflops: Option<f64>,
}

impl Device {
    /// The device of rank `local_rank` among a machine's ranks: GPU `N + local_rank` for
    /// `cuda:N` (one GPU per rank), the CPU for the CPU.
    pub fn offset(self, local_rank: usize) -> Device {
        match self {
            Device::Cpu => Device::Cpu,
            Device::Cuda(ordinal) => Device::Cuda(ordinal.saturating_add(local_rank)),
        }
    }
}

impl DeviceInfo {
    pub fn is_gpu(&self) -> bool {
        matches!(self.device, Device::Cuda(_))
    }
}

/// Work to run on whichever backend a [`Device`] names.
pub trait OnDevice {
    type Output;
    fn run<B: Backend<Float = f32>>(self, backend: B, info: &DeviceInfo) -> Self::Output;
}

/// Why a device could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(
        "the device {0} needs CUDA, but this tinyllm was built without it: rebuild with `cargo build --release --features cuda`, or use the device cpu"
    )]
    NoCudaBuild(Device),
    #[cfg(feature = "cuda")]
    #[error(transparent)]
    Cuda(#[from] super::cuda::CudaError),
}

impl Device {
    /// Makes this device's backend and runs `job` on it.
    pub fn run<J: OnDevice>(self, job: J) -> Result<J::Output, DeviceError> {
        match self {
            Device::Cpu => {
                let info = DeviceInfo {
                    device: self,
                    name: "cpu".into(),
                    bf16_peak_gflops: None,
                };
                Ok(job.run(Cpu::<f32>::new(), &info))
            }
            #[cfg(feature = "cuda")]
            Device::Cuda(ordinal) => {
                let gpu = super::Cuda::new(ordinal)?;
                let info = DeviceInfo {
                    device: self,
                    name: gpu.device_name().to_string(),
                    bf16_peak_gflops: gpu.bf16_peak_gflops(),
                };
                Ok(job.run(gpu, &info))
            }
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(_) => Err(DeviceError::NoCudaBuild(self)),
        }
    }
}

impl FromStr for Device {
    type Err = String;
    fn from_str(text: &str) -> Result<Device, String> {
        match text {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => text
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| {
                    format!("{text:?} is not a device: use \"cpu\", \"cuda\" or \"cuda:N\"")
                }),
        }
    }
}

impl TryFrom<String> for Device {
    type Error = String;
    fn try_from(text: String) -> Result<Device, String> {
        text.parse()
    }
}

impl From<Device> for String {
    fn from(device: Device) -> String {
        device.to_string()
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(0) => f.write_str("cuda"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_print_back() {
        for (text, device) in [
            ("cpu", Device::Cpu),
            ("cuda", Device::Cuda(0)),
            ("cuda:3", Device::Cuda(3)),
        ] {
            assert_eq!(text.parse::<Device>(), Ok(device));
            assert_eq!(device.to_string(), text);
        }
        assert_eq!("cuda:0".parse::<Device>(), Ok(Device::Cuda(0)));
        for bad in ["gpu", "cuda:", "cuda:x", "CPU"] {
            let error = bad.parse::<Device>().unwrap_err();
            assert!(error.contains("is not a device"), "{error}");
        }
    }

    struct Name;
    impl OnDevice for Name {
        type Output = String;
        fn run<B: Backend<Float = f32>>(self, backend: B, info: &DeviceInfo) -> String {
            let buf = backend.upload(&[1.0, 2.0]).unwrap();
            format!("{} {}", info.name, backend.len(&buf))
        }
    }

    #[test]
    fn the_cpu_runs_a_job_and_a_missing_gpu_is_an_error() {
        assert_eq!(Device::Cpu.run(Name).unwrap(), "cpu 2");
        // Without the feature the error says how to build with it; with it, it says what is
        // missing (a driver, or an eighth GPU). Either way it is an error, not a panic.
        let error = Device::Cuda(7).run(Name).unwrap_err().to_string();
        assert!(
            error.contains("--features cuda")
                || error.contains("driver")
                || error.contains("no CUDA device"),
            "{error}"
        );
    }
}

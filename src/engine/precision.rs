//! The precision of the matmuls: f32 throughout, or bf16 operands with f32 accumulation (the
//! mixed precision of PyTorch's autocast and llm.c), resolved once from the user's setting.
//!
//! Under bf16 the master weights, gradients, AdamW moments and every op besides the matmuls
//! (norms, softmax, RoPE, loss, reductions) stay f32; each matmul reads its weight from a bf16
//! copy made after every optimizer step and rounds its activation operand to bf16 while packing
//! it, so the products are exact and only their sums are rounded (in f32).
//!
//! The activations a layer keeps for its backward pass are bf16 where that is safe: q, k and v
//! (after RoPE), the attention probabilities, and SwiGLU's gate and up, which the backward pass
//! reads as matmul operands (rounded to bf16 anyway) or through the attention and SwiGLU
//! derivatives, whose error stays within bf16's. The residual stream that RMSNorm's backward
//! reads, the norms' `1/rms` and the attention output stay f32. The forward pass itself computes
//! from the unrounded floats; only the kept copies are rounded. That takes the tutorial model's
//! training memory from 1.01x to about 0.78x of f32's (`model::memory`).
//!
//! On an NVIDIA GPU, f32 is exact FP32 (cuBLAS sgemm in its default math mode, never TF32), so
//! an f32 run there stays within f32 rounding of the CPU's, which is what the backend's
//! equivalence checks rely on; the tensor cores are bf16's (GemmEx with f32 accumulation).

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Device;

/// The precision a model computes its matmuls in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

/// What a user asks for: a precision, or `auto` (bf16 where the hardware has native bf16 dot
/// products, f32 elsewhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(with = "PrecisionName")]
pub enum PrecisionSetting {
    #[default]
    Auto,
    F32,
    Bf16,
}

/// The values a spec may give `precision`, as its JSON schema lists them (parsing goes through
/// `FromStr`, whose error names them).
#[derive(JsonSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
enum PrecisionName {
    Auto,
    F32,
    Bf16,
}

/// Set to any value but `0`, the CPU is treated as one without bf16 instructions: the bf16
/// kernels take their portable path and `auto` resolves to f32 (how tests check that path on a
/// CPU that has the instructions).
pub const NO_BF16_INSTRUCTIONS_VAR: &str = "TINYLLM_NO_BF16_INSTRUCTIONS";

/// Whether the bf16 instructions are to be left unused (see [`NO_BF16_INSTRUCTIONS_VAR`]).
pub fn bf16_instructions_disabled() -> bool {
    std::env::var_os(NO_BF16_INSTRUCTIONS_VAR).is_some_and(|v| v != "0")
}

/// Whether this CPU computes bf16 dot products natively (AVX512-BF16, which every CPU with
/// AMX-BF16 also has), and they are not disabled by [`NO_BF16_INSTRUCTIONS_VAR`].
pub fn cpu_has_native_bf16() -> bool {
    if bf16_instructions_disabled() {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
            && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl PrecisionSetting {
    /// The precision this setting means on `device`. `auto` is bf16 on a CPU with native bf16
    /// dot products; on a GPU it is f32 until the GPU has bf16 kernels of its own.
    pub fn resolve(self, device: Device) -> Precision {
        match self {
            PrecisionSetting::F32 => Precision::F32,
            PrecisionSetting::Bf16 => Precision::Bf16,
            PrecisionSetting::Auto => match device {
                Device::Cpu if cpu_has_native_bf16() => Precision::Bf16,
                _ => Precision::F32,
            },
        }
    }
}

/// The matmul kernel `precision` runs on `device`, as the benchmarks name it.
pub fn matmul_kernel(device: Device, precision: Precision) -> &'static str {
    match (device, precision) {
        (Device::Cpu, Precision::F32) => "gemm f32",
        (Device::Cpu, Precision::Bf16) => super::cpu::gemm_bf16::kernel_name(),
        (Device::Cuda(_), Precision::F32) => "cuBLAS sgemm",
        (Device::Cuda(_), Precision::Bf16) => "cuBLAS bf16 GemmEx (tensor cores)",
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

impl fmt::Display for PrecisionSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PrecisionSetting::Auto => "auto",
            PrecisionSetting::F32 => "f32",
            PrecisionSetting::Bf16 => "bf16",
        })
    }
}

impl FromStr for PrecisionSetting {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(PrecisionSetting::Auto),
            "f32" => Ok(PrecisionSetting::F32),
            "bf16" => Ok(PrecisionSetting::Bf16),
            _ => Err(format!(
                "{text:?} is not a precision: use \"f32\", \"bf16\" or \"auto\""
            )),
        }
    }
}

impl TryFrom<String> for PrecisionSetting {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl From<PrecisionSetting> for String {
    fn from(setting: PrecisionSetting) -> String {
        setting.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_print_back_and_resolve() {
        for text in ["auto", "f32", "bf16"] {
            assert_eq!(text.parse::<PrecisionSetting>().unwrap().to_string(), text);
        }
        let error = "fp16".parse::<PrecisionSetting>().unwrap_err();
        assert!(error.contains("is not a precision"), "{error}");
        assert_eq!(PrecisionSetting::F32.resolve(Device::Cpu), Precision::F32);
        assert_eq!(
            PrecisionSetting::Bf16.resolve(Device::Cuda(0)),
            Precision::Bf16
        );
        assert_eq!(
            PrecisionSetting::Auto.resolve(Device::Cuda(0)),
            Precision::F32
        );
        let expected = if cpu_has_native_bf16() {
            Precision::Bf16
        } else {
            Precision::F32
        };
        assert_eq!(PrecisionSetting::Auto.resolve(Device::Cpu), expected);
    }
}

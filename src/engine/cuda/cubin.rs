//! What a cubin (the ELF that NVRTC compiles for one GPU architecture) says about each kernel:
//! registers, static shared memory, launch bounds and the parameter layout, so that tests can
//! check every kernel against its launch without a GPU.
//!
//! NVIDIA does not document the format; what is read here was checked against NVRTC 13.5's
//! cubins of test kernels with known layouts (`tests.rs`):
//! - Registers: the `EIATTR_REGCOUNT` record of the module's `.nv.info` section (u32 symbol
//!   index of the kernel, u32 count). For sm_75 and sm_80 the count is also in bits 24..31 of
//!   the `sh_info` of the kernel's `.text.<kernel>` section, but for sm_90 those bits are 0.
//! - Static shared memory: the size of the `.nv.shared.<kernel>` section (absent when none).
//!   sm_90 cubins have a `.nv.shared.reserved.0` section, and then every kernel's section starts
//!   with the 1 KiB the system reserves per block (a `__shared__ float[300]` is 2224 bytes, a
//!   kernel with dynamic shared memory only 1024); that KiB is not part of the 48 KiB a block
//!   may use, so it is left out.
//! - `.nv.info.<kernel>` is a list of records: u8 format, u8 attribute, then for format 0x04
//!   (a value of its own size) a u16 size and that many bytes, and for formats 0x01, 0x02 and
//!   0x03 a 2-byte field (0x02 and 0x03 hold their value in it; every record stays 4-aligned).
//! - `EIATTR_KPARAM_INFO` (0x17), one per parameter: u32 index (0), u16 ordinal, u16 offset
//!   in the parameter buffer, u32 flags whose bits 18..31 are the size in bytes (a `float*`,
//!   `int`, `long long`, `double` kernel gives offsets 0, 8, 16, 24 and sizes 8, 4, 8, 8).
//! - `EIATTR_MAX_THREADS` (0x05): three u32, the `__launch_bounds__` (absent without them).

use std::collections::HashMap;

#[derive(Debug, thiserror::Error)]
#[error("not a cubin NVRTC would make: {0}")]
pub struct CubinError(String);

const EIATTR_MAX_THREADS: u8 = 0x05;
const EIATTR_KPARAM_INFO: u8 = 0x17;
const EIATTR_REGCOUNT: u8 = 0x2f;
/// Shared memory the system reserves per block on sm_90, at the start of each kernel's section.
const SM90_RESERVED_SHARED: u64 = 1024;

/// One kernel parameter as the cubin lays it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param {
    pub ordinal: u16,
    pub offset: u16,
    pub size: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    pub registers: u32,
    /// `sh_info` bits 24..31 of the kernel's code section (0 for sm_90).
    pub text_registers: u32,
    /// Bytes of `__shared__` variables, without the system's reserved KiB.
    pub static_shared: u64,
    /// `__launch_bounds__`, None without them.
    pub max_threads: Option<[u32; 3]>,
    /// In ordinal order.
    pub params: Vec<Param>,
}

struct Section<'a> {
    name: &'a str,
    info: u32,
    size: u64,
    data: &'a [u8],
}

fn read<const N: usize>(bytes: &[u8], at: usize) -> Result<[u8; N], CubinError> {
    at.checked_add(N)
        .and_then(|end| bytes.get(at..end))
        .map(|b| b.try_into().expect("N bytes"))
        .ok_or_else(|| CubinError(format!("{N} bytes at {at} run past the end")))
}
fn u16_at(bytes: &[u8], at: usize) -> Result<u16, CubinError> {
    read(bytes, at).map(u16::from_le_bytes)
}
fn u32_at(bytes: &[u8], at: usize) -> Result<u32, CubinError> {
    read(bytes, at).map(u32::from_le_bytes)
}
fn u64_at(bytes: &[u8], at: usize) -> Result<u64, CubinError> {
    read(bytes, at).map(u64::from_le_bytes)
}
fn index(value: u64) -> Result<usize, CubinError> {
    usize::try_from(value).map_err(|_| CubinError(format!("offset {value} too large")))
}

fn sections(elf: &[u8]) -> Result<Vec<Section<'_>>, CubinError> {
    if elf.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return Err(CubinError("no 64-bit little-endian ELF header".into()));
    }
    let table = index(u64_at(elf, 0x28)?)?;
    let entry = usize::from(u16_at(elf, 0x3a)?);
    let count = usize::from(u16_at(elf, 0x3c)?);
    let names_index = usize::from(u16_at(elf, 0x3e)?);
    let header = |i: usize| -> Result<(u32, u32, u64, u64, u32), CubinError> {
        let at = table + i * entry;
        let kind = u32_at(elf, at + 4)?;
        let (offset, size) = (u64_at(elf, at + 0x18)?, u64_at(elf, at + 0x20)?);
        Ok((
            u32_at(elf, at)?,
            kind,
            offset,
            size,
            u32_at(elf, at + 0x2c)?,
        ))
    };
    let (_, _, names_at, names_size, _) = header(names_index)?;
    let names = read_range(elf, names_at, names_size)?;
    (0..count)
        .map(|i| {
            let (name_at, kind, offset, size, info) = header(i)?;
            let name = names
                .get(index(name_at.into())?..)
                .and_then(|rest| rest.split(|&b| b == 0).next())
                .and_then(|name| std::str::from_utf8(name).ok())
                .ok_or_else(|| CubinError(format!("section {i} has no name")))?;
            const NOBITS: u32 = 8;
            let data = if kind == NOBITS {
                &[][..]
            } else {
                read_range(elf, offset, size)?
            };
            Ok(Section {
                name,
                info,
                size,
                data,
            })
        })
        .collect()
}

fn read_range(elf: &[u8], at: u64, size: u64) -> Result<&[u8], CubinError> {
    let (at, size) = (index(at)?, index(size)?);
    at.checked_add(size)
        .and_then(|end| elf.get(at..end))
        .ok_or_else(|| CubinError(format!("{size} bytes at {at} run past the end")))
}

/// The `(attribute, value)` records of an `.nv.info` section.
fn records(data: &[u8]) -> Result<Vec<(u8, &[u8])>, CubinError> {
    let mut records = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let [format, attribute] = read(data, at)?;
        let (value, size) = match format {
            0x01..=0x03 => (at + 2, 2),
            0x04 => (at + 4, usize::from(u16_at(data, at + 2)?)),
            other => return Err(CubinError(format!("record format {other:#x} at {at}"))),
        };
        records.push((attribute, read_range(data, value as u64, size as u64)?));
        at = value + size;
    }
    Ok(records)
}

/// Every kernel of the cubin `elf`, by name.
pub fn kernels(elf: &[u8]) -> Result<HashMap<String, Kernel>, CubinError> {
    let sections = sections(elf)?;
    let reserved = if sections.iter().any(|s| s.name == ".nv.shared.reserved.0") {
        SM90_RESERVED_SHARED
    } else {
        0
    };
    // Registers by symbol index, from the module's .nv.info.
    let mut registers = HashMap::new();
    for section in sections.iter().filter(|s| s.name == ".nv.info") {
        for (attribute, value) in records(section.data)? {
            if attribute == EIATTR_REGCOUNT {
                registers.insert(u32_at(value, 0)?, u32_at(value, 4)?);
            }
        }
    }
    let mut kernels = HashMap::new();
    for text in &sections {
        let Some(name) = text.name.strip_prefix(".text.") else {
            continue;
        };
        // The low 24 bits of sh_info are the kernel's symbol index.
        let symbol = text.info & 0xff_ffff;
        let find = |prefix: &str| {
            sections
                .iter()
                .find(|s| s.name == format!("{prefix}{name}"))
        };
        let static_shared = find(".nv.shared.").map_or(0, |s| s.size.saturating_sub(reserved));
        let (mut max_threads, mut params) = (None, Vec::new());
        for (attribute, value) in records(find(".nv.info.").map_or(&[][..], |s| s.data))? {
            match attribute {
                EIATTR_MAX_THREADS => {
                    let [x, y, z] = [0, 4, 8].map(|at| u32_at(value, at));
                    max_threads = Some([x?, y?, z?]);
                }
                EIATTR_KPARAM_INFO => params.push(Param {
                    ordinal: u16_at(value, 4)?,
                    offset: u16_at(value, 6)?,
                    size: u32_at(value, 8)? >> 18,
                }),
                _ => {}
            }
        }
        params.sort_by_key(|p| p.ordinal);
        let kernel = Kernel {
            registers: *registers
                .get(&symbol)
                .ok_or_else(|| CubinError(format!("no register count for {name}")))?,
            text_registers: text.info >> 24,
            static_shared,
            max_threads,
            params,
        };
        kernels.insert(name.to_string(), kernel);
    }
    Ok(kernels)
}

//! Reading a GGUF file back: its header, metadata, tensor table and tensor data. Tests use it to
//! check what the exporter wrote, so it trusts nothing in the file: every count and length is
//! checked against the bytes the file still has before anything is allocated, and a broken file
//! is an error naming what is wrong, never a panic.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::{
    DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_DIMS, TensorType, Value, ValueType, ggml_type_name,
};

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a GGUF file we can read: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
}

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Innermost first: a row-major `[rows, columns]` matrix has dims `[columns, rows]`.
    pub dims: Vec<u64>,
    pub tensor_type: TensorType,
    /// From the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// The bytes of its data; the table was checked at open, so this cannot overflow.
    pub fn byte_len(&self) -> u64 {
        self.tensor_type.byte_len(self.elements())
    }
}

/// A GGUF file whose header, metadata and tensor table have been read and checked; tensor data
/// is read on demand.
#[derive(Debug)]
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    /// In file order.
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Where the data section starts in the file.
    pub data_start: u64,
}

/// A reader that knows how many bytes of the file are left, so that a count read from the file
/// can be checked against them before it sizes an allocation.
struct Bounded<R> {
    inner: R,
    left: u64,
}

/// Nested arrays are legal GGUF but nothing llama.cpp reads uses them beyond one level.
const MAX_ARRAY_DEPTH: usize = 2;

impl<R: Read> Bounded<R> {
    fn bytes(&mut self, n: u64, what: &str) -> Result<Vec<u8>, String> {
        if n > self.left {
            return Err(format!(
                "{what} needs {n} bytes but the file has {} left",
                self.left
            ));
        }
        let mut buf = vec![0u8; n as usize];
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| format!("reading {what}: {e}"))?;
        self.left -= n;
        Ok(buf)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let bytes = self.bytes(N as u64, what)?;
        Ok(bytes.try_into().expect("N bytes were read"))
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count of items that each take at least `min_size` bytes: more than the file can hold
    /// is refused here, before anything is sized by it.
    fn count(&mut self, min_size: u64, what: &str) -> Result<u64, String> {
        let n = self.u64(what)?;
        if n.saturating_mul(min_size) > self.left {
            return Err(format!(
                "{what} is {n}, more than the {} bytes left in the file can hold",
                self.left
            ));
        }
        Ok(n)
    }

    fn string(&mut self, what: &str) -> Result<String, String> {
        let len = self.count(1, &format!("the length of {what}"))?;
        let bytes = self.bytes(len, what)?;
        String::from_utf8(bytes).map_err(|_| format!("{what} is not UTF-8"))
    }

    fn value_type(&mut self, what: &str) -> Result<ValueType, String> {
        let id = self.u32(what)?;
        ValueType::from_id(id).ok_or_else(|| format!("{what}: unknown value type {id}"))
    }

    fn value(&mut self, kind: ValueType, what: &str, depth: usize) -> Result<Value, String> {
        Ok(match kind {
            ValueType::U8 => Value::U8(self.array::<1>(what)?[0]),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.array(what)?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            ValueType::U32 => Value::U32(self.u32(what)?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            ValueType::Bool => match self.array::<1>(what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                other => return Err(format!("{what}: {other} is not a boolean (0 or 1)")),
            },
            ValueType::String => Value::String(self.string(what)?),
            ValueType::U64 => Value::U64(self.u64(what)?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            ValueType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(format!(
                        "{what}: arrays nested more than {MAX_ARRAY_DEPTH} deep"
                    ));
                }
                let element = self.value_type(&format!("the element type of {what}"))?;
                let n = self.count(element.min_size(), &format!("the length of {what}"))?;
                let mut items = Vec::with_capacity(n as usize);
                for i in 0..n {
                    items.push(self.value(element, &format!("{what}[{i}]"), depth + 1)?);
                }
                Value::Array(element, items)
            }
        })
    }
}

impl GgufFile {
    /// Reads and checks everything but the tensor data: the header, the metadata, the tensor
    /// table, and that every tensor's data lies, aligned, inside the file.
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let mut reader = Bounded {
            inner: BufReader::new(file),
            left: len,
        };
        Self::parse(&mut reader, path, len).map_err(|reason| GgufError::Invalid {
            path: path.to_path_buf(),
            reason,
        })
    }

    fn parse(
        reader: &mut Bounded<BufReader<File>>,
        path: &Path,
        len: u64,
    ) -> Result<GgufFile, String> {
        let magic = reader.array::<4>("the magic")?;
        if magic != GGUF_MAGIC {
            return Err(format!("it starts with {magic:?}, not the magic \"GGUF\""));
        }
        let version = reader.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(format!("version {version} (versions 2 and 3 are read)"));
        }
        // Each tensor's entry takes at least a name length, a dimension count, a type and an
        // offset; each metadata entry a key length, a type and one byte.
        let tensor_count = reader.count(8 + 4 + 4 + 8, "the tensor count")?;
        let kv_count = reader.count(8 + 4 + 1, "the metadata count")?;
        let mut metadata = Vec::with_capacity(kv_count as usize);
        let mut keys = HashSet::new();
        for i in 0..kv_count {
            let key = reader.string(&format!("metadata key {i}"))?;
            let shown = printable(&key);
            if !keys.insert(key.clone()) {
                return Err(format!("metadata key {shown} appears twice"));
            }
            let kind = reader.value_type(&shown)?;
            let value = reader.value(kind, &shown, 0)?;
            metadata.push((key, value));
        }
        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, Value::U32(a))) if a.is_power_of_two() => u64::from(*a),
            Some((_, other)) => {
                return Err(format!(
                    "general.alignment is {other:?}, not a power of two as a u32"
                ));
            }
        };
        let mut tensors = Vec::with_capacity(tensor_count as usize);
        let mut names = HashSet::new();
        for i in 0..tensor_count {
            let name = reader.string(&format!("the name of tensor {i}"))?;
            if !names.insert(name.clone()) {
                return Err(format!("tensor {} appears twice", printable(&name)));
            }
            let shown = printable(&name);
            let n_dims = reader.u32(&format!("the dimension count of {shown}"))?;
            if n_dims == 0 || n_dims as usize > MAX_DIMS {
                return Err(format!(
                    "{shown} has {n_dims} dimensions (1 to {MAX_DIMS} are allowed)"
                ));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for d in 0..n_dims {
                dims.push(reader.u64(&format!("dimension {d} of {shown}"))?);
            }
            let type_id = reader.u32(&format!("the type of {shown}"))?;
            let tensor_type = TensorType::from_id(type_id).ok_or_else(|| {
                format!(
                    "{shown} has type {} ({type_id}), which this reader does not decode",
                    ggml_type_name(type_id)
                )
            })?;
            let offset = reader.u64(&format!("the offset of {shown}"))?;
            tensors.push(TensorInfo {
                name,
                dims,
                tensor_type,
                offset,
            });
        }
        let data_start = (len - reader.left).next_multiple_of(alignment);
        let data_len = len.saturating_sub(data_start);
        for tensor in &tensors {
            let name = printable(&tensor.name);
            let elements = tensor
                .dims
                .iter()
                .try_fold(1u64, |n, &d| n.checked_mul(d))
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("{name}'s dims {:?} are empty or overflow", tensor.dims))?;
            let block = tensor.tensor_type.block_elements();
            if tensor.dims[0] % block != 0 {
                return Err(format!(
                    "{name}'s rows of {} values are not whole blocks of {block} ({})",
                    tensor.dims[0],
                    tensor.tensor_type.name()
                ));
            }
            if tensor.offset % alignment != 0 {
                return Err(format!(
                    "{name}'s offset {} is not a multiple of the alignment {alignment}",
                    tensor.offset
                ));
            }
            let bytes = elements
                .checked_mul(tensor.tensor_type.block_bytes())
                .map(|b| b / block);
            match bytes.and_then(|b| b.checked_add(tensor.offset)) {
                Some(end) if end <= data_len => {}
                _ => {
                    return Err(format!(
                        "{name}'s data ({elements} values of {} at offset {}) lies beyond the file's {data_len} bytes of data",
                        tensor.tensor_type.name(),
                        tensor.offset
                    ));
                }
            }
        }
        Ok(GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            alignment,
            data_start,
        })
    }

    /// The value of a metadata key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The table entry of a tensor.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor's data.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> Result<Vec<u8>, GgufError> {
        let io = |source| GgufError::Io {
            path: self.path.clone(),
            source,
        };
        let mut file = File::open(&self.path).map_err(io)?;
        // The file may have changed since `open` checked it: bound the read by its length now.
        let len = file.metadata().map_err(io)?.len();
        let start = self.data_start + info.offset;
        let end = start + info.byte_len();
        if end > len {
            return Err(GgufError::Invalid {
                path: self.path.clone(),
                reason: format!(
                    "{} ends at byte {end} of a {len}-byte file",
                    printable(&info.name)
                ),
            });
        }
        file.seek(SeekFrom::Start(start)).map_err(io)?;
        let mut bytes = vec![0u8; info.byte_len() as usize];
        file.read_exact(&mut bytes).map_err(io)?;
        Ok(bytes)
    }

    /// A tensor's values as f32, dequantized when stored as bf16, f16 or q8_0.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>, GgufError> {
        let info = self.tensor(name).ok_or_else(|| GgufError::Invalid {
            path: self.path.clone(),
            reason: format!("no tensor {}", printable(name)),
        })?;
        Ok(info
            .tensor_type
            .decode(&self.tensor_bytes(info)?, info.elements()))
    }
}

/// A name from the file as it can be shown in a one-line message: quoted, with line breaks and
/// other control characters escaped.
fn printable(name: &str) -> String {
    format!("{name:?}")
}

//! Reads a GGUF file's header — the metadata key/values and the tensor infos, never the tensor
//! data — in pure Rust, streaming through a buffered reader (a 4 GB model's header is a few MB,
//! mostly the tokenizer's vocabulary, and only that much is read).
//!
//! One implementation serves both users: the daemon's model store (identify a file from its
//! own metadata, check that it is complete) and the llama.cpp plugin (say why a load failed).
//!
//! The GGUF layout (version 2 and 3) follows llama.cpp's `ggml/src/gguf.cpp`; the block sizes of
//! the tensor types are those of `ggml/src/ggml.c`'s `type_traits` (ggml as vendored by
//! llama-cpp-sys-2 0.1.161). Nothing here trusts a count from the file for an allocation: every
//! read is bounded by the file's length, so a corrupt or truncated header is an error, never a
//! huge allocation or a panic.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::Path;

pub mod ftype;

/// The GGUF magic, the first four bytes of every GGUF file.
pub const MAGIC: &[u8; 4] = b"GGUF";

/// Default data alignment when `general.alignment` is absent (bytes).
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// Strings longer than this are not kept in [`Header::metadata`] (the chat template is a few KB;
/// nothing r1d reads is longer). They are skipped, and stored as [`Value::Skipped`].
const MAX_KEPT_STRING: u64 = 1 << 20;

/// Errors reading a header.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened or read.
    #[error("failed to read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file does not start with `GGUF`.
    #[error("{path} is not a GGUF file (bad magic)")]
    NotGguf {
        /// The file.
        path: String,
    },
    /// The header cannot be parsed: cut inside the header, or corrupt.
    #[error("the GGUF header of {path} cannot be read: {reason}")]
    Malformed {
        /// The file.
        path: String,
        /// What is wrong, with the byte offset.
        reason: String,
    },
}

/// A metadata value. Integers of every width are widened; arrays are counted, not kept.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `u8`, `u16`, `u32`, `u64`.
    Uint(u64),
    /// `i8`, `i16`, `i32`, `i64`.
    Int(i64),
    /// `f32`, `f64`.
    Float(f64),
    /// `bool`.
    Bool(bool),
    /// A UTF-8 string (lossily decoded).
    Str(String),
    /// An array: its element type number and length (the elements are skipped).
    Array {
        /// GGUF type number of the elements.
        element_type: u32,
        /// Number of elements.
        len: u64,
    },
    /// A string too long to keep; its length in bytes.
    Skipped(u64),
}

/// One tensor's description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions, innermost first.
    pub dims: Vec<u64>,
    /// ggml type number.
    pub ggml_type: u32,
    /// Offset of the data from the start of the data section (bytes).
    pub offset: u64,
}

impl TensorInfo {
    /// Elements in the tensor.
    pub fn elements(&self) -> u64 {
        self.dims.iter().fold(1u64, |a, &d| a.saturating_mul(d))
    }

    /// Bytes of data, as ggml computes them (`ggml_nbytes`); `None` for an unknown type.
    pub fn bytes(&self) -> Option<u64> {
        let (block, size) = type_size(self.ggml_type)?;
        Some((self.elements() / block).saturating_mul(size))
    }
}

/// `(elements per block, bytes per block)` of a ggml type (`ggml.c` `type_traits`); `None` for
/// numbers ggml does not define (including removed ones).
pub fn type_size(ggml_type: u32) -> Option<(u64, u64)> {
    const QK_K: u64 = 256;
    Some(match ggml_type {
        0 => (1, 4),       // F32
        1 => (1, 2),       // F16
        2 => (32, 18),     // Q4_0
        3 => (32, 20),     // Q4_1
        6 => (32, 22),     // Q5_0
        7 => (32, 24),     // Q5_1
        8 => (32, 34),     // Q8_0
        9 => (32, 36),     // Q8_1
        10 => (QK_K, 84),  // Q2_K
        11 => (QK_K, 110), // Q3_K
        12 => (QK_K, 144), // Q4_K
        13 => (QK_K, 176), // Q5_K
        14 => (QK_K, 210), // Q6_K
        15 => (QK_K, 292), // Q8_K
        16 => (QK_K, 66),  // IQ2_XXS
        17 => (QK_K, 74),  // IQ2_XS
        18 => (QK_K, 98),  // IQ3_XXS
        19 => (QK_K, 50),  // IQ1_S
        20 => (32, 18),    // IQ4_NL
        21 => (QK_K, 110), // IQ3_S
        22 => (QK_K, 82),  // IQ2_S
        23 => (QK_K, 136), // IQ4_XS
        24 => (1, 1),      // I8
        25 => (1, 2),      // I16
        26 => (1, 4),      // I32
        27 => (1, 8),      // I64
        28 => (1, 8),      // F64
        29 => (QK_K, 56),  // IQ1_M
        30 => (1, 2),      // BF16
        34 => (QK_K, 54),  // TQ1_0
        35 => (QK_K, 66),  // TQ2_0
        39 => (32, 17),    // MXFP4
        40 => (64, 36),    // NVFP4
        41 => (128, 18),   // Q1_0
        42 => (64, 18),    // Q2_0
        _ => return None,
    })
}

/// A parsed GGUF header.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// GGUF version (2 or 3).
    pub version: u32,
    /// Metadata, by key.
    pub metadata: BTreeMap<String, Value>,
    /// Tensor infos, in file order.
    pub tensors: Vec<TensorInfo>,
    /// Data alignment (bytes).
    pub alignment: u64,
    /// Where the tensor data starts (bytes from the start of the file).
    pub data_offset: u64,
    /// Length of the file on disk (bytes).
    pub file_bytes: u64,
}

impl Header {
    /// A string value.
    pub fn str(&self, key: &str) -> Option<&str> {
        match self.metadata.get(key)? {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// An unsigned integer value (a non-negative signed one too).
    pub fn uint(&self, key: &str) -> Option<u64> {
        match self.metadata.get(key)? {
            Value::Uint(v) => Some(*v),
            Value::Int(v) => u64::try_from(*v).ok(),
            _ => None,
        }
    }

    /// `general.architecture` (`qwen2`, `llama`, …).
    pub fn architecture(&self) -> Option<&str> {
        self.str("general.architecture")
    }

    /// An architecture-scoped value: `{architecture}.{key}` (`block_count`, `embedding_length`).
    pub fn arch_uint(&self, key: &str) -> Option<u64> {
        self.uint(&format!("{}.{key}", self.architecture()?))
    }

    /// `general.file_type` as a quantization name (`Q4_K_M`).
    pub fn file_type_name(&self) -> Option<&'static str> {
        ftype::name(u32::try_from(self.uint("general.file_type")?).ok()?)
    }

    /// Parameters: the elements of every tensor (`u64::MAX` when a corrupt header claims more).
    pub fn parameter_count(&self) -> u64 {
        self.tensors
            .iter()
            .map(TensorInfo::elements)
            .fold(0u64, u64::saturating_add)
    }

    /// Bytes of the weights llama.cpp places on the GPUs when asked for `n_gpu_layers` (its
    /// `n_gpu_layers`, any value), following `llama_model::load_tensors` in llama.cpp's
    /// `src/llama-model.cpp`: of the `L` repeating layers (`{arch}.block_count`) the last
    /// `min(n_gpu_layers, L + 1) − 1` go to the GPUs (tensors `blk.N.*`), and the output layer
    /// (`output.*`, `output_norm.*`; a model without `output.weight` ties it to
    /// `token_embd.weight`, which llama.cpp then duplicates there) as soon as `n_gpu_layers ≥ 1`;
    /// the input embedding stays on the CPU. KV cache and compute buffers come on top, so this is
    /// a lower bound of the device memory a load needs. `None` without a block count or with a
    /// tensor type this reader does not know.
    pub fn offloaded_weight_bytes(&self, n_gpu_layers: u32) -> Option<u64> {
        if n_gpu_layers == 0 {
            return Some(0);
        }
        let layers = self.arch_uint("block_count")?;
        let on_gpu = u64::from(n_gpu_layers).min(layers + 1) - 1;
        let first = layers - on_gpu;
        let tied = !self.tensors.iter().any(|t| t.name == "output.weight");
        let mut bytes = 0u64;
        for t in &self.tensors {
            let offloaded = match t.name.strip_prefix("blk.") {
                Some(rest) => rest
                    .split('.')
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|n| n >= first),
                None => {
                    t.name.starts_with("output.")
                        || t.name.starts_with("output_norm.")
                        || (tied && t.name == "token_embd.weight")
                }
            };
            if offloaded {
                bytes = bytes.saturating_add(t.bytes()?);
            }
        }
        Some(bytes)
    }

    /// The most layers (`n_gpu_layers`, 0 to `block_count + 1`) whose weights
    /// ([`Header::offloaded_weight_bytes`]) fit in `device_bytes`; `None` as there.
    pub fn gpu_layers_within(&self, device_bytes: u64) -> Option<u32> {
        let layers = u32::try_from(self.arch_uint("block_count")?).ok()?;
        let mut fit = 0;
        for n in 1..=layers.saturating_add(1) {
            if self.offloaded_weight_bytes(n)? > device_bytes {
                break;
            }
            fit = n;
        }
        Some(fit)
    }

    /// Whether `n_gpu_layers` (llama.cpp's, `u32::MAX` = all) can fit in GPUs with
    /// `device_bytes` of memory in all: `Some` [`Shortfall`] when the offloaded weights alone
    /// ([`Header::offloaded_weight_bytes`]) exceed it — certain to fail, since the KV cache and
    /// compute buffers come on top. `None` when they fit, when `device_bytes` is 0 (unknown) or
    /// when the header lacks what the estimate needs.
    pub fn device_memory_shortfall(
        &self,
        n_gpu_layers: u32,
        device_bytes: u64,
    ) -> Option<Shortfall> {
        if device_bytes == 0 {
            return None;
        }
        let needed_bytes = self.offloaded_weight_bytes(n_gpu_layers)?;
        if needed_bytes <= device_bytes {
            return None;
        }
        let layers = self.arch_uint("block_count")?;
        Some(Shortfall {
            layers_asked: u64::from(n_gpu_layers).min(layers + 1),
            layers_total: layers + 1,
            needed_bytes,
            device_bytes,
            fit_layers: self.gpu_layers_within(device_bytes)?,
        })
    }

    /// Bytes the file must have: the data offset plus the end of the furthest tensor. `None`
    /// when a tensor has a type this reader does not know.
    pub fn expected_file_bytes(&self) -> Option<u64> {
        let mut end = self.data_offset;
        for t in &self.tensors {
            end = end.max(
                self.data_offset
                    .saturating_add(t.offset)
                    .saturating_add(t.bytes()?),
            );
        }
        Some(end)
    }
}

/// Offloaded layers whose weights alone exceed the GPUs' memory
/// ([`Header::device_memory_shortfall`]). Its `Display` is the user's explanation: "offloading 31
/// of its 31 layers needs at least 4.40 GB of device memory for the weights alone, but the GPU
/// memory is 2.15 GB; set gpu_layers to 14 or less".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    /// Layers asked for, as llama.cpp counts them (repeating layers + the output layer).
    pub layers_asked: u64,
    /// The model's layers as llama.cpp counts them (`block_count` + 1).
    pub layers_total: u64,
    /// The offloaded weights (bytes).
    pub needed_bytes: u64,
    /// The GPUs' memory (bytes).
    pub device_bytes: u64,
    /// The most layers whose weights fit (`n_gpu_layers`).
    pub fit_layers: u32,
}

impl std::fmt::Display for Shortfall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "offloading {} of its {} layers needs at least {:.2} GB of device memory for the \
             weights alone, but the GPU memory is {:.2} GB; set gpu_layers to {} or less",
            self.layers_asked,
            self.layers_total,
            self.needed_bytes as f64 / 1e9,
            self.device_bytes as f64 / 1e9,
            self.fit_layers
        )
    }
}

/// The verdict on a file's completeness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderCheck {
    /// The file is at least as long as its header says.
    Complete,
    /// The header is readable but describes more bytes than the file has.
    Truncated {
        /// Bytes on disk.
        actual_bytes: u64,
        /// Bytes the header implies: data offset + end of the last tensor.
        expected_bytes: u64,
    },
    /// The file does not start with the GGUF magic.
    NotGguf,
    /// The file starts like GGUF but its header cannot be parsed (cut inside the header, or corrupt).
    UnreadableHeader,
    /// The file could not be read at all.
    Io(String),
}

impl HeaderCheck {
    /// The verdict for a parsed header (or the error reading it).
    pub fn of(result: &Result<Header, GgufError>) -> HeaderCheck {
        match result {
            Ok(h) => match h.expected_file_bytes() {
                Some(expected_bytes) if expected_bytes > h.file_bytes => HeaderCheck::Truncated {
                    actual_bytes: h.file_bytes,
                    expected_bytes,
                },
                Some(_) => HeaderCheck::Complete,
                None => HeaderCheck::UnreadableHeader,
            },
            Err(GgufError::NotGguf { .. }) => HeaderCheck::NotGguf,
            Err(GgufError::Malformed { .. }) => HeaderCheck::UnreadableHeader,
            Err(GgufError::Io { source, .. }) => HeaderCheck::Io(source.to_string()),
        }
    }

    /// A user-facing sentence for the failure cases; `None` for [`HeaderCheck::Complete`].
    pub fn explanation(&self) -> Option<String> {
        match self {
            HeaderCheck::Complete => None,
            HeaderCheck::Truncated {
                actual_bytes,
                expected_bytes,
            } => Some(format!(
                "the file is truncated or incomplete: it has {actual_bytes} bytes but its GGUF \
                 header describes {expected_bytes} bytes (an unfinished download?)"
            )),
            HeaderCheck::NotGguf => Some("the file is not a GGUF file (bad magic)".to_owned()),
            HeaderCheck::UnreadableHeader => Some(
                "the GGUF header cannot be read: the file is truncated, incomplete or corrupt"
                    .to_owned(),
            ),
            HeaderCheck::Io(e) => Some(format!("the file cannot be read: {e}")),
        }
    }
}

/// Reads the header of `path` and compares the size it implies with the size on disk.
pub fn check(path: &Path) -> HeaderCheck {
    HeaderCheck::of(&read(path))
}

/// Opens `path` for reading without blocking on a FIFO (`O_NONBLOCK`), and only when it is a
/// regular file: a FIFO, socket or device where a model is expected is an error, not a hang.
fn open_regular(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(file)
}

/// Whether `path` starts with the GGUF magic (false when it cannot be read or is not a regular
/// file).
pub fn has_magic(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    open_regular(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == MAGIC
}

/// Reads the header of the GGUF file `path`.
///
/// # Errors
/// [`GgufError::Io`] when the file cannot be read, [`GgufError::NotGguf`] without the magic,
/// [`GgufError::Malformed`] when the header is cut short or inconsistent.
pub fn read(path: &Path) -> Result<Header, GgufError> {
    let name = path.display().to_string();
    let io = |source| GgufError::Io {
        path: name.clone(),
        source,
    };
    let file = open_regular(path).map_err(io)?;
    let file_bytes = file.metadata().map_err(io)?.len();
    read_from(BufReader::with_capacity(1 << 16, file), file_bytes, &name)
}

/// Reads a GGUF header from `bytes`, the start of a GGUF file (or all of it): the same parser as
/// [`read`], for headers already in memory (and for fuzzing it). `name` names the source in
/// errors; [`Header::file_bytes`] is `bytes.len()`.
///
/// # Errors
/// [`GgufError::NotGguf`] without the magic, [`GgufError::Malformed`] when the header is cut
/// short or inconsistent.
pub fn read_bytes(bytes: &[u8], name: &str) -> Result<Header, GgufError> {
    read_from(std::io::Cursor::new(bytes), bytes.len() as u64, name)
}

fn read_from<R: Read + Seek>(inner: R, file_bytes: u64, name: &str) -> Result<Header, GgufError> {
    let mut r = Reader {
        inner,
        pos: 0,
        len: file_bytes,
    };
    let mut magic = [0u8; 4];
    if file_bytes < 4 {
        return Err(GgufError::NotGguf {
            path: name.to_owned(),
        });
    }
    r.bytes(&mut magic).map_err(|e| e.into_error(name, r.pos))?;
    if &magic != MAGIC {
        return Err(GgufError::NotGguf {
            path: name.to_owned(),
        });
    }
    parse(&mut r, file_bytes).map_err(|e| e.into_error(name, r.pos))
}

fn parse<R: Read + Seek>(r: &mut Reader<R>, file_bytes: u64) -> Result<Header, ReadError> {
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        return Err(ReadError::Bad(format!(
            "unsupported GGUF version {version}"
        )));
    }
    let n_tensors = r.u64()?;
    let n_kv = r.u64()?;
    let mut metadata = BTreeMap::new();
    for _ in 0..n_kv {
        let key = r.string()?;
        let value_type = r.u32()?;
        let value = r.value(value_type)?;
        metadata.insert(key, value);
    }
    let mut tensors = Vec::new();
    for _ in 0..n_tensors {
        let name = r.string()?;
        let n_dims = r.u32()?;
        if n_dims > 4 {
            return Err(ReadError::Bad(format!(
                "tensor {name} has {n_dims} dimensions (at most 4)"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(r.u64()?);
        }
        let ggml_type = r.u32()?;
        let offset = r.u64()?;
        tensors.push(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
        });
    }
    let alignment = match metadata.get("general.alignment") {
        Some(Value::Uint(a)) if *a > 0 && a.is_power_of_two() => *a,
        Some(other) => {
            return Err(ReadError::Bad(format!(
                "general.alignment {other:?} is not a power of two"
            )))
        }
        None => DEFAULT_ALIGNMENT,
    };
    let data_offset = r.pos.div_ceil(alignment) * alignment;
    Ok(Header {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
        file_bytes,
    })
}

enum ReadError {
    Eof,
    Io(std::io::Error),
    Bad(String),
}

impl ReadError {
    fn into_error(self, path: &str, pos: u64) -> GgufError {
        match self {
            ReadError::Eof => GgufError::Malformed {
                path: path.to_owned(),
                reason: format!("the file ends inside the header (at byte {pos})"),
            },
            ReadError::Io(source) => GgufError::Io {
                path: path.to_owned(),
                source,
            },
            ReadError::Bad(reason) => GgufError::Malformed {
                path: path.to_owned(),
                reason: format!("{reason} (at byte {pos})"),
            },
        }
    }
}

/// A little-endian reader that knows its position and the file's length, so no count read from
/// the file can make it allocate or skip past the end.
struct Reader<R> {
    inner: R,
    pos: u64,
    len: u64,
}

impl<R: Read + Seek> Reader<R> {
    fn bytes(&mut self, buf: &mut [u8]) -> Result<(), ReadError> {
        if self.pos + buf.len() as u64 > self.len {
            return Err(ReadError::Eof);
        }
        self.inner.read_exact(buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                ReadError::Eof
            } else {
                ReadError::Io(e)
            }
        })?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn skip(&mut self, n: u64) -> Result<(), ReadError> {
        let end = self.pos.checked_add(n).ok_or(ReadError::Eof)?;
        if end > self.len {
            return Err(ReadError::Eof);
        }
        let delta = i64::try_from(n).map_err(|_| ReadError::Eof)?;
        // `seek_relative`, not `seek`: `BufReader::seek` drops its buffer and asks the kernel
        // (an lseek and a new read per skipped string — 11 million system calls for 43 R1 headers
        // with their vocabularies), `seek_relative` moves inside the buffer when it can.
        self.inner.seek_relative(delta).map_err(ReadError::Io)?;
        self.pos = end;
        Ok(())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ReadError> {
        let mut b = [0u8; N];
        self.bytes(&mut b)?;
        Ok(b)
    }

    fn u32(&mut self) -> Result<u32, ReadError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, ReadError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string_len(&mut self) -> Result<u64, ReadError> {
        let n = self.u64()?;
        if self.pos.saturating_add(n) > self.len {
            return Err(ReadError::Eof);
        }
        Ok(n)
    }

    fn string(&mut self) -> Result<String, ReadError> {
        let n = self.string_len()?;
        if n > MAX_KEPT_STRING {
            return Err(ReadError::Bad(format!("a {n}-byte key or name")));
        }
        let mut buf = vec![0u8; n as usize];
        self.bytes(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    fn value(&mut self, value_type: u32) -> Result<Value, ReadError> {
        Ok(match value_type {
            0 => Value::Uint(u8::from_le_bytes(self.array()?) as u64),
            1 => Value::Int(i8::from_le_bytes(self.array()?) as i64),
            2 => Value::Uint(u16::from_le_bytes(self.array()?) as u64),
            3 => Value::Int(i16::from_le_bytes(self.array()?) as i64),
            4 => Value::Uint(self.u32()? as u64),
            5 => Value::Int(i32::from_le_bytes(self.array()?) as i64),
            6 => Value::Float(f32::from_le_bytes(self.array()?) as f64),
            7 => Value::Bool(self.array::<1>()?[0] != 0),
            8 => {
                let n = self.string_len()?;
                if n > MAX_KEPT_STRING {
                    self.skip(n)?;
                    Value::Skipped(n)
                } else {
                    let mut buf = vec![0u8; n as usize];
                    self.bytes(&mut buf)?;
                    Value::Str(String::from_utf8_lossy(&buf).into_owned())
                }
            }
            9 => {
                let element_type = self.u32()?;
                let len = self.u64()?;
                match element_type {
                    8 => {
                        for _ in 0..len {
                            let n = self.string_len()?;
                            self.skip(n)?;
                        }
                    }
                    9 => return Err(ReadError::Bad("an array of arrays".into())),
                    t => {
                        let size = scalar_size(t)
                            .ok_or_else(|| ReadError::Bad(format!("unknown value type {t}")))?;
                        self.skip(len.checked_mul(size).ok_or(ReadError::Eof)?)?;
                    }
                }
                Value::Array { element_type, len }
            }
            10 => Value::Uint(self.u64()?),
            11 => Value::Int(i64::from_le_bytes(self.array()?)),
            12 => Value::Float(f64::from_le_bytes(self.array()?)),
            t => return Err(ReadError::Bad(format!("unknown value type {t}"))),
        })
    }
}

fn scalar_size(value_type: u32) -> Option<u64> {
    Some(match value_type {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        _ => return None,
    })
}

/// Builds GGUF files for tests (of this crate and of its users): a header with the given
/// metadata and tensors, followed by `data_bytes` of tensor data.
pub mod write {
    use std::io::Write;

    /// A metadata value to write.
    #[derive(Debug, Clone)]
    pub enum Meta<'a> {
        /// `u32`.
        U32(u32),
        /// `u64`.
        U64(u64),
        /// A string.
        Str(&'a str),
        /// An array of strings.
        Strs(&'a [&'a str]),
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    /// The bytes of a GGUF v3 file: metadata, tensor infos `(name, dims, ggml type)` laid out one
    /// after the other (32-byte aligned), and `data_bytes` zero bytes of data (pass the full size
    /// for a complete file, less for a truncated one).
    pub fn gguf(
        meta: &[(&str, Meta<'_>)],
        tensors: &[(&str, &[u64], u32)],
        data_bytes: u64,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(super::MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(meta.len() as u64).to_le_bytes());
        for (key, value) in meta {
            string(&mut out, key);
            match value {
                Meta::U32(v) => {
                    out.extend_from_slice(&4u32.to_le_bytes());
                    out.extend_from_slice(&v.to_le_bytes());
                }
                Meta::U64(v) => {
                    out.extend_from_slice(&10u32.to_le_bytes());
                    out.extend_from_slice(&v.to_le_bytes());
                }
                Meta::Str(s) => {
                    out.extend_from_slice(&8u32.to_le_bytes());
                    string(&mut out, s);
                }
                Meta::Strs(items) => {
                    out.extend_from_slice(&9u32.to_le_bytes());
                    out.extend_from_slice(&8u32.to_le_bytes());
                    out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                    for s in *items {
                        string(&mut out, s);
                    }
                }
            }
        }
        let mut offset = 0u64;
        for (name, dims, ggml_type) in tensors {
            string(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in *dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&ggml_type.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            let info = super::TensorInfo {
                name: String::new(),
                dims: dims.to_vec(),
                ggml_type: *ggml_type,
                offset,
            };
            offset += info.bytes().unwrap_or(0).div_ceil(32) * 32;
        }
        let aligned = (out.len() as u64).div_ceil(32) * 32;
        out.resize(aligned as usize, 0);
        let _ = out.write_all(&vec![0u8; data_bytes as usize]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::write::{gguf, Meta};
    use super::*;

    fn file(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, bytes).unwrap();
        f
    }

    fn model(data_bytes: u64) -> Vec<u8> {
        gguf(
            &[
                ("general.architecture", Meta::Str("qwen2")),
                ("general.basename", Meta::Str("DeepSeek-R1-Distill-Qwen")),
                ("general.size_label", Meta::Str("1.5B")),
                ("general.file_type", Meta::U32(7)),
                ("qwen2.block_count", Meta::U32(28)),
                ("tokenizer.ggml.tokens", Meta::Strs(&["a", "b", "<think>"])),
            ],
            &[
                ("token_embd.weight", &[64, 10], 8), // Q8_0: 2 blocks × 34 × 10 = 680
                ("output_norm.weight", &[64], 0),    // F32: 256
            ],
            data_bytes,
        )
    }

    /// Two layers of 1 KiB (F32, 256 elements) each, an output of 2 KiB, an embedding of 4 KiB.
    fn layered(tied: bool) -> Header {
        let mut tensors: Vec<(&str, &[u64], u32)> = vec![
            ("token_embd.weight", &[1024], 0),
            ("blk.0.attn_q.weight", &[256], 0),
            ("blk.1.attn_q.weight", &[256], 0),
            ("output_norm.weight", &[64], 0),
        ];
        if !tied {
            tensors.push(("output.weight", &[512], 0));
        }
        let bytes = gguf(
            &[
                ("general.architecture", Meta::Str("llama")),
                ("llama.block_count", Meta::U32(2)),
            ],
            &tensors,
            16 * 1024,
        );
        read_bytes(&bytes, "layered").unwrap()
    }

    #[test]
    fn offloaded_weights_follow_llama_cpps_layer_assignment() {
        let h = layered(false);
        let output = 2048 + 256;
        assert_eq!(h.offloaded_weight_bytes(0), Some(0));
        // One layer offloaded is the output layer alone, as llama.cpp counts.
        assert_eq!(h.offloaded_weight_bytes(1), Some(output));
        // Then the repeating layers from the last one down.
        assert_eq!(h.offloaded_weight_bytes(2), Some(output + 1024));
        assert_eq!(h.offloaded_weight_bytes(3), Some(output + 2048));
        assert_eq!(h.offloaded_weight_bytes(u32::MAX), Some(output + 2048));
        // Tied embeddings: the output layer is a copy of the embedding.
        assert_eq!(layered(true).offloaded_weight_bytes(1), Some(4096 + 256));
        assert_eq!(h.gpu_layers_within(0), Some(0));
        assert_eq!(h.gpu_layers_within(output + 1023), Some(1));
        assert_eq!(h.gpu_layers_within(output + 1024), Some(2));
        assert_eq!(h.gpu_layers_within(u64::MAX), Some(3));
        assert_eq!(h.device_memory_shortfall(3, output + 2048), None);
        assert_eq!(
            h.device_memory_shortfall(3, 0),
            None,
            "unknown memory: not this check's call"
        );
        let short = h.device_memory_shortfall(u32::MAX, output + 1024).unwrap();
        assert_eq!(
            (short.layers_asked, short.layers_total, short.fit_layers),
            (3, 3, 2)
        );
        assert_eq!(
            short.to_string(),
            "offloading 3 of its 3 layers needs at least 0.00 GB of device memory for the weights \
             alone, but the GPU memory is 0.00 GB; set gpu_layers to 2 or less"
        );
    }

    #[test]
    fn reads_metadata_tensors_and_sizes() {
        let f = file(&model(704 + 256));
        let h = read(f.path()).unwrap();
        assert_eq!(h.version, 3);
        assert_eq!(h.architecture(), Some("qwen2"));
        assert_eq!(h.str("general.size_label"), Some("1.5B"));
        assert_eq!(h.file_type_name(), Some("Q8_0"));
        assert_eq!(h.arch_uint("block_count"), Some(28));
        assert_eq!(
            h.metadata.get("tokenizer.ggml.tokens"),
            Some(&Value::Array {
                element_type: 8,
                len: 3
            })
        );
        assert_eq!(h.tensors.len(), 2);
        assert_eq!(h.tensors[0].bytes(), Some(680));
        assert_eq!(h.tensors[1].offset, 704);
        assert_eq!(h.parameter_count(), 640 + 64);
        assert_eq!(h.data_offset % 32, 0);
        assert_eq!(h.expected_file_bytes(), Some(h.data_offset + 704 + 256));
        assert_eq!(check(f.path()), HeaderCheck::Complete);
    }

    #[test]
    fn short_data_is_truncated_with_both_sizes() {
        let full = model(704 + 256);
        let f = file(&full[..full.len() - 100]);
        let expected = full.len() as u64;
        assert_eq!(
            check(f.path()),
            HeaderCheck::Truncated {
                actual_bytes: expected - 100,
                expected_bytes: expected
            }
        );
    }

    #[test]
    fn cut_inside_header_is_unreadable_not_a_panic() {
        let full = model(0);
        for cut in [5, 12, 30, 60, 100, 200] {
            let f = file(&full[..cut.min(full.len() - 1)]);
            assert_eq!(
                check(f.path()),
                HeaderCheck::UnreadableHeader,
                "cut at {cut}"
            );
        }
        let f = file(b"PK\x03\x04 not a gguf");
        assert_eq!(check(f.path()), HeaderCheck::NotGguf);
        assert!(check(Path::new("/nonexistent/x.gguf"))
            .explanation()
            .is_some());
    }

    #[test]
    fn huge_counts_do_not_allocate() {
        // A header claiming 2^60 tensors and a 2^62-byte key: an error, quickly.
        let mut bytes = b"GGUF".to_vec();
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(&(1u64 << 60).to_le_bytes());
        bytes.extend_from_slice(&1u64.to_le_bytes());
        bytes.extend_from_slice(&(1u64 << 62).to_le_bytes());
        let f = file(&bytes);
        assert!(matches!(read(f.path()), Err(GgufError::Malformed { .. })));
    }

    /// Found by the `gguf_header` fuzz target: two tensors whose element counts add up past
    /// `u64::MAX` made `parameter_count` overflow (a panic with overflow checks, a wrong small
    /// count without).
    #[test]
    fn parameter_count_of_a_corrupt_header_saturates_instead_of_overflowing() {
        let huge: &[u64] = &[1 << 32, 1 << 31];
        let bytes = write::gguf(&[], &[("a.weight", huge, 0), ("b.weight", huge, 0)], 0);
        let h = read_bytes(&bytes, "corrupt.gguf").unwrap();
        assert_eq!(h.tensors[0].elements(), 1 << 63);
        assert_eq!(h.parameter_count(), u64::MAX);
    }

    #[test]
    fn read_bytes_agrees_with_read() {
        let bytes = model(704 + 256);
        let f = file(&bytes);
        assert_eq!(
            read_bytes(&bytes, "m.gguf").unwrap(),
            read(f.path()).unwrap()
        );
        assert!(matches!(
            read_bytes(b"GGU", "short.gguf"),
            Err(GgufError::NotGguf { .. })
        ));
    }

    #[test]
    fn type_sizes_follow_ggml() {
        // Bits per weight of the common types, as ggml documents them.
        for (t, bpw) in [
            (2, 4.5),
            (8, 8.5),
            (12, 4.5),
            (13, 5.5),
            (14, 6.5625),
            (10, 2.625),
        ] {
            let (block, size) = type_size(t).unwrap();
            assert_eq!(size as f64 * 8.0 / block as f64, bpw, "type {t}");
        }
        assert_eq!(type_size(4), None);
        assert_eq!(type_size(31), None);
    }

    /// The real files of the test fixture cache (`scripts/fetch-test-models`), when present: the
    /// truncated R1 download implies the full 4,683,073,248-byte file (the size its notes record,
    /// and what llama.cpp's own gguf reader computed for it), SmolLM2 is complete.
    #[test]
    fn real_fixtures_when_present() {
        let dir = std::env::var_os("R1D_TEST_MODELS")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                    .join(".cache/r1d-test-models")
            });
        let r1 = dir.join("DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.part0000.gguf");
        let smol = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
        if !r1.exists() || !smol.exists() {
            eprintln!("SKIPPED: fixtures missing in {}", dir.display());
            return;
        }
        let h = read(&r1).unwrap();
        assert_eq!(h.architecture(), Some("qwen2"));
        assert_eq!(h.file_type_name(), Some("Q4_K_M"));
        assert_eq!(h.arch_uint("block_count"), Some(28));
        assert_eq!(h.arch_uint("embedding_length"), Some(3584));
        assert_eq!(h.expected_file_bytes(), Some(4_683_073_248));
        assert!(matches!(
            check(&r1),
            HeaderCheck::Truncated {
                actual_bytes: 99_614_720,
                expected_bytes: 4_683_073_248
            }
        ));
        let h = read(&smol).unwrap();
        assert_eq!(h.architecture(), Some("llama"));
        assert_eq!(h.file_type_name(), Some("Q4_1"));
        assert!(h.expected_file_bytes().unwrap() <= h.file_bytes);
        assert!(h.file_bytes - h.expected_file_bytes().unwrap() < h.alignment);
        assert_eq!(check(&smol), HeaderCheck::Complete);
    }
}

//! What a GGUF file's header says about the file: used to explain a failed load ("truncated or
//! incomplete" rather than llama.cpp's bare NULL).

use std::ffi::CString;
use std::io::Read;
use std::path::Path;

use llama_cpp_sys_2 as sys;

/// The GGUF magic, the first four bytes of every GGUF file.
const GGUF_MAGIC: &[u8; 4] = b"GGUF";

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

/// Reads the GGUF header of `path` (metadata and tensor infos only, no tensor data) and compares
/// the size it implies with the size on disk.
pub fn check(path: &Path) -> HeaderCheck {
    let actual_bytes = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) => return HeaderCheck::Io(e.to_string()),
    };
    let mut magic = [0u8; 4];
    match std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)) {
        Ok(()) if &magic == GGUF_MAGIC => {}
        Ok(()) => return HeaderCheck::NotGguf,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return HeaderCheck::NotGguf,
        Err(e) => return HeaderCheck::Io(e.to_string()),
    }
    match expected_size(path) {
        Some(expected_bytes) if expected_bytes > actual_bytes => HeaderCheck::Truncated {
            actual_bytes,
            expected_bytes,
        },
        Some(_) => HeaderCheck::Complete,
        None => HeaderCheck::UnreadableHeader,
    }
}

/// Data offset plus the end of the furthest tensor, per the header; `None` when the header does
/// not parse.
fn expected_size(path: &Path) -> Option<u64> {
    let c_path = CString::new(path.to_str()?).ok()?;
    let params = sys::gguf_init_params {
        no_alloc: true,
        ctx: std::ptr::null_mut(),
    };
    // SAFETY: `c_path` is a valid NUL-terminated string for the call; with `no_alloc` and a NULL
    // `ctx` gguf only parses the header and returns NULL on any malformed input.
    let ctx = unsafe { sys::gguf_init_from_file(c_path.as_ptr(), params) };
    if ctx.is_null() {
        return None;
    }
    // SAFETY: `ctx` is a valid, non-NULL context until `gguf_free` below; tensor ids are taken
    // from 0..n_tensors, which is what the getters accept.
    let end = unsafe {
        let data_offset = sys::gguf_get_data_offset(ctx) as u64;
        let mut end = data_offset;
        for id in 0..sys::gguf_get_n_tensors(ctx) {
            let tensor_end = data_offset
                .saturating_add(sys::gguf_get_tensor_offset(ctx, id) as u64)
                .saturating_add(sys::gguf_get_tensor_size(ctx, id) as u64);
            end = end.max(tensor_end);
        }
        sys::gguf_free(ctx);
        end
    };
    Some(end)
}

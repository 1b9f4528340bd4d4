//! Opening files that a user or an administrator names (models, configs) without letting a
//! special file take r1d down: a FIFO would block `open` until a writer comes, a device could
//! answer forever. Files are opened with `O_NONBLOCK` (which returns at once for a FIFO and
//! changes nothing for a regular file) and kept only when `fstat` says they are regular.

use std::fs::File;
use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// Why a file was not read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Opening or reading failed.
    #[error("failed to read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// It is a FIFO, socket, device or directory.
    #[error("{path} is not a regular file (it is {kind}); r1d reads only regular files there")]
    NotRegular {
        /// The file.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// It is larger than allowed.
    #[error("{path} is {size} bytes, more than the {limit} bytes r1d reads from such a file")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
}

impl FileError {
    /// The OS error, when there is one (e.g. to tell a missing file from others).
    pub fn io_kind(&self) -> Option<std::io::ErrorKind> {
        match self {
            FileError::Io { source, .. } => Some(source.kind()),
            _ => None,
        }
    }
}

/// What kind of file `meta` describes, in words, for [`FileError::NotRegular`].
pub fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_file() {
        "a regular file"
    } else {
        "a special file"
    }
}

/// Opens `path` (following symlinks) for reading without blocking on a FIFO, and returns it
/// only when it is a regular file.
///
/// # Errors
/// [`FileError::Io`] when it cannot be opened; [`FileError::NotRegular`] for anything but a
/// regular file.
pub fn open_regular(path: &Path) -> Result<File, FileError> {
    let io = |source| FileError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(FileError::NotRegular {
            path: path.to_owned(),
            kind: kind_of(&meta),
        });
    }
    Ok(file)
}

/// Reads the regular file `path` as UTF-8 text of at most `limit` bytes.
///
/// # Errors
/// See [`open_regular`]; [`FileError::TooLarge`] over `limit`; [`FileError::Io`] for text that
/// is not UTF-8.
pub fn read_text_bounded(path: &Path, limit: u64) -> Result<String, FileError> {
    let io = |source| FileError::Io {
        path: path.to_owned(),
        source,
    };
    let file = open_regular(path)?;
    let size = file.metadata().map_err(io)?.len();
    if size > limit {
        return Err(FileError::TooLarge {
            path: path.to_owned(),
            size,
            limit,
        });
    }
    let mut text = String::new();
    // The file may grow after the check: never read past the limit.
    let read = file.take(limit + 1).read_to_string(&mut text).map_err(io)?;
    if read as u64 > limit {
        return Err(FileError::TooLarge {
            path: path.to_owned(),
            size: read as u64,
            limit,
        });
    }
    Ok(text)
}

/// Checks that a model path is a regular file or a directory (following symlinks), without
/// opening it.
///
/// # Errors
/// [`FileError::Io`] when it cannot be examined; [`FileError::NotRegular`] for a FIFO, socket or
/// device.
pub fn check_model_path(path: &Path) -> Result<std::fs::Metadata, FileError> {
    let meta = std::fs::metadata(path).map_err(|source| FileError::Io {
        path: path.to_owned(),
        source,
    })?;
    if !(meta.is_file() || meta.is_dir()) {
        return Err(FileError::NotRegular {
            path: path.to_owned(),
            kind: kind_of(&meta),
        });
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fifo(path: &Path) {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
    }

    #[test]
    fn a_fifo_is_refused_at_once_not_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r1d.toml");
        fifo(&p);
        let e = read_text_bounded(&p, 1 << 20).unwrap_err().to_string();
        assert!(
            e.contains("not a regular file") && e.contains("FIFO"),
            "{e}"
        );
        assert!(check_model_path(&p).is_err());
        assert!(open_regular(dir.path()).is_err());
    }

    #[test]
    fn text_over_the_limit_is_refused_with_both_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big");
        std::fs::write(&p, vec![b'#'; 2000]).unwrap();
        let e = read_text_bounded(&p, 1000).unwrap_err().to_string();
        assert!(e.contains("2000") && e.contains("1000"), "{e}");
        assert_eq!(read_text_bounded(&p, 2000).unwrap().len(), 2000);
    }
}

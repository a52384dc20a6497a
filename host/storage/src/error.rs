//! Errors at the storage crate boundary.

use std::path::PathBuf;

/// Everything the storage layer can report. Corruption is always an error, never data.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Preallocation failed (no space, quota, file size limit): the log is unchanged.
    #[error("cannot preallocate {size_bytes} bytes for {path}: {source} (disk full?)")]
    Preallocate {
        path: PathBuf,
        size_bytes: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt data at {what}: {detail}")]
    Corrupt { what: String, detail: String },
    #[error("entry of {size_bytes} bytes exceeds entry_size_max_bytes {size_max_bytes}")]
    EntryTooLarge { size_bytes: u64, size_max_bytes: u64 },
    #[error("index {index} out of range [{first_index}, {last_index}]")]
    IndexOutOfRange { index: u64, first_index: u64, last_index: u64 },
    #[error("position {pos} out of range [{min_pos}, {max_pos})")]
    PosOutOfRange { pos: u64, min_pos: u64, max_pos: u64 },
    #[error("non-contiguous append: expected index {expected}, got {got}")]
    NonContiguous { expected: u64, got: u64 },
    #[error("term went backwards at index {index}: term {term} < previous term {previous_term}")]
    TermRegression { index: u64, term: u64, previous_term: u64 },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("record codec: {0}")]
    Codec(#[from] crate::record::CodecError),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Attach a path to an `io::Error`.
pub(crate) trait IoContext<T> {
    fn at(self, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: &std::path::Path) -> Result<T> {
        self.map_err(|source| StorageError::Io { path: path.to_path_buf(), source })
    }
}

pub(crate) fn corrupt(what: impl Into<String>, detail: impl Into<String>) -> StorageError {
    StorageError::Corrupt { what: what.into(), detail: detail.into() }
}

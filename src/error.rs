//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong when reading cases or running the engine on them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A parameter is outside what PyTorch accepts (zero/negative/NaN scale, zero point out of
    /// range, unknown engine name, ...).
    #[error("invalid {what}: {why}")]
    Invalid { what: String, why: String },
    /// Tensor shapes or lengths do not fit together.
    #[error("shape mismatch in {what}: {why}")]
    Shape { what: String, why: String },
    /// A golden or case file could not be read or understood.
    #[error("{path}: {field}: {why}")]
    Case {
        path: PathBuf,
        field: String,
        why: String,
    },
    /// I/O error with the path involved.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// Shorthand result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An [`Error::Invalid`].
    pub fn invalid(what: impl Into<String>, why: impl Into<String>) -> Self {
        Error::Invalid {
            what: what.into(),
            why: why.into(),
        }
    }
    /// An [`Error::Shape`].
    pub fn shape(what: impl Into<String>, why: impl Into<String>) -> Self {
        Error::Shape {
            what: what.into(),
            why: why.into(),
        }
    }
}

//! Errors of the core crate. Every input error names the file, the place in it
//! (line, record, field) and what was expected, so a user can fix the input.

use std::path::{Path, PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Malformed or unexpected input at a known place in a file.
    #[error("{}: {location}: {message}", path.display())]
    Input {
        path: PathBuf,
        /// e.g. "line 12", "record 3, field `hits[4].docid`"
        location: String,
        message: String,
    },
    /// An I/O failure on a named file. The OS error is part of the message
    /// and deliberately not a `source`, so that printing the error chain
    /// (`{:#}`) does not repeat it.
    #[error("{}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// A bad argument or configuration value (not tied to a file).
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub fn input(
        path: impl AsRef<Path>,
        location: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Error::Input {
            path: path.as_ref().to_path_buf(),
            location: location.into(),
            message: message.into(),
        }
    }

    pub fn io(path: impl AsRef<Path>, cause: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            cause,
        }
    }
}

//! One error type for the whole library. Every variant renders as one line
//! that names what was wrong (the tensor, shape, file or field).

use std::fmt;

/// Errors returned by dora-wgpu. Nothing in the library panics on user input.
#[derive(Debug)]
pub enum Error {
    /// No GPU adapter could be found or the device could not be created.
    NoAdapter(String),
    /// The GPU device reported an error (validation, out of memory, lost device).
    Device(String),
    /// Tensor shapes do not fit the operation.
    Shape(String),
    /// An argument is out of range or of the wrong kind.
    InvalidArgument(String),
    /// A file could not be read or written.
    Io {
        path: String,
        source: std::io::Error,
    },
    /// A file was read but its contents are not what was expected.
    Format { path: String, message: String },
    /// Training stopped: a non-finite loss or gradient.
    Training(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoAdapter(m) => write!(f, "no GPU adapter: {m}"),
            Error::Device(m) => write!(f, "GPU device error: {m}"),
            Error::Shape(m) => write!(f, "shape error: {m}"),
            Error::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
            Error::Io { path, source } => write!(f, "{path}: {source}"),
            Error::Format { path, message } => write!(f, "{path}: {message}"),
            Error::Training(m) => write!(f, "training stopped: {m}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Shorthand for returning a shape error with a formatted message.
macro_rules! shape_err {
    ($($arg:tt)*) => { return Err($crate::Error::Shape(format!($($arg)*))) };
}
/// Shorthand for returning an invalid-argument error with a formatted message.
macro_rules! arg_err {
    ($($arg:tt)*) => { return Err($crate::Error::InvalidArgument(format!($($arg)*))) };
}
pub(crate) use arg_err;
pub(crate) use shape_err;

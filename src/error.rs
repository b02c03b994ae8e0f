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
    /// A result that should be a number is NaN or infinite (e.g. an evaluation loss).
    NotFinite(String),
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
            Error::NotFinite(m) => write!(f, "{m}"),
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

/// One line for a panic (always a bug in this library, never the user's
/// fault): its message and the source location a bug report needs.
pub fn describe_panic(info: &std::panic::PanicHookInfo) -> String {
    let payload = info.payload();
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    let at = info
        .location()
        .map(|l| format!(" at {}:{}:{}", l.file(), l.line(), l.column()))
        .unwrap_or_default();
    format!(
        "internal error (a bug in dora-wgpu; please report it){at}: {}",
        message.lines().next().unwrap_or("")
    )
}

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

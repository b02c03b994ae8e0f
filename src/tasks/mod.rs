//! The CLI's subcommands as library calls: each one a function a program can
//! call with a `Gpu` of its own.

pub mod analyze;
mod convert;
mod eval;
mod generate;
mod merge;
mod new_dir;

pub use analyze::{analyze_adapters, analyze_tuned, Record};
pub use convert::{convert_adapter, AdapterFormat};
pub use eval::{evaluate, EvalReport};
pub use generate::{generate, Sampling};
pub use merge::{merge_model, merge_to_gguf, OutType};

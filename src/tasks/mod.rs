//! The CLI's subcommands as library calls: each one a function a program can
//! call with a `Gpu` of its own.

mod eval;
mod generate;
mod merge;

pub use eval::{evaluate, EvalReport};
pub use generate::{generate, Sampling};
pub use merge::merge_model;

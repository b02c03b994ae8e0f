//! Text: tokenizers (a model directory's `tokenizer.json`, or a GGUF file's
//! metadata), chat templates, and JSONL examples tokenized for training.

mod chat_template;
pub mod data;
pub mod tokenizer;

pub use tokenizer::{ChatMessage, DecodeStream, Tokenizer};

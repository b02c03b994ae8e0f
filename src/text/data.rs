//! Text examples from JSONL files, in the three formats MLX-LM and PEFT users
//! bring, tokenized as Hugging Face does, with a mask of the scored tokens:
//! - `{"text": ...}`: every token after the first is scored;
//! - `{"prompt": ..., "completion": ...}`: ids = tok(prompt, with special
//!   tokens) + tok(completion, without); only the completion is scored;
//! - `{"messages": [...]}`: the chat template over the whole conversation;
//!   only assistant turns (through their end-of-turn tokens) are scored.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::ops::IGNORE_INDEX;
use crate::text::{ChatMessage, Tokenizer};

/// One tokenized example. `scored[t]` says whether token t is a training or
/// evaluation target (predicted from position t − 1); `scored[0]` is false.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    pub ids: Vec<u32>,
    pub scored: Vec<bool>,
}

impl Example {
    /// Targets for positions 0..len−1: the next token where scored, else the ignore index.
    pub fn targets(&self) -> Vec<i32> {
        (1..self.ids.len())
            .map(|t| {
                if self.scored[t] {
                    self.ids[t] as i32
                } else {
                    IGNORE_INDEX
                }
            })
            .collect()
    }

    /// Number of scored targets.
    pub fn scored_count(&self) -> usize {
        self.scored.iter().filter(|&&s| s).count()
    }
}

/// Tokenizes one parsed JSONL line.
pub fn tokenize_line(line: &Value, tokenizer: &Tokenizer) -> std::result::Result<Example, String> {
    let obj = line.as_object().ok_or("expected a JSON object")?;
    if let Some(text) = obj.get("text") {
        let text = text.as_str().ok_or("field text must be a string")?;
        let ids = tokenizer.encode(text, true).map_err(|e| e.to_string())?;
        let scored = (0..ids.len()).map(|t| t > 0).collect();
        return Ok(Example { ids, scored });
    }
    if let (Some(prompt), Some(completion)) = (obj.get("prompt"), obj.get("completion")) {
        let prompt = prompt.as_str().ok_or("field prompt must be a string")?;
        let completion = completion
            .as_str()
            .ok_or("field completion must be a string")?;
        let mut ids = tokenizer.encode(prompt, true).map_err(|e| e.to_string())?;
        let prompt_len = ids.len();
        ids.extend(
            tokenizer
                .encode(completion, false)
                .map_err(|e| e.to_string())?,
        );
        let scored = (0..ids.len()).map(|t| t >= prompt_len && t > 0).collect();
        return Ok(Example { ids, scored });
    }
    if let Some(messages) = obj.get("messages") {
        let messages: Vec<ChatMessage> =
            serde_json::from_value(messages.clone()).map_err(|e| format!("field messages: {e}"))?;
        return tokenize_chat(&messages, tokenizer).map_err(|e| e.to_string());
    }
    Err(
        "expected a \"text\" field, \"prompt\" and \"completion\" fields, or a \"messages\" list"
            .into(),
    )
}

/// The conversation through the chat template; assistant turns scored. Each
/// assistant turn spans from the end of the prompt that asks for it (the
/// template with a generation prompt over the turns before it) to the end of
/// the template over the turns through it.
fn tokenize_chat(messages: &[ChatMessage], tokenizer: &Tokenizer) -> Result<Example> {
    let encode = |upto: usize, generation_prompt: bool| -> Result<Vec<u32>> {
        let text = tokenizer.apply_chat_template(&messages[..upto], generation_prompt)?;
        tokenizer.encode(&text, false)
    };
    let ids = encode(messages.len(), false)?;
    let mut scored = vec![false; ids.len()];
    // The spans are only right if each partial render is a prefix of the
    // whole one; templates that render a turn differently once later turns
    // follow (e.g. ones that drop earlier reasoning) break that.
    let unstable = |turn: usize, what: &str| {
        Error::InvalidArgument(format!(
            "message {turn} (assistant): the chat template renders {what} differently on its own than within the whole conversation, so the assistant's tokens cannot be located; use the prompt/completion format for this data"
        ))
    };
    for (i, m) in messages.iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        let start = if i == 0 {
            0
        } else {
            let prefix = encode(i, true)?;
            if !ids.starts_with(&prefix) {
                return Err(unstable(i + 1, "the conversation before it"));
            }
            prefix.len()
        };
        let through = encode(i + 1, false)?;
        if !ids.starts_with(&through) {
            return Err(unstable(i + 1, "the conversation through it"));
        }
        for s in scored.iter_mut().take(through.len()).skip(start.max(1)) {
            *s = true;
        }
    }
    Ok(Example { ids, scored })
}

/// Why `ids` do not fit a model of `vocab_size` tokens, naming the token;
/// None when they fit.
fn out_of_vocabulary(ids: &[u32], tokenizer: &Tokenizer, vocab_size: usize) -> Option<String> {
    let id = *ids.iter().find(|&&id| id as usize >= vocab_size)?;
    Some(format!(
        "token {:?} (id {id}) is outside the model's vocabulary (vocab_size {vocab_size}): the tokenizer has tokens the model has no embedding for",
        tokenizer.id_to_token(id).unwrap_or_default()
    ))
}

/// Refuses token ids the model has no embedding row for (e.g. special tokens
/// that `tokenizer_config.json` adds past `vocab_size`), naming the token.
pub fn check_vocabulary(ids: &[u32], tokenizer: &Tokenizer, vocab_size: usize) -> Result<()> {
    match out_of_vocabulary(ids, tokenizer, vocab_size) {
        Some(message) => Err(Error::InvalidArgument(message)),
        None => Ok(()),
    }
}

/// [`check_vocabulary`] over every example read from `path`, naming the example.
pub fn check_examples_vocabulary(
    path: &Path,
    examples: &[Example],
    tokenizer: &Tokenizer,
    vocab_size: usize,
) -> Result<()> {
    for (i, ex) in examples.iter().enumerate() {
        if let Some(message) = out_of_vocabulary(&ex.ids, tokenizer, vocab_size) {
            return Err(Error::Format {
                path: path.display().to_string(),
                message: format!("example {}: {message}", i + 1),
            });
        }
    }
    Ok(())
}

/// Reads and tokenizes every non-empty line of a JSONL file. A bad line fails
/// with the file name and its line number.
pub fn read_jsonl(path: &Path, tokenizer: &Tokenizer) -> Result<Vec<Example>> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let fail = |message: String| Error::Format {
            path: format!("{}:{}", path.display(), i + 1),
            message,
        };
        let line = std::str::from_utf8(line).map_err(|e| fail(format!("not valid UTF-8 ({e})")))?;
        if line.trim().is_empty() {
            continue;
        }
        let value: Value =
            serde_json::from_str(line).map_err(|e| fail(format!("invalid JSON: {e}")))?;
        out.push(tokenize_line(&value, tokenizer).map_err(fail)?);
    }
    if out.is_empty() {
        return Err(Error::Format {
            path: path.display().to_string(),
            message: "holds no examples".into(),
        });
    }
    Ok(out)
}

/// Random token sequences of exactly `seq + 1` tokens (every target scored),
/// so every micro-batch is a full [batch, seq] with no padding.
pub fn random_examples(vocab: usize, count: usize, seq: usize, seed: u64) -> Vec<Example> {
    random_examples_of_lengths(vocab, count, seq + 1..=seq + 1, seed)
}

/// Random token sequences (every target scored) whose lengths are drawn
/// from `lengths`, as real data's vary.
pub fn random_examples_of_lengths(
    vocab: usize,
    count: usize,
    lengths: std::ops::RangeInclusive<usize>,
    seed: u64,
) -> Vec<Example> {
    let mut rng = crate::nn::Rng::new(seed);
    let (shortest, spread) = (*lengths.start(), lengths.end() - lengths.start() + 1);
    (0..count)
        .map(|_| {
            let len = match spread {
                1 => shortest,
                _ => shortest + rng.next_u64() as usize % spread,
            };
            Example {
                ids: (0..len)
                    .map(|_| (rng.next_u64() % vocab as u64) as u32)
                    .collect(),
                scored: (0..len).map(|t| t > 0).collect(),
            }
        })
        .collect()
}

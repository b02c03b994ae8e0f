//! Text in and out of token ids, the way Hugging Face transformers does it.
//!
//! [`Tokenizer::from_dir`] reads a model directory as `AutoTokenizer` does
//! (transformers 5): the backend pipeline from `tokenizer.json` (run by the
//! `tokenizers` crate, the same Rust code as the Python fast tokenizer), the
//! special tokens and flags from `tokenizer_config.json`, the chat template from
//! `chat_template.jinja` or `tokenizer_config.json`, and the stop tokens from
//! `generation_config.json`. [`Tokenizer::from_gguf`] builds the same from a
//! GGUF file's `tokenizer.ggml.*` metadata (see `gguf.rs`), and
//! [`Tokenizer::load`] picks one of the two by what the path is.
//!
//! What transformers changes on top of `tokenizer.json`, and this module copies:
//! - encoding never truncates or pads, whatever `tokenizer.json` stores;
//! - named special tokens of `tokenizer_config.json` (and its
//!   `added_tokens_decoder`) missing from `tokenizer.json` are added as
//!   special tokens;
//! - `add_bos_token`/`add_eos_token` of `tokenizer_config.json` are ignored
//!   (transformers 5 drops them when `tokenizer.json` exists): BOS/EOS are
//!   added exactly as `tokenizer.json`'s post-processor says;
//! - decoding applies `clean_up_tokenization_spaces` only to non-BPE models;
//! - a SentencePiece-style `tokenizer.json` declared as `LlamaTokenizer`
//!   (Llama 2, TinyLlama, CodeLlama-style checkpoints with `model_type`
//!   `llama`) gets the pipeline transformers 5's `LlamaTokenizer` builds
//!   instead of the file's own: a Metaspace pre-tokenizer (`prepend_scheme`
//!   "first", or "always" with `legacy: true`) replacing the
//!   Prepend+Replace normalizer, which changes the ids of text that starts
//!   with spaces or follows a special token (`<s>[INST]`). Other
//!   model-specific classes (Qwen2, GPT-2, Gemma, ...) rebuild the same
//!   pipeline their standard `tokenizer.json` holds, so the file is used as is.
//!
//! Chat templates render with minijinja configured like transformers' Jinja
//! sandbox: `trim_blocks`, `lstrip_blocks`, loop controls, `raise_exception`,
//! `strftime_now` (UTC), a `tojson` that writes like Python's `json.dumps`,
//! Python string/dict methods (`.strip()`, `.items()`, ...), and the special
//! tokens (`bos_token`, `eos_token`, ...) as variables.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, ErrorKind};
use serde::Deserialize;
use serde_json::Value as Json;
use tokenizers::processors::template::{Template, TemplateProcessing};
use tokenizers::AddedToken;

use crate::error::{Error, Result};

#[path = "gguf.rs"]
mod gguf;

/// One chat turn. Deserializes from `{"role": ..., "content": ...}` (other keys
/// are ignored), so a JSONL line `{"messages": [...]}` parses into a
/// `Vec<ChatMessage>`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A Hugging Face tokenizer with its special tokens and chat template.
pub struct Tokenizer {
    /// The model directory, or the GGUF file.
    dir: PathBuf,
    inner: tokenizers::Tokenizer,
    bos_token: Option<String>,
    eos_token: Option<String>,
    pad_token: Option<String>,
    /// The named special tokens passed to the chat template, in
    /// transformers' order (bos, eos, unk, sep, pad, cls, mask).
    special_tokens_map: Vec<(&'static str, String)>,
    /// `eos_token_id` of `generation_config.json`, if present.
    generation_eos: Vec<u32>,
    clean_up_tokenization_spaces: bool,
    chat_template: TemplateState,
}

struct ChatTemplate {
    /// The file the template came from (for error messages).
    path: PathBuf,
    source: String,
    compiled: OnceLock<std::result::Result<Environment<'static>, String>>,
}

const SPECIAL_TOKEN_KEYS: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

fn one_line(s: impl std::fmt::Display) -> String {
    s.to_string()
        .split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn show(p: &Path) -> String {
    p.display().to_string()
}

fn format_err(path: &Path, message: impl Into<String>) -> Error {
    Error::Format {
        path: show(path),
        message: one_line(message.into()),
    }
}

/// Reads and parses an optional JSON file: `Ok(None)` when it does not exist.
fn read_json(path: &Path) -> Result<Option<Json>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::Io {
                path: show(path),
                source,
            })
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| format_err(path, format!("invalid JSON: {e}")))
}

/// A special token in `tokenizer_config.json`: a string, an AddedToken object
/// (`{"content": ..., "lstrip": ..., ...}`) or null.
fn parse_special(path: &Path, key: &str, v: &Json) -> Result<Option<AddedToken>> {
    match v {
        Json::Null => Ok(None),
        Json::String(s) => Ok(Some(AddedToken::from(s.clone(), true))),
        Json::Object(o) => {
            let Some(content) = o.get("content").and_then(Json::as_str) else {
                return Err(format_err(
                    path,
                    format!("field \"{key}\": an object needs a string \"content\""),
                ));
            };
            Ok(Some(added_token_from_object(content, o, true)))
        }
        _ => Err(format_err(
            path,
            format!("field \"{key}\": expected a string or {{\"content\": ...}}, got {v}"),
        )),
    }
}

fn added_token_from_object(
    content: &str,
    o: &serde_json::Map<String, Json>,
    default_special: bool,
) -> AddedToken {
    let flag = |k: &str| o.get(k).and_then(Json::as_bool);
    let special = flag("special").unwrap_or(default_special);
    AddedToken::from(content.to_string(), special)
        .single_word(flag("single_word").unwrap_or(false))
        .lstrip(flag("lstrip").unwrap_or(false))
        .rstrip(flag("rstrip").unwrap_or(false))
        .normalized(flag("normalized").unwrap_or(!special))
}

fn parse_bool(path: &Path, key: &str, v: Option<&Json>) -> Result<Option<bool>> {
    match v {
        None => Ok(None),
        Some(Json::Null) => Ok(Some(false)),
        Some(Json::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(format_err(
            path,
            format!("field \"{key}\": expected true or false, got {other}"),
        )),
    }
}

fn parse_ids(path: &Path, key: &str, v: &Json) -> Result<Vec<u32>> {
    let one = |x: &Json| -> Result<u32> {
        x.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                format_err(
                    path,
                    format!("field \"{key}\": expected a token id or a list of ids, got {v}"),
                )
            })
    };
    match v {
        Json::Null => Ok(vec![]),
        Json::Array(a) => a.iter().map(one).collect(),
        x => Ok(vec![one(x)?]),
    }
}

impl Tokenizer {
    /// Loads the tokenizer of a Hugging Face model directory: `tokenizer.json`
    /// (required), `tokenizer_config.json`, `chat_template.jinja` and
    /// `generation_config.json` (optional).
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Tokenizer> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(Error::Io {
                path: show(dir),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "model directory not found",
                ),
            });
        }
        let tok_path = dir.join("tokenizer.json");
        let bytes = std::fs::read(&tok_path).map_err(|source| Error::Io {
            path: show(&tok_path),
            source,
        })?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg = match read_json(&cfg_path)? {
            None => serde_json::Map::new(),
            Some(Json::Object(o)) => o,
            Some(_) => return Err(format_err(&cfg_path, "expected a JSON object")),
        };

        let mut inner = if uses_llama_class(dir, &cfg, &bytes)? {
            // transformers 5's LlamaTokenizer keeps only the vocabulary, merges,
            // added tokens and post-processor of tokenizer.json and rebuilds
            // the rest (Metaspace pre-tokenizer instead of the legacy
            // Prepend+Replace normalizer).
            let mut json: Json = serde_json::from_slice(&bytes)
                .map_err(|e| format_err(&tok_path, format!("invalid JSON: {e}")))?;
            let legacy = matches!(cfg.get("legacy"), Some(Json::Bool(true)));
            let add_prefix_space = !matches!(cfg.get("add_prefix_space"), Some(Json::Bool(false)));
            llama_rebuild(&mut json, add_prefix_space, legacy)
                .map_err(|m| format_err(&tok_path, m))?;
            json.to_string().parse::<tokenizers::Tokenizer>()
        } else {
            tokenizers::Tokenizer::from_bytes(&bytes)
        }
        .map_err(|e| format_err(&tok_path, format!("cannot load tokenizer: {e}")))?;
        // transformers encodes with truncation and padding off unless asked.
        inner
            .with_truncation(None)
            .map_err(|e| format_err(&tok_path, format!("cannot disable truncation: {e}")))?;
        inner.with_padding(None);

        // Named special tokens; those missing from the tokenizer are added.
        let mut special: Vec<(&'static str, AddedToken)> = Vec::new();
        for key in SPECIAL_TOKEN_KEYS {
            if let Some(v) = cfg.get(key) {
                if let Some(t) = parse_special(&cfg_path, key, v)? {
                    special.push((key, t));
                }
            }
        }
        let added: std::collections::HashSet<String> = inner
            .get_added_tokens_decoder()
            .into_values()
            .map(|t| t.content)
            .collect();
        let mut to_add: Vec<AddedToken> = Vec::new();
        if let Some(decoder) = cfg.get("added_tokens_decoder") {
            let Some(map) = decoder.as_object() else {
                return Err(format_err(
                    &cfg_path,
                    "field \"added_tokens_decoder\": expected an object",
                ));
            };
            let mut entries: Vec<(u64, &Json)> = Vec::new();
            for (k, v) in map {
                let id = k.parse::<u64>().map_err(|_| {
                    format_err(
                        &cfg_path,
                        format!("field \"added_tokens_decoder\": key {k:?} is not a token id"),
                    )
                })?;
                entries.push((id, v));
            }
            entries.sort_by_key(|e| e.0);
            for (id, v) in entries {
                let Some(o) = v.as_object() else {
                    return Err(format_err(
                        &cfg_path,
                        format!("field \"added_tokens_decoder\": entry {id} is not an object"),
                    ));
                };
                let Some(content) = o.get("content").and_then(Json::as_str) else {
                    return Err(format_err(
                        &cfg_path,
                        format!(
                            "field \"added_tokens_decoder\": entry {id} has no string \"content\""
                        ),
                    ));
                };
                if !added.contains(content) {
                    to_add.push(added_token_from_object(content, o, false));
                }
            }
        }
        for (_, t) in &special {
            if !added.contains(&t.content) && !to_add.iter().any(|a| a.content == t.content) {
                to_add.push(t.clone());
            }
        }
        if !to_add.is_empty() {
            let (sp, plain): (Vec<AddedToken>, Vec<AddedToken>) =
                to_add.into_iter().partition(|t| t.special);
            inner.add_tokens(&plain);
            inner.add_special_tokens(&sp);
        }
        let get_tok = |key: &str| {
            special
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, t)| t.content.clone())
        };
        let bos_token = get_tok("bos_token");
        let eos_token = get_tok("eos_token");
        let pad_token = get_tok("pad_token");

        // transformers 5 ignores add_bos_token/add_eos_token of
        // tokenizer_config.json when tokenizer.json exists (the post-processor
        // decides), and gives a tokenizer.json without a post-processor the
        // plain `$A:0` / `$A:0 $B:1` template.
        for key in ["add_bos_token", "add_eos_token"] {
            parse_bool(&cfg_path, key, cfg.get(key))?;
        }
        if inner.get_post_processor().is_none() {
            let plain = |pieces: &[&str]| {
                Template::try_from(pieces.iter().map(|p| p.to_string()).collect::<Vec<_>>())
                    .map_err(|e| format_err(&tok_path, format!("post-processor: {e}")))
            };
            let pp = TemplateProcessing::builder()
                .single(plain(&["$A:0"])?)
                .pair(plain(&["$A:0", "$B:1"])?)
                .build()
                .map_err(|e| format_err(&tok_path, format!("post-processor: {e}")))?;
            inner.with_post_processor(Some(pp));
        }

        if parse_bool(
            &cfg_path,
            "split_special_tokens",
            cfg.get("split_special_tokens"),
        )?
        .unwrap_or(false)
        {
            inner.set_encode_special_tokens(true);
        }
        let clean_up = parse_bool(
            &cfg_path,
            "clean_up_tokenization_spaces",
            cfg.get("clean_up_tokenization_spaces"),
        )?
        .unwrap_or(false);
        let is_bpe = matches!(inner.get_model(), tokenizers::ModelWrapper::BPE(_));
        let clean_up_tokenization_spaces = clean_up && !is_bpe;

        // Chat template: chat_template.jinja wins over tokenizer_config.json.
        let jinja_path = dir.join("chat_template.jinja");
        let chat_template = match std::fs::read_to_string(&jinja_path) {
            Ok(source) => TemplateState::Found(Box::new(ChatTemplate::new(jinja_path, source))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                template_from_config(&cfg_path, cfg.get("chat_template"))?
            }
            Err(source) => {
                return Err(Error::Io {
                    path: show(&jinja_path),
                    source,
                })
            }
        };

        let gen_path = dir.join("generation_config.json");
        let generation_eos = match read_json(&gen_path)? {
            None => vec![],
            Some(Json::Object(o)) => match o.get("eos_token_id") {
                None => vec![],
                Some(v) => parse_ids(&gen_path, "eos_token_id", v)?,
            },
            Some(_) => return Err(format_err(&gen_path, "expected a JSON object")),
        };

        let special_tokens_map = special
            .iter()
            .map(|(k, t)| (*k, t.content.clone()))
            .collect();
        Ok(Tokenizer {
            dir: dir.to_path_buf(),
            inner,
            bos_token,
            eos_token,
            pad_token,
            special_tokens_map,
            generation_eos,
            clean_up_tokenization_spaces,
            chat_template,
        })
    }

    /// The model directory, or the GGUF file, this tokenizer was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The underlying `tokenizers` tokenizer (with transformers' adjustments applied).
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// The texts of `tokenizer.json` and `tokenizer_config.json` (by file
    /// name), so a tokenizer built from a GGUF file loads with `AutoTokenizer`
    /// from a Hugging Face directory (special tokens and chat template included).
    pub fn hf_files(&self) -> Result<[(&'static str, String); 2]> {
        let json = self.inner.to_string(true).map_err(|e| Error::Format {
            path: self.dir.display().to_string(),
            message: format!("the tokenizer cannot be written as tokenizer.json: {e}"),
        })?;
        let mut config = serde_json::Map::new();
        for (key, value) in &self.special_tokens_map {
            config.insert((*key).to_string(), value.clone().into());
        }
        config.insert(
            "clean_up_tokenization_spaces".into(),
            self.clean_up_tokenization_spaces.into(),
        );
        if let TemplateState::Found(t) = &self.chat_template {
            config.insert("chat_template".into(), t.source.clone().into());
        }
        let config = serde_json::to_string_pretty(&config).expect("JSON values serialize");
        Ok([
            ("tokenizer.json", json),
            ("tokenizer_config.json", config + "\n"),
        ])
    }

    /// Token ids of `text`, as `AutoTokenizer.encode(text, add_special_tokens=...)`.
    /// Special tokens written in the text (e.g. `<|im_end|>`) become their ids.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, add_special_tokens)
            .map_err(|e| Error::InvalidArgument(one_line(format!("cannot encode text: {e}"))))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, as `AutoTokenizer.decode(ids, skip_special_tokens=...)`.
    /// Like transformers, ids outside the vocabulary are skipped.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let text = self.decode_raw(ids, skip_special_tokens)?;
        Ok(if self.clean_up_tokenization_spaces {
            clean_up_tokenization(&text)
        } else {
            text
        })
    }

    /// The backend's decode, before transformers' space clean-up.
    fn decode_raw(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::InvalidArgument(one_line(format!("cannot decode: {e}"))))
    }

    /// An incremental decoder for generation: feed it one token at a time and it
    /// returns the text each token completes, never a partial UTF-8 character.
    /// The pieces, followed by [`DecodeStream::finish`], concatenate to
    /// [`Tokenizer::decode`] of all the ids.
    pub fn decode_stream(&self, skip_special_tokens: bool) -> DecodeStream<'_> {
        DecodeStream {
            tok: self,
            skip_special_tokens,
            ids: Vec::new(),
            prefix: String::new(),
            prefix_index: 0,
            all_ids: Vec::new(),
            raw_emitted: 0,
            pending: String::new(),
        }
    }

    /// The ids that end generation: `generation_config.json`'s `eos_token_id`
    /// (int or list), then the tokenizer's `eos_token` if not already listed.
    pub fn eos_token_ids(&self) -> Vec<u32> {
        let mut ids = self.generation_eos.clone();
        if let Some(e) = self.eos_token_id() {
            if !ids.contains(&e) {
                ids.push(e);
            }
        }
        ids
    }

    /// Id of the tokenizer's `eos_token`.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token.as_deref().and_then(|t| self.token_to_id(t))
    }

    /// Id of the tokenizer's `bos_token` (None for models without one, e.g. Qwen2).
    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token.as_deref().and_then(|t| self.token_to_id(t))
    }

    /// Id of the tokenizer's `pad_token`.
    pub fn pad_token_id(&self) -> Option<u32> {
        self.pad_token.as_deref().and_then(|t| self.token_to_id(t))
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    pub fn pad_token(&self) -> Option<&str> {
        self.pad_token.as_deref()
    }

    /// Number of token ids including added tokens, as `len(tokenizer)`.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The chat template source, if the model has one.
    pub fn chat_template(&self) -> Option<&str> {
        match &self.chat_template {
            TemplateState::Found(t) => Some(t.source.as_str()),
            _ => None,
        }
    }

    /// The conversation as text, as transformers'
    /// `apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`.
    /// Encode the result with `add_special_tokens = false`: the template writes
    /// the special tokens itself.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let t = match &self.chat_template {
            TemplateState::Found(t) => t,
            TemplateState::Missing => {
                return Err(Error::Format {
                    path: show(&self.dir),
                    message: if self.dir.is_file() {
                        "the model has no chat template (no tokenizer.chat_template in the GGUF metadata)".into()
                    } else {
                        "the model has no chat template (no chat_template.jinja, no \"chat_template\" in tokenizer_config.json)".into()
                    },
                })
            }
            TemplateState::NoDefault(path) => {
                return Err(format_err(
                    path,
                    "field \"chat_template\": several chat templates, none named \"default\"",
                ))
            }
        };
        if messages.is_empty() {
            crate::error::arg_err!("cannot apply a chat template to an empty conversation");
        }
        let env = t
            .compiled
            .get_or_init(|| compile_template(&t.source))
            .as_ref()
            .map_err(|e| format_err(&t.path, format!("cannot compile chat template: {e}")))?;
        let tmpl = env
            .get_template("chat_template")
            .map_err(|e| format_err(&t.path, format!("chat template: {e}")))?;
        let mut ctx: Vec<(&str, Value)> = self
            .special_tokens_map
            .iter()
            .map(|(k, v)| (*k, Value::from(v.as_str())))
            .collect();
        let msgs: Vec<Value> = messages
            .iter()
            .map(|m| Value::from_object(MessageObj(m.clone())))
            .collect();
        ctx.push(("messages", Value::from(msgs)));
        ctx.push(("tools", Value::from(())));
        ctx.push(("documents", Value::from(())));
        ctx.push(("add_generation_prompt", Value::from(add_generation_prompt)));
        let ctx: Value = ctx
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect::<std::collections::BTreeMap<String, Value>>()
            .into();
        tmpl.render(ctx)
            .map_err(|e| format_err(&t.path, format!("chat template: {e}")))
    }
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("dir", &self.dir)
            .field("vocab_size", &self.vocab_size())
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("has_chat_template", &self.chat_template().is_some())
            .finish()
    }
}

/// Where a model's chat template stands after loading.
enum TemplateState {
    Found(Box<ChatTemplate>),
    Missing,
    /// `tokenizer_config.json` lists several templates, none named "default":
    /// an error when the template is used, as in transformers.
    NoDefault(PathBuf),
}

/// `chat_template` of tokenizer_config.json: a string, or a list of
/// `{"name", "template"}` of which transformers uses "default".
fn template_from_config(cfg_path: &Path, v: Option<&Json>) -> Result<TemplateState> {
    let list = match v {
        None | Some(Json::Null) => return Ok(TemplateState::Missing),
        Some(Json::String(s)) => {
            return Ok(TemplateState::Found(Box::new(ChatTemplate::new(
                cfg_path.to_path_buf(),
                s.clone(),
            ))))
        }
        Some(Json::Array(list)) => list,
        Some(other) => {
            return Err(format_err(
                cfg_path,
                format!(
                    "field \"chat_template\": expected a string or a list of {{name, template}}, got {}",
                    json_kind(other)
                ),
            ))
        }
    };
    let mut found = None;
    for item in list {
        let name = item.get("name").and_then(Json::as_str);
        let template = item.get("template").and_then(Json::as_str);
        let (Some(name), Some(template)) = (name, template) else {
            return Err(format_err(
                cfg_path,
                "field \"chat_template\": each list entry needs string \"name\" and \"template\"",
            ));
        };
        if name == "default" {
            found = Some(template.to_string());
        }
    }
    Ok(match found {
        Some(t) => TemplateState::Found(Box::new(ChatTemplate::new(cfg_path.to_path_buf(), t))),
        None => TemplateState::NoDefault(cfg_path.to_path_buf()),
    })
}

/// Whether `AutoTokenizer` (transformers 5) would load this directory with its
/// `LlamaTokenizer` class, which rebuilds the pipeline: the declared class
/// (tokenizer_config.json, else config.json) is `LlamaTokenizer[Fast]`, there
/// is no remote code, `tokenizer.json` is not byte-level (Llama-3-style files
/// declaring LlamaTokenizer load as-is) and config.json's `model_type` is
/// absent or `llama` (other model types, e.g. `mistral`, `phi3`, load
/// `tokenizer.json` as-is).
fn uses_llama_class(
    dir: &Path,
    cfg: &serde_json::Map<String, Json>,
    tokenizer_json: &[u8],
) -> Result<bool> {
    if cfg.contains_key("auto_map") {
        return Ok(false);
    }
    let model_cfg_path = dir.join("config.json");
    let model_cfg = match read_json(&model_cfg_path)? {
        Some(Json::Object(o)) => o,
        _ => serde_json::Map::new(),
    };
    let declared = cfg
        .get("tokenizer_class")
        .and_then(Json::as_str)
        .or_else(|| model_cfg.get("tokenizer_class").and_then(Json::as_str));
    let Some(declared) = declared else {
        return Ok(false);
    };
    if declared.strip_suffix("Fast").unwrap_or(declared) != "LlamaTokenizer" {
        return Ok(false);
    }
    let needle = b"\"ByteLevel\"";
    let byte_level = tokenizer_json.windows(needle.len()).any(|w| w == needle);
    let model_type = model_cfg
        .get("model_type")
        .and_then(Json::as_str)
        .unwrap_or("");
    Ok(!byte_level && (model_type.is_empty() || model_type == "llama"))
}

/// The pipeline of transformers 5's `LlamaTokenizer.__init__`, applied to a
/// parsed tokenizer.json: no normalizer, Metaspace pre-tokenizer, byte-fallback
/// BPE without unk token, Replace/ByteFallback/Fuse(/Strip) decoder.
fn llama_rebuild(
    json: &mut Json,
    add_prefix_space: bool,
    legacy: bool,
) -> std::result::Result<(), String> {
    let Some(obj) = json.as_object_mut() else {
        return Err("expected a JSON object".into());
    };
    let Some(model) = obj.get_mut("model").and_then(Json::as_object_mut) else {
        return Err("no \"model\" object".into());
    };
    if model
        .get("type")
        .and_then(Json::as_str)
        .is_some_and(|t| t != "BPE")
    {
        return Err("tokenizer_class LlamaTokenizer needs a BPE model".into());
    }
    for (k, v) in [
        ("type", Json::from("BPE")),
        ("dropout", Json::Null),
        ("unk_token", Json::Null),
        ("continuing_subword_prefix", Json::Null),
        ("end_of_word_suffix", Json::Null),
        ("fuse_unk", Json::Bool(true)),
        ("byte_fallback", Json::Bool(true)),
        ("ignore_merges", Json::Bool(false)),
    ] {
        model.insert(k.to_string(), v);
    }
    let scheme = match (add_prefix_space, legacy) {
        (false, _) => "never",
        (true, true) => "always",
        (true, false) => "first",
    };
    obj.insert("normalizer".into(), Json::Null);
    obj.insert(
        "pre_tokenizer".into(),
        serde_json::json!({"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": scheme, "split": false}),
    );
    let mut decoders = vec![
        serde_json::json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
        serde_json::json!({"type": "ByteFallback"}),
        serde_json::json!({"type": "Fuse"}),
    ];
    if add_prefix_space {
        decoders.push(serde_json::json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    obj.insert(
        "decoder".into(),
        serde_json::json!({"type": "Sequence", "decoders": decoders}),
    );
    Ok(())
}

/// transformers' `clean_up_tokenization`.
fn clean_up_tokenization(text: &str) -> String {
    text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}

fn json_kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "an object",
    }
}

// ---------------------------------------------------------------------------
// Streaming decode
// ---------------------------------------------------------------------------

/// Incremental decoding state; see [`Tokenizer::decode_stream`].
///
/// Same algorithm as `tokenizers`' `DecodeStream`: keep a short window of ids,
/// decode it with and without the new token, and return the difference once it
/// no longer ends in an incomplete character. transformers' space clean-up
/// (non-BPE models) is applied on top, holding back text a later token could
/// still change.
pub struct DecodeStream<'a> {
    tok: &'a Tokenizer,
    skip_special_tokens: bool,
    /// The window of ids; its first `prefix_index` decode to `prefix`.
    ids: Vec<u32>,
    prefix: String,
    prefix_index: usize,
    /// Every id so far, and the length of their decoded text returned so far
    /// (before clean-up): the fallback when the window's text is not a
    /// continuation of what was returned.
    all_ids: Vec<u32>,
    raw_emitted: usize,
    /// Decoded text not yet cleaned up and returned (clean-up only).
    pending: String,
}

impl DecodeStream<'_> {
    /// Appends one token; returns the text it completes, or `None` while a
    /// character is still incomplete (or the token decodes to nothing).
    pub fn step(&mut self, id: u32) -> Result<Option<String>> {
        self.all_ids.push(id);
        let raw = self.raw_step(id)?;
        if !self.tok.clean_up_tokenization_spaces {
            return Ok(raw);
        }
        if let Some(r) = raw {
            self.pending.push_str(&r);
        }
        // Clean-up patterns start with a space and are at most 4 characters
        // long: text followed by 3 characters without a space is final.
        let chars: Vec<(usize, char)> = self.pending.char_indices().collect();
        let mut cut = 0;
        for k in (3..=chars.len()).rev() {
            if chars[k - 3..k].iter().all(|&(_, c)| c != ' ') {
                cut = chars.get(k).map_or(self.pending.len(), |&(i, _)| i);
                break;
            }
        }
        if cut == 0 {
            return Ok(None);
        }
        let out = clean_up_tokenization(&self.pending[..cut]);
        self.pending.drain(..cut);
        Ok(Some(out).filter(|s| !s.is_empty()))
    }

    fn raw_step(&mut self, id: u32) -> Result<Option<String>> {
        let skip = self.skip_special_tokens;
        if self.prefix.is_empty() && !self.ids.is_empty() {
            let p = self.tok.decode_raw(&self.ids, skip)?;
            if !p.ends_with('\u{FFFD}') {
                self.prefix = p;
                self.prefix_index = self.ids.len();
            }
        }
        self.ids.push(id);
        let s = self.tok.decode_raw(&self.ids, skip)?;
        if s.len() <= self.prefix.len() || s.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        let new_text = match s.strip_prefix(self.prefix.as_str()) {
            Some(t) => t.to_string(),
            None => {
                // The decoder rewrote earlier text (not prefix-stable in this
                // window): take the continuation of the full decode instead.
                let full = self.tok.decode_raw(&self.all_ids, skip)?;
                self.ids = vec![id];
                self.prefix.clear();
                self.prefix_index = 0;
                match full.get(self.raw_emitted..) {
                    Some(t) if !t.ends_with('\u{FFFD}') => t.to_string(),
                    _ => return Ok(None),
                }
            }
        };
        let new_prefix_index = self.ids.len() - self.prefix_index;
        self.ids.drain(..self.prefix_index);
        self.prefix = self.tok.decode_raw(&self.ids, skip)?;
        self.prefix_index = new_prefix_index;
        self.raw_emitted += new_text.len();
        Ok(Some(new_text))
    }

    /// The text still held back (an incomplete character at the end, decoded
    /// with replacement characters as [`Tokenizer::decode`] does). Resets the stream.
    pub fn finish(&mut self) -> Result<String> {
        let s = self.tok.decode_raw(&self.ids, self.skip_special_tokens)?;
        let rest = s
            .strip_prefix(self.prefix.as_str())
            .map(str::to_string)
            .unwrap_or_default();
        let mut out = std::mem::take(&mut self.pending);
        out.push_str(&rest);
        self.ids.clear();
        self.prefix.clear();
        self.prefix_index = 0;
        self.all_ids.clear();
        self.raw_emitted = 0;
        Ok(if self.tok.clean_up_tokenization_spaces {
            clean_up_tokenization(&out)
        } else {
            out
        })
    }
}

// ---------------------------------------------------------------------------
// Chat templates
// ---------------------------------------------------------------------------

impl ChatTemplate {
    fn new(path: PathBuf, source: String) -> Self {
        ChatTemplate {
            path,
            source,
            compiled: OnceLock::new(),
        }
    }
}

/// A chat message as the template sees it: a dict with `role` then `content`.
#[derive(Debug)]
struct MessageObj(ChatMessage);

impl minijinja::value::Object for MessageObj {
    fn repr(self: &std::sync::Arc<Self>) -> minijinja::value::ObjectRepr {
        minijinja::value::ObjectRepr::Map
    }

    fn get_value(self: &std::sync::Arc<Self>, key: &Value) -> Option<Value> {
        match key.as_str()? {
            "role" => Some(Value::from(self.0.role.as_str())),
            "content" => Some(Value::from(self.0.content.as_str())),
            _ => None,
        }
    }

    fn enumerate(self: &std::sync::Arc<Self>) -> minijinja::value::Enumerator {
        minijinja::value::Enumerator::Str(&["role", "content"])
    }
}

/// Rewrites transformers' `{% generation %}...{% endgeneration %}` (a tag that
/// only marks assistant text) into `{% if true %}...{% endif %}`, which renders
/// its body the same way and keeps the tags' whitespace control.
fn rewrite_generation_tags(src: &str) -> String {
    if !src.contains("generation") {
        return src.to_string();
    }
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(pos) = rest.find("{%") {
        out.push_str(&rest[..pos]);
        let tag = &rest[pos..];
        let Some(end) = tag.find("%}") else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..end];
        let (lead, body) = match inner.strip_prefix(['-', '+']) {
            Some(b) => (&inner[..1], b),
            None => ("", inner),
        };
        let (body, trail) = match body.strip_suffix(['-', '+']) {
            Some(b) => (b, &body[b.len()..]),
            None => (body, ""),
        };
        let replacement = match body.trim() {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(r) => {
                let _ = write!(out, "{{%{lead} {r} {trail}%}}");
            }
            None => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

fn compile_template(source: &str) -> std::result::Result<Environment<'static>, String> {
    let mut env = Environment::new();
    let syntax = env
        .syntax()
        .to_builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
        .map_err(one_line)?;
    env.set_syntax(syntax);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.set_formatter(python_formatter);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        },
    );
    env.add_function("strftime_now", |fmt: String| strftime_utc_now(&fmt));
    env.add_filter("tojson", tojson_filter);
    env.add_template_owned("chat_template", rewrite_generation_tags(source))
        .map_err(one_line)?;
    Ok(env)
}

/// Prints values as Python's `str()` does: `True`/`False`/`None`, lists and
/// dicts in repr form; strings and numbers as minijinja does.
fn python_formatter(
    out: &mut minijinja::Output,
    state: &mut minijinja::State,
    value: &Value,
) -> std::result::Result<(), minijinja::Error> {
    match value.kind() {
        ValueKind::Bool | ValueKind::None | ValueKind::Seq | ValueKind::Map => {
            let mut s = String::new();
            py_repr(value, &mut s);
            out.write_str(&s).map_err(minijinja::Error::from)
        }
        ValueKind::Number if !value.is_integer() => {
            let f = f64::try_from(value.clone()).unwrap_or(f64::NAN);
            out.write_str(&py_float_repr(f))
                .map_err(minijinja::Error::from)
        }
        _ => minijinja::escape_formatter(out, state, value),
    }
}

fn py_repr(v: &Value, out: &mut String) {
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if v.is_true() { "True" } else { "False" }),
        ValueKind::Number => {
            if v.is_integer() {
                out.push_str(&v.to_string());
            } else {
                out.push_str(&py_float_repr(f64::try_from(v.clone()).unwrap_or(f64::NAN)));
            }
        }
        ValueKind::String => py_str_repr(v.as_str().unwrap_or(""), out),
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            if let Ok(it) = v.try_iter() {
                for (i, x) in it.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    py_repr(&x, out);
                }
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            if let Ok(it) = v.try_iter() {
                for (i, k) in it.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    py_repr(&k, out);
                    out.push_str(": ");
                    py_repr(&v.get_item(&k).unwrap_or_default(), out);
                }
            }
            out.push('}');
        }
        _ => out.push_str(&v.to_string()),
    }
}

fn py_str_repr(s: &str, out: &mut String) {
    let q = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(q);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == q => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(q);
}

/// Python's `repr(float)`: shortest round-trip digits, scientific notation
/// outside 1e-4 <= |x| < 1e16.
fn py_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if f == 0.0 {
        return if f.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    let sci = format!("{:e}", f.abs());
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mant.chars().filter(|c| c.is_ascii_digit()).collect();
    let sign = if f < 0.0 { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let n = digits.len() as i32;
        let s = if exp >= n - 1 {
            format!("{digits}{}.0", "0".repeat((exp - (n - 1)) as usize))
        } else if exp >= 0 {
            let (a, b) = digits.split_at((exp + 1) as usize);
            format!("{a}.{b}")
        } else {
            format!("0.{}{digits}", "0".repeat((-exp - 1) as usize))
        };
        format!("{sign}{s}")
    } else {
        let m = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits
        };
        let es = if exp < 0 { '-' } else { '+' };
        format!("{sign}{m}e{es}{:02}", exp.abs())
    }
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=None,
/// separators=None, sort_keys=False)`, HTML characters not escaped.
fn tojson_filter(
    value: &Value,
    ensure_ascii: Option<Value>,
    indent: Option<Value>,
    kwargs: Kwargs,
) -> std::result::Result<Value, minijinja::Error> {
    // minijinja functions take at most five arguments: `separators` and
    // `sort_keys` (rarely passed by position) are keyword-only here.
    let pick =
        |pos: Option<Value>, name: &str| -> std::result::Result<Option<Value>, minijinja::Error> {
            match pos {
                Some(v) => Ok(Some(v)),
                None => kwargs.get::<Option<Value>>(name),
            }
        };
    let ensure_ascii = pick(ensure_ascii, "ensure_ascii")?.is_some_and(|v| v.is_true());
    let indent = match pick(indent, "indent")? {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => match v.as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                let n = i64::try_from(v.clone()).map_err(|_| {
                    minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: indent must be an integer or a string",
                    )
                })?;
                Some(" ".repeat(n.max(0) as usize))
            }
        },
    };
    let (item_sep, key_sep) = match kwargs.get::<Option<Value>>("separators")? {
        Some(v) if !v.is_none() && !v.is_undefined() => {
            let items: Vec<Value> = v.try_iter()?.collect();
            match items.as_slice() {
                [a, b] => (a.to_string(), b.to_string()),
                _ => {
                    return Err(minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be a pair of strings",
                    ))
                }
            }
        }
        _ => (
            if indent.is_some() { "," } else { ", " }.to_string(),
            ": ".to_string(),
        ),
    };
    let sort_keys = kwargs
        .get::<Option<Value>>("sort_keys")?
        .is_some_and(|v| v.is_true());
    kwargs.assert_all_used()?;
    let opts = JsonOpts {
        ensure_ascii,
        indent,
        item_sep,
        key_sep,
        sort_keys,
    };
    let mut out = String::new();
    py_json(value, &opts, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

struct JsonOpts {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

fn py_json(
    v: &Value,
    o: &JsonOpts,
    level: usize,
    out: &mut String,
) -> std::result::Result<(), minijinja::Error> {
    let newline = |out: &mut String, level: usize| {
        if let Some(ind) = &o.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(ind);
            }
        }
    };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if v.is_integer() {
                out.push_str(&v.to_string());
            } else {
                let f = f64::try_from(v.clone())?;
                if f.is_nan() {
                    out.push_str("NaN");
                } else if f.is_infinite() {
                    out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
                } else {
                    out.push_str(&py_float_repr(f));
                }
            }
        }
        ValueKind::String => json_str(v.as_str().unwrap_or(""), o.ensure_ascii, out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item_sep);
                }
                newline(out, level + 1);
                py_json(x, o, level + 1, out)?;
            }
            newline(out, level);
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            if o.sort_keys {
                keys.sort();
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item_sep);
                }
                newline(out, level + 1);
                let key = match k.kind() {
                    ValueKind::String => k.as_str().unwrap_or("").to_string(),
                    ValueKind::Bool => if k.is_true() { "true" } else { "false" }.to_string(),
                    ValueKind::None => "null".to_string(),
                    _ => k.to_string(),
                };
                json_str(&key, o.ensure_ascii, out);
                out.push_str(&o.key_sep);
                py_json(&v.get_item(k)?, o, level + 1, out)?;
            }
            newline(out, level);
            out.push('}');
        }
        _ => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: cannot serialize a value of kind {}", v.kind()),
            ))
        }
    }
    Ok(())
}

fn json_str(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if ensure_ascii && !c.is_ascii() => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{:04x}", unit);
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `datetime.now().strftime(fmt)`, in UTC, for the common directives
/// (`%d %m %Y %y %b %B %a %A %H %I %M %S %p %j %%`, with glibc's `%-d` style).
fn strftime_utc_now(fmt: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    strftime(secs, fmt)
}

fn strftime(unix_secs: i64, fmt: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let days = unix_secs.div_euclid(86_400);
    let sod = unix_secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy_mar = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy_mar + 2) / 153;
    let day = doy_mar - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let cum = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cum[(month - 1) as usize] + day + i64::from(leap && month > 2);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let (h, m, s) = (sod / 3600, sod / 60 % 60, sod % 60);
    let h12 = if h % 12 == 0 { 12 } else { h % 12 };

    let mut out = String::new();
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let no_pad = chars.peek() == Some(&'-');
        if no_pad {
            chars.next();
        }
        let num = |out: &mut String, v: i64, w: usize| {
            if no_pad {
                let _ = write!(out, "{v}");
            } else {
                let _ = write!(out, "{v:0w$}");
            }
        };
        match chars.next() {
            Some('d') => num(&mut out, day, 2),
            Some('e') => {
                let _ = write!(out, "{day:2}");
            }
            Some('m') => num(&mut out, month, 2),
            Some('Y') => {
                let _ = write!(out, "{year}");
            }
            Some('y') => num(&mut out, year % 100, 2),
            Some('H') => num(&mut out, h, 2),
            Some('I') => num(&mut out, h12, 2),
            Some('M') => num(&mut out, m, 2),
            Some('S') => num(&mut out, s, 2),
            Some('j') => num(&mut out, yday, 3),
            Some('p') => out.push_str(if h < 12 { "AM" } else { "PM" }),
            Some('b') | Some('h') => out.push_str(&MONTHS[(month - 1) as usize][..3]),
            Some('B') => out.push_str(MONTHS[(month - 1) as usize]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                if no_pad {
                    out.push('-');
                }
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_known_dates() {
        // 2024-07-26 12:34:56 UTC, a Friday, day 208.
        let t = 1_721_997_296;
        assert_eq!(strftime(t, "%d %b %Y"), "26 Jul 2024");
        assert_eq!(
            strftime(t, "%A %B %-d, %y %H:%M:%S %I%p %j %%"),
            "Friday July 26, 24 12:34:56 12PM 208 %"
        );
        assert_eq!(strftime(0, "%Y-%m-%d %a"), "1970-01-01 Thu");
        assert_eq!(strftime(951_782_400, "%Y-%m-%d %j"), "2000-02-29 060");
    }

    #[test]
    fn python_float_repr() {
        for (f, s) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (123.456, "123.456"),
            (1e16, "1e+16"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (-2.5, "-2.5"),
            (1e15, "1000000000000000.0"),
        ] {
            assert_eq!(py_float_repr(f), s);
        }
    }

    #[test]
    fn generation_tags_rewritten() {
        let src = "{%- generation -%}x{% endgeneration %}{% if a %}{% endif %}";
        assert_eq!(
            rewrite_generation_tags(src),
            "{%- if true -%}x{% endif %}{% if a %}{% endif %}"
        );
    }
}

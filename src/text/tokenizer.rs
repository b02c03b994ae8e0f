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
//! The JSON files are read into typed serde structs (an error names the file
//! and the field); chat templates render as `chat_template.rs` describes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Deserializer};
use serde_json::Value as Json;
use tokenizers::processors::template::{Template, TemplateProcessing};
use tokenizers::AddedToken;

pub use super::chat_template::ChatMessage;
use super::chat_template::{ConfigTemplates, TemplateState};
use crate::error::{Error, Result};

#[path = "gguf.rs"]
mod gguf;

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

pub(super) fn one_line(s: impl std::fmt::Display) -> String {
    s.to_string()
        .split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

pub(super) fn show(p: &Path) -> String {
    p.display().to_string()
}

pub(super) fn format_err(path: &Path, message: impl Into<String>) -> Error {
    Error::Format {
        path: show(path),
        message: one_line(message.into()),
    }
}

/// Reads and parses an optional JSON file into `T`: `Ok(None)` when it does
/// not exist. An error names the file and, for a wrong value, the field
/// (`field eos_token: ...`).
fn read_config<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
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
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        if !inner.is_data() {
            format_err(path, format!("invalid JSON: {inner}"))
        } else if field == "." {
            format_err(path, inner.to_string())
        } else {
            format_err(path, format!("field {field}: {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| format_err(path, format!("invalid JSON: {e}")))?;
    Ok(Some(value))
}

/// `tokenizer_config.json`: the fields transformers 5 reads when
/// `tokenizer.json` exists.
#[derive(Default, Deserialize)]
struct TokenizerConfig {
    bos_token: Option<SpecialToken>,
    eos_token: Option<SpecialToken>,
    unk_token: Option<SpecialToken>,
    sep_token: Option<SpecialToken>,
    pad_token: Option<SpecialToken>,
    cls_token: Option<SpecialToken>,
    mask_token: Option<SpecialToken>,
    /// Added tokens by id (JSON keys are the ids as strings).
    #[serde(default)]
    added_tokens_decoder: BTreeMap<u64, AddedTokenEntry>,
    /// Checked, then ignored as transformers 5 ignores them.
    #[allow(dead_code)]
    add_bos_token: Option<bool>,
    #[allow(dead_code)]
    add_eos_token: Option<bool>,
    split_special_tokens: Option<bool>,
    clean_up_tokenization_spaces: Option<bool>,
    chat_template: Option<ConfigTemplates>,
    /// Read by transformers only as `is True` / `is False` (any other value
    /// counts as unset), as are `tokenizer_class`'s strings.
    #[serde(default, deserialize_with = "lenient")]
    legacy: Option<bool>,
    #[serde(default, deserialize_with = "lenient")]
    add_prefix_space: Option<bool>,
    #[serde(default, deserialize_with = "lenient")]
    tokenizer_class: Option<String>,
    /// Present at all: remote code, which keeps tokenizer.json as is.
    #[serde(default, deserialize_with = "present")]
    auto_map: bool,
}

/// The fields of a model's `config.json` the tokenizer class depends on; a
/// value of another type counts as absent.
#[derive(Default, Deserialize)]
struct ModelConfig {
    #[serde(default, deserialize_with = "lenient")]
    tokenizer_class: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    model_type: Option<String>,
}

/// `generation_config.json`'s stop ids: one id, a list, or null.
#[derive(Default, Deserialize)]
struct GenerationConfig {
    eos_token_id: Option<TokenIds>,
}

#[derive(Deserialize)]
#[serde(untagged, expecting = "a token id or a list of ids")]
enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

/// A named special token: a string, or an AddedToken object.
#[derive(Deserialize)]
#[serde(untagged, expecting = "a string or {\"content\": ...}")]
enum SpecialToken {
    Text(String),
    Object(AddedTokenEntry),
}

/// An AddedToken object (`{"content": ..., "lstrip": ..., ...}`); flags that
/// are not booleans count as unset.
#[derive(Deserialize)]
struct AddedTokenEntry {
    content: String,
    #[serde(default, deserialize_with = "lenient")]
    special: Option<bool>,
    #[serde(default, deserialize_with = "lenient")]
    single_word: Option<bool>,
    #[serde(default, deserialize_with = "lenient")]
    lstrip: Option<bool>,
    #[serde(default, deserialize_with = "lenient")]
    rstrip: Option<bool>,
    #[serde(default, deserialize_with = "lenient")]
    normalized: Option<bool>,
}

/// Any JSON value: `Some` when it is a `T`, else `None`.
fn lenient<'de, D: Deserializer<'de>, T: DeserializeOwned>(
    d: D,
) -> std::result::Result<Option<T>, D::Error> {
    Ok(serde_json::from_value(Json::deserialize(d)?).ok())
}

/// Whether the field is present, whatever its value.
fn present<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<bool, D::Error> {
    IgnoredAny::deserialize(d).map(|_| true)
}

impl AddedTokenEntry {
    fn to_added_token(&self, default_special: bool) -> AddedToken {
        let special = self.special.unwrap_or(default_special);
        AddedToken::from(self.content.clone(), special)
            .single_word(self.single_word.unwrap_or(false))
            .lstrip(self.lstrip.unwrap_or(false))
            .rstrip(self.rstrip.unwrap_or(false))
            .normalized(self.normalized.unwrap_or(!special))
    }
}

impl SpecialToken {
    fn to_added_token(&self) -> AddedToken {
        match self {
            SpecialToken::Text(s) => AddedToken::from(s.clone(), true),
            SpecialToken::Object(o) => o.to_added_token(true),
        }
    }
}

/// The components of `tokenizer.json`, as far as their `type` tags go.
#[derive(Deserialize)]
struct Pipeline {
    normalizer: Option<Component>,
    pre_tokenizer: Option<Component>,
    post_processor: Option<Component>,
    decoder: Option<Component>,
}

/// A pipeline component: its `type`, and the parts of a `Sequence`.
#[derive(Deserialize)]
struct Component {
    #[serde(rename = "type", default, deserialize_with = "lenient")]
    kind: Option<String>,
    #[serde(
        default,
        alias = "pretokenizers",
        alias = "processors",
        alias = "decoders"
    )]
    normalizers: Vec<Component>,
}

impl Component {
    fn has(&self, kind: &str) -> bool {
        self.kind.as_deref() == Some(kind) || self.normalizers.iter().any(|c| c.has(kind))
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
        let cfg: TokenizerConfig = read_config(&cfg_path)?.unwrap_or_default();

        let mut inner = if uses_llama_class(dir, &cfg, &bytes)? {
            // transformers 5's LlamaTokenizer keeps only the vocabulary, merges,
            // added tokens and post-processor of tokenizer.json and rebuilds
            // the rest (Metaspace pre-tokenizer instead of the legacy
            // Prepend+Replace normalizer).
            let mut json: Json = serde_json::from_slice(&bytes)
                .map_err(|e| format_err(&tok_path, format!("invalid JSON: {e}")))?;
            let legacy = cfg.legacy == Some(true);
            let add_prefix_space = cfg.add_prefix_space != Some(false);
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
        let special: Vec<(&'static str, AddedToken)> = [
            ("bos_token", &cfg.bos_token),
            ("eos_token", &cfg.eos_token),
            ("unk_token", &cfg.unk_token),
            ("sep_token", &cfg.sep_token),
            ("pad_token", &cfg.pad_token),
            ("cls_token", &cfg.cls_token),
            ("mask_token", &cfg.mask_token),
        ]
        .into_iter()
        .filter_map(|(key, t)| Some((key, t.as_ref()?.to_added_token())))
        .collect();
        let added: std::collections::HashSet<String> = inner
            .get_added_tokens_decoder()
            .into_values()
            .map(|t| t.content)
            .collect();
        let mut to_add: Vec<AddedToken> = cfg
            .added_tokens_decoder
            .values()
            .filter(|t| !added.contains(&t.content))
            .map(|t| t.to_added_token(false))
            .collect();
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

        if cfg.split_special_tokens == Some(true) {
            inner.set_encode_special_tokens(true);
        }
        let is_bpe = matches!(inner.get_model(), tokenizers::ModelWrapper::BPE(_));
        let clean_up_tokenization_spaces =
            cfg.clean_up_tokenization_spaces == Some(true) && !is_bpe;

        // Chat template: chat_template.jinja wins over tokenizer_config.json.
        let jinja_path = dir.join("chat_template.jinja");
        let chat_template = match std::fs::read_to_string(&jinja_path) {
            Ok(source) => TemplateState::found(jinja_path, source),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                TemplateState::from_config(&cfg_path, cfg.chat_template)
            }
            Err(source) => {
                return Err(Error::Io {
                    path: show(&jinja_path),
                    source,
                })
            }
        };

        let gen_path = dir.join("generation_config.json");
        let generation_eos = match read_config::<GenerationConfig>(&gen_path)? {
            Some(GenerationConfig {
                eos_token_id: Some(TokenIds::One(id)),
            }) => vec![id],
            Some(GenerationConfig {
                eos_token_id: Some(TokenIds::Many(ids)),
            }) => ids,
            _ => vec![],
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
        if let Some(source) = self.chat_template.source() {
            config.insert("chat_template".into(), source.into());
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
        self.chat_template.source()
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
        self.chat_template.render(
            &self.dir,
            &self.special_tokens_map,
            messages,
            add_generation_prompt,
        )
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

/// Whether `AutoTokenizer` (transformers 5) would load this directory with its
/// `LlamaTokenizer` class, which rebuilds the pipeline: the declared class
/// (tokenizer_config.json, else config.json) is `LlamaTokenizer[Fast]`, there
/// is no remote code, `tokenizer.json` is not byte-level (Llama-3-style files
/// declaring LlamaTokenizer load as-is) and config.json's `model_type` is
/// absent or `llama` (other model types, e.g. `mistral`, `phi3`, load
/// `tokenizer.json` as-is).
fn uses_llama_class(dir: &Path, cfg: &TokenizerConfig, tokenizer_json: &[u8]) -> Result<bool> {
    if cfg.auto_map {
        return Ok(false);
    }
    let model_cfg: ModelConfig = read_config::<Json>(&dir.join("config.json"))?
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    let declared = cfg
        .tokenizer_class
        .as_deref()
        .or(model_cfg.tokenizer_class.as_deref());
    let Some(declared) = declared else {
        return Ok(false);
    };
    if declared.strip_suffix("Fast").unwrap_or(declared) != "LlamaTokenizer" {
        return Ok(false);
    }
    let model_type = model_cfg.model_type.as_deref().unwrap_or("");
    Ok(!is_byte_level(tokenizer_json) && (model_type.is_empty() || model_type == "llama"))
}

/// Whether tokenizer.json has a `ByteLevel` component (normalizer,
/// pre-tokenizer, post-processor or decoder, inside a `Sequence` too).
/// transformers 5 (`TokenizersBackend`'s byte-level probe) searches the file's
/// text for `"ByteLevel"`, which finds exactly these on real files; it would
/// also match a vocabulary entry spelled `ByteLevel`, which this does not. A
/// file that does not parse is not byte-level (loading it fails anyway).
fn is_byte_level(tokenizer_json: &[u8]) -> bool {
    serde_json::from_slice::<Pipeline>(tokenizer_json).is_ok_and(|p| {
        [p.normalizer, p.pre_tokenizer, p.post_processor, p.decoder]
            .iter()
            .flatten()
            .any(|c| c.has("ByteLevel"))
    })
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

// ---------------------------------------------------------------------------
// Streaming decode
// ---------------------------------------------------------------------------

/// Incremental decoding state; see [`Tokenizer::decode_stream`].
///
/// Each step is `tokenizers`' own (`step_decode_stream`, what its
/// `DecodeStream::step` runs: keep a short window of ids, decode it with and
/// without the new token, return the difference once it no longer ends in an
/// incomplete character), over state kept here, because `tokenizers`'
/// `DecodeStream` cannot do two things this one must: finish (return the
/// incomplete character held back at the end, as [`Tokenizer::decode`]
/// prints it), and go on when a decoder rewrites earlier text within the
/// window (it stops with `InvalidPrefix`, e.g. on some byte-fallback
/// sequences; here the full decode's continuation is returned instead).
/// transformers' space clean-up (non-BPE models) is applied on top, holding
/// back text a later token could still change.
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
        let stepped = tokenizers::tokenizer::step_decode_stream(
            &*self.tok.inner,
            vec![id],
            skip,
            &mut self.ids,
            &mut self.prefix,
            &mut self.prefix_index,
        );
        let text = match stepped {
            Ok(text) => text,
            Err(e) if e.downcast_ref::<tokenizers::DecodeStreamError>().is_some() => {
                // The decoder rewrote earlier text (not prefix-stable in this
                // window): take the continuation of the full decode instead,
                // and restart the window at this token.
                let full = self.tok.decode_raw(&self.all_ids, skip)?;
                self.ids = vec![id];
                self.prefix.clear();
                self.prefix_index = 0;
                match full.get(self.raw_emitted..) {
                    Some(t) if !t.ends_with('\u{FFFD}') => {
                        self.prefix = self.tok.decode_raw(&self.ids, skip)?;
                        self.prefix_index = 1;
                        Some(t.to_string())
                    }
                    _ => None,
                }
            }
            Err(e) => {
                return Err(Error::InvalidArgument(one_line(format!(
                    "cannot decode: {e}"
                ))))
            }
        };
        if let Some(t) = &text {
            self.raw_emitted += t.len();
        }
        Ok(text)
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

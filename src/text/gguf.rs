//! The tokenizer of a GGUF file, built from its own `tokenizer.ggml.*`
//! metadata so that a single `.gguf` is enough, with the ids transformers 5
//! gives (`AutoTokenizer.from_pretrained(dir, gguf_file=name)`).
//!
//! transformers picks a builder by `tokenizer.ggml.model` (and, for
//! SentencePiece-style files, by `general.architecture`), then runs the
//! pipeline of the tokenizer class it hands the vocabulary to. We build the
//! same `tokenizer.json` and let the `tokenizers` crate (the same Rust code
//! transformers runs) do the rest:
//! - `gpt2` (SmolLM2, Llama 3, Qwen2/3): byte-level BPE with the file's
//!   merges (GPT2Tokenizer). Tokens not spelled in the byte alphabet are
//!   respelled; `tokenizer.ggml.pre` picks the split regex (llama-bpe, qwen2,
//!   ...; GPT-2's own ByteLevel split otherwise). `<|endoftext|>` is always a
//!   special token (GPT2Tokenizer's default), and a control token spelled
//!   outside the byte alphabet is left out (a llama.cpp mislabel).
//! - `llama` (Llama 2 style): LlamaTokenizer, byte-fallback BPE over the
//!   vocabulary, Metaspace pre-tokenizer (prefix space on the first word);
//!   merges from the file, or derived from the vocabulary ranked by scores.
//! - `llama` + `phi3`: the same, with the prefix space from a
//!   Prepend+Replace normalizer (Phi-3's own tokenizer.json).
//! - `llama` + `gemma2`/`gemma3`: GemmaTokenizer: spaces become `▁`
//!   in a normalizer, no prefix space, `<unk>` as unknown token, runs of real
//!   spaces in the file respelled as `▁`s, merges derived in file order.
//!
//! On top, as transformers does: control tokens (type 3) become special added
//! tokens, user-defined ones (type 4) plain added tokens, the named tokens
//! (bos/eos/unk/pad from their ids) special; the post-processor adds BOS/EOS
//! per `add_bos_token`/`add_eos_token` (default true for `llama` files);
//! `tokenizer.ggml.add_space_prefix` is ignored, as transformers ignores it;
//! no decode space clean-up. An architecture transformers' GGUF loader
//! refuses (e.g. `gemma`) is refused here too.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{json, Map, Value as Json};
use tokenizers::AddedToken;

use super::{format_err, TemplateState, Tokenizer};
use crate::error::Result;
use crate::io::gguf::{GgufFile, Value};

const CONTROL: u64 = 3;
const USER_DEFINED: u64 = 4;

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The split regex transformers uses for a `tokenizer.ggml.pre` name.
fn pre_split(pre: &str) -> Option<&'static str> {
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => LLAMA3_SPLIT,
        "tekken" => TEKKEN_SPLIT,
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => QWEN2_SPLIT,
        "qwen35" => QWEN35_SPLIT,
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => GPT4O_SPLIT,
        _ => return None,
    })
}

/// GPT-2's byte-to-character table (`bytes_to_unicode`).
fn byte_alphabet() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        let c = if printable {
            b
        } else {
            let c = next;
            next += 1;
            c
        };
        table[b as usize] = char::from_u32(c).expect("valid code point");
    }
    table
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `gpt2`: byte-level BPE.
    ByteLevel,
    /// `llama`: LlamaTokenizer.
    Llama,
    /// `llama` with architecture `phi3`.
    Phi3,
    /// `llama` with architecture `gemma*`.
    Gemma,
}

struct Meta<'a> {
    file: &'a GgufFile,
    path: &'a Path,
}

impl<'a> Meta<'a> {
    fn err(&self, key: &str, message: impl std::fmt::Display) -> crate::Error {
        format_err(self.path, format!("{key}: {message}"))
    }

    fn str_opt(&self, key: &str) -> Result<Option<&'a str>> {
        match self.file.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.err(key, "expected a string")),
        }
    }

    fn bool_opt(&self, key: &str) -> Result<Option<bool>> {
        match self.file.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.err(key, "expected true or false")),
        }
    }

    fn array_opt(&self, key: &str) -> Result<Option<&'a [Value]>> {
        match self.file.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_array()
                .map(Some)
                .ok_or_else(|| self.err(key, "expected an array")),
        }
    }

    fn strings(&self, key: &str) -> Result<Option<Vec<&'a str>>> {
        let Some(a) = self.array_opt(key)? else {
            return Ok(None);
        };
        a.iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str()
                    .ok_or_else(|| self.err(key, format!("entry {i} is not a string")))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// An array with one entry per token, each converted by `value`
    /// (`what` names the expected kind in the error).
    fn per_token<T>(
        &self,
        key: &str,
        n: usize,
        what: &str,
        value: impl Fn(&Value) -> Option<T>,
    ) -> Result<Option<Vec<T>>> {
        let Some(a) = self.array_opt(key)? else {
            return Ok(None);
        };
        if a.len() != n {
            return Err(self.err(key, format!("{} entries for {n} tokens", a.len())));
        }
        a.iter()
            .enumerate()
            .map(|(i, v)| value(v).ok_or_else(|| self.err(key, format!("entry {i} is not {what}"))))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// A token id key, checked against the vocabulary size.
    fn token_id(&self, key: &str, n: usize) -> Result<Option<usize>> {
        match self.file.get(key) {
            None => Ok(None),
            Some(v) => {
                let id = v
                    .as_u64()
                    .ok_or_else(|| self.err(key, "expected a non-negative integer"))?;
                if id >= n as u64 {
                    return Err(self.err(
                        key,
                        format!("token id {id} is out of range (the vocabulary has {n} tokens)"),
                    ));
                }
                Ok(Some(id as usize))
            }
        }
    }
}

/// transformers' `generate_merges`: every split of every token into two
/// vocabulary tokens, ranked by the token's score (higher first), then by the
/// lengths of the halves (longer first); ties keep vocabulary order.
fn derive_merges(tokens: &[String], scores: &[f64]) -> Vec<(String, String)> {
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        index.insert(t.as_str(), i);
    }
    // dict(zip(tokens, scores)): first position of each token, last score.
    let mut order: Vec<&str> = Vec::with_capacity(tokens.len());
    let mut score_of: HashMap<&str, f64> = HashMap::with_capacity(tokens.len());
    for (t, &s) in tokens.iter().zip(scores) {
        if score_of.insert(t.as_str(), s).is_none() {
            order.push(t.as_str());
        }
    }
    let mut merges: Vec<(&str, &str, f64)> = Vec::new();
    for token in order {
        let score = score_of[token];
        let mut local: Vec<(&str, &str, f64)> = Vec::new();
        for (at, _) in token.char_indices().skip(1) {
            let (l, r) = token.split_at(at);
            if index.contains_key(l) && index.contains_key(r) {
                local.push((l, r, score));
            }
        }
        local.sort_by_key(|&(l, r, _)| (index[l], index[r]));
        merges.extend(local);
    }
    let key = |m: &(&str, &str, f64)| (m.2, m.0.chars().count(), m.1.chars().count());
    merges.sort_by(|a, b| {
        let (ka, kb) = (key(a), key(b));
        kb.0.total_cmp(&ka.0)
            .then(kb.1.cmp(&ka.1))
            .then(kb.2.cmp(&ka.2))
    });
    merges
        .into_iter()
        .map(|(l, r, _)| (l.to_string(), r.to_string()))
        .collect()
}

impl Tokenizer {
    /// Builds the tokenizer described by a GGUF file's `tokenizer.ggml.*`
    /// metadata, with the ids of transformers' tokenizer loaded from the same
    /// file. [`Tokenizer::dir`] is then the file's path.
    pub fn from_gguf(path: &Path) -> Result<Tokenizer> {
        let file = GgufFile::open(path)?;
        let m = Meta { file: &file, path };

        let arch_key = "general.architecture";
        let arch = m
            .str_opt(arch_key)?
            .ok_or_else(|| m.err(arch_key, "missing"))?;
        if !supported_architecture(arch) {
            return Err(m.err(
                arch_key,
                format!("architecture {arch:?} is not one transformers can load from a GGUF file"),
            ));
        }
        let model_key = "tokenizer.ggml.model";
        let model = m
            .str_opt(model_key)?
            .ok_or_else(|| m.err(model_key, "missing (the file has no tokenizer)"))?;
        let kind = match (model, arch) {
            ("gpt2", _) => Kind::ByteLevel,
            ("llama", "gemma2" | "gemma3") => Kind::Gemma,
            ("llama", "phi3") => Kind::Phi3,
            ("llama", _) => Kind::Llama,
            (other, _) => {
                return Err(m.err(
                    model_key,
                    format!(
                        "tokenizer {other:?} is not supported (supported: \"gpt2\", \"llama\")"
                    ),
                ))
            }
        };

        let tokens_key = "tokenizer.ggml.tokens";
        let file_tokens = m
            .strings(tokens_key)?
            .ok_or_else(|| m.err(tokens_key, "missing (the file has no vocabulary)"))?;
        let n = file_tokens.len();
        if n == 0 {
            return Err(m.err(tokens_key, "the vocabulary is empty"));
        }
        let types_key = "tokenizer.ggml.token_type";
        let types: Vec<u64> = m
            .per_token(types_key, n, "an integer", Value::as_u64)?
            .unwrap_or_default();
        let scores_key = "tokenizer.ggml.scores";
        let scores = m.per_token(scores_key, n, "a number", Value::as_f64)?;

        // The vocabulary as the builder spells it.
        let alphabet = byte_alphabet();
        let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
        let tokens: Vec<String> = match kind {
            Kind::ByteLevel => file_tokens
                .iter()
                .map(|t| {
                    if in_alphabet(t) {
                        t.to_string()
                    } else {
                        t.bytes().map(|b| alphabet[b as usize]).collect()
                    }
                })
                .collect(),
            Kind::Gemma => file_tokens
                .iter()
                .map(|t| {
                    if t.contains(' ') && t.trim().is_empty() {
                        "\u{2581}".repeat(t.chars().count())
                    } else {
                        t.to_string()
                    }
                })
                .collect(),
            Kind::Llama | Kind::Phi3 => file_tokens.iter().map(|t| t.to_string()).collect(),
        };

        let merges_key = "tokenizer.ggml.merges";
        let merges: Vec<(String, String)> = match m.strings(merges_key)? {
            Some(list) => list
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let parts: Vec<&str> = s.split(' ').collect();
                    match parts.as_slice() {
                        [a, b] => Ok((a.to_string(), b.to_string())),
                        _ => Err(m.err(
                            merges_key,
                            format!("entry {i} {s:?} is not two tokens separated by one space"),
                        )),
                    }
                })
                .collect::<Result<_>>()?,
            None if kind == Kind::ByteLevel => {
                return Err(m.err(
                    merges_key,
                    "missing (a \"gpt2\" tokenizer needs its merges)",
                ))
            }
            None => {
                let ranks: Vec<f64> = if kind == Kind::Gemma {
                    (0..n).map(|i| -(i as f64)).collect()
                } else {
                    scores.ok_or_else(|| {
                        m.err(
                            scores_key,
                            "missing (needed to derive the merges, which the file lacks)",
                        )
                    })?
                };
                derive_merges(&tokens, &ranks)
            }
        };

        let mut vocab = Map::new();
        for (i, t) in tokens.iter().enumerate() {
            vocab.insert(t.clone(), json!(i));
        }
        let model_json = match kind {
            Kind::ByteLevel => json!({
                "type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": "", "end_of_word_suffix": "",
                "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": merges,
            }),
            Kind::Llama | Kind::Phi3 => json!({
                "type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null,
                "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                "vocab": vocab, "merges": merges,
            }),
            Kind::Gemma => json!({
                "type": "BPE", "dropout": null, "unk_token": "<unk>",
                "continuing_subword_prefix": null, "end_of_word_suffix": null,
                "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                "vocab": vocab, "merges": merges,
            }),
        };
        let sp = "\u{2581}";
        let sp_decoder = |strip: bool| {
            let mut d = vec![
                json!({"type": "Replace", "pattern": {"String": sp}, "content": " "}),
                json!({"type": "ByteFallback"}),
                json!({"type": "Fuse"}),
            ];
            if strip {
                d.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
            }
            json!({"type": "Sequence", "decoders": d})
        };
        let pre_key = "tokenizer.ggml.pre";
        let pre = m.str_opt(pre_key)?;
        let (normalizer, pre_tokenizer, decoder) = match kind {
            Kind::ByteLevel => {
                let pre_tok = match pre.and_then(pre_split) {
                    Some(re) => json!({"type": "Sequence", "pretokenizers": [
                        {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
                        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
                    ]}),
                    None => {
                        json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true})
                    }
                };
                (
                    Json::Null,
                    pre_tok,
                    json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}),
                )
            }
            Kind::Llama => (
                Json::Null,
                json!({"type": "Metaspace", "replacement": sp, "prepend_scheme": "first", "split": false}),
                sp_decoder(true),
            ),
            Kind::Phi3 => (
                json!({"type": "Sequence", "normalizers": [
                    {"type": "Prepend", "prepend": sp},
                    {"type": "Replace", "pattern": {"String": " "}, "content": sp},
                ]}),
                Json::Null,
                sp_decoder(true),
            ),
            Kind::Gemma => (
                json!({"type": "Replace", "pattern": {"String": " "}, "content": sp}),
                json!({"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": false}),
                sp_decoder(false),
            ),
        };
        let tok_json = json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": normalizer, "pre_tokenizer": pre_tokenizer,
            "post_processor": null, "decoder": decoder, "model": model_json,
        });
        let mut inner: tokenizers::Tokenizer = tok_json
            .to_string()
            .parse()
            .map_err(|e| format_err(path, format!("cannot build the tokenizer: {e}")))?;

        let special = |t: &str| AddedToken::from(t.to_string(), true).normalized(false);
        // The builder class's own default special tokens.
        let defaults: &[&str] = match kind {
            Kind::ByteLevel => &["<|endoftext|>"],
            Kind::Llama | Kind::Phi3 => &["<s>", "</s>", "<unk>"],
            Kind::Gemma => &["<bos>", "<eos>", "<unk>", "<pad>", "<mask>"],
        };
        let defaults: Vec<AddedToken> = defaults.iter().map(|t| special(t)).collect();
        inner.add_special_tokens(&defaults);
        // Control tokens as special tokens, user-defined ones as plain added tokens.
        let control: Vec<AddedToken> = file_tokens
            .iter()
            .zip(&types)
            .filter(|(t, &ty)| ty == CONTROL && (kind != Kind::ByteLevel || in_alphabet(t)))
            .map(|(t, _)| special(t))
            .collect();
        inner.add_special_tokens(&control);
        let user: Vec<AddedToken> = file_tokens
            .iter()
            .zip(&types)
            .filter(|(t, &ty)| ty == USER_DEFINED && inner.token_to_id(t).is_some())
            .map(|(t, _)| AddedToken::from(t.to_string(), false).normalized(false))
            .collect();
        inner.add_tokens(&user);

        // Named special tokens, from their ids in the file's own spelling.
        let named = |key: &str| -> Result<Option<String>> {
            Ok(m.token_id(&format!("tokenizer.ggml.{key}_token_id"), n)?
                .map(|id| file_tokens[id].to_string()))
        };
        let bos_token = named("bos")?;
        let eos_token = named("eos")?;
        let unk_token = named("unknown")?;
        let pad_token = named("padding")?;
        let mut special_tokens_map: Vec<(&'static str, String)> = Vec::new();
        for (k, t) in [
            ("bos_token", &bos_token),
            ("eos_token", &eos_token),
            ("unk_token", &unk_token),
            ("pad_token", &pad_token),
        ] {
            if let Some(t) = t {
                special_tokens_map.push((k, t.clone()));
            }
        }
        if kind == Kind::Gemma {
            special_tokens_map.push(("mask_token", "<mask>".to_string()));
        }
        let named_tokens: Vec<AddedToken> =
            special_tokens_map.iter().map(|(_, t)| special(t)).collect();
        inner.add_special_tokens(&named_tokens);

        // BOS/EOS as transformers' update_post_processor writes them.
        let add_bos = m
            .bool_opt("tokenizer.ggml.add_bos_token")?
            .unwrap_or(matches!(kind, Kind::Llama | Kind::Phi3 | Kind::Gemma))
            && bos_token.is_some();
        let add_eos =
            m.bool_opt("tokenizer.ggml.add_eos_token")?.unwrap_or(false) && eos_token.is_some();
        let piece = |t: &str, type_id: u32| json!({"SpecialToken": {"id": t, "type_id": type_id}});
        let seq = |s: &str, type_id: u32| json!({"Sequence": {"id": s, "type_id": type_id}});
        let mut single = Vec::new();
        let mut pair = Vec::new();
        let mut specials = Map::new();
        let id_of = |t: &str| inner.token_to_id(t);
        let push = |out: &mut Vec<Json>, type_id: u32, s: &str| {
            if add_bos {
                out.push(piece(bos_token.as_deref().unwrap_or_default(), type_id));
            }
            out.push(seq(s, type_id));
            if add_eos {
                out.push(piece(eos_token.as_deref().unwrap_or_default(), type_id));
            }
        };
        push(&mut single, 0, "A");
        pair.extend(single.iter().cloned());
        push(&mut pair, 1, "B");
        for (on, t) in [(add_bos, &bos_token), (add_eos, &eos_token)] {
            if let (true, Some(t)) = (on, t) {
                let id =
                    id_of(t).ok_or_else(|| format_err(path, format!("token {t:?} has no id")))?;
                specials.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
            }
        }
        let pp: tokenizers::PostProcessorWrapper = serde_json::from_value(json!({
            "type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials,
        }))
        .map_err(|e| format_err(path, format!("post-processor: {e}")))?;
        inner.with_post_processor(Some(pp));

        let template_key = "tokenizer.chat_template";
        let chat_template = match m.str_opt(template_key)? {
            Some(source) => TemplateState::found(path.to_path_buf(), source.to_string()),
            None => TemplateState::Missing,
        };
        let generation_eos = eos_token
            .as_deref()
            .and_then(|t| inner.token_to_id(t))
            .into_iter()
            .collect();
        Ok(Tokenizer {
            dir: path.to_path_buf(),
            inner,
            bos_token,
            eos_token,
            pad_token,
            special_tokens_map,
            generation_eos,
            clean_up_tokenization_spaces: false,
            chat_template,
        })
    }

    /// Loads a tokenizer from a GGUF file ([`Tokenizer::from_gguf`]) when
    /// `path` is a file (whatever its name), else from a model directory
    /// ([`Tokenizer::from_dir`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Tokenizer> {
        let path = path.as_ref();
        // A file that is not GGUF is refused by the GGUF reader's magic check.
        if path.is_file() {
            Tokenizer::from_gguf(path)
        } else {
            Tokenizer::from_dir(path)
        }
    }
}

/// The architectures transformers' GGUF loader accepts (it refuses to build
/// a tokenizer for any other, Gemma 1's `gemma` included).
fn supported_architecture(arch: &str) -> bool {
    matches!(
        arch,
        "llama"
            | "mistral"
            | "qwen2"
            | "qwen2moe"
            | "gpt_oss"
            | "gpt-oss"
            | "lfm2"
            | "qwen3"
            | "qwen3moe"
            | "qwen35"
            | "qwen35moe"
            | "falcon"
            | "phi3"
            | "bloom"
            | "t5"
            | "t5encoder"
            | "umt5"
            | "stablelm"
            | "gpt2"
            | "starcoder2"
            | "mamba"
            | "nemotron"
            | "gemma2"
            | "gemma3"
            | "gemma4"
            | "deci"
            | "minimax-m2"
    )
}

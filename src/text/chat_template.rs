//! Chat templates, rendered as transformers renders them: minijinja configured
//! like transformers' Jinja sandbox (`trim_blocks`, `lstrip_blocks`, loop
//! controls, `raise_exception`, `strftime_now` (UTC), a `tojson` that writes
//! like Python's `json.dumps`, Python string/dict methods (`.strip()`,
//! `.items()`, ...), `{% generation %}` blocks), with the special tokens
//! (`bos_token`, `eos_token`, ...) as variables and values printed as
//! Python's `str()` prints them.
//!
//! Crates do the work where one does it: minijinja and minijinja-contrib's
//! `pycompat` (the engine and the Python methods), serde_json (the JSON
//! writer: `tojson` only supplies a `Formatter` with Python's separators,
//! indentation, `ensure_ascii` escapes and float repr) and jiff (`strftime`
//! with the POSIX locale). What stays here is Python's own printing, which
//! no crate reproduces: `str()`/`repr()` of values and `repr(float)`.

use std::cell::Cell;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, ErrorKind};
use serde::ser::{Error as _, SerializeMap, SerializeSeq};
use serde::{Deserialize, Serialize, Serializer};

use super::tokenizer::{format_err, one_line, show};
use crate::error::{Error, Result};

/// One chat turn. Deserializes from `{"role": ..., "content": ...}` (other keys
/// are ignored), so a JSONL line `{"messages": [...]}` parses into a
/// `Vec<ChatMessage>`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
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

/// A chat template and its compiled form (compiled on first use, so a
/// template with a syntax error fails when used, not when the tokenizer loads).
pub(super) struct ChatTemplate {
    /// The file the template came from (for error messages).
    path: PathBuf,
    pub(super) source: String,
    compiled: OnceLock<std::result::Result<Environment<'static>, String>>,
}

/// Where a model's chat template stands after loading.
pub(super) enum TemplateState {
    Found(Box<ChatTemplate>),
    Missing,
    /// `tokenizer_config.json` lists several templates, none named "default":
    /// an error when the template is used, as in transformers.
    NoDefault(PathBuf),
}

/// `chat_template` of tokenizer_config.json: a string, or a list of
/// `{"name", "template"}` of which transformers uses "default".
#[derive(Deserialize)]
#[serde(untagged, expecting = "a string or a list of {name, template}")]
pub(super) enum ConfigTemplates {
    One(String),
    Named(Vec<NamedTemplate>),
}

#[derive(Deserialize)]
pub(super) struct NamedTemplate {
    name: String,
    template: String,
}

impl TemplateState {
    pub(super) fn found(path: PathBuf, source: String) -> TemplateState {
        TemplateState::Found(Box::new(ChatTemplate {
            path,
            source,
            compiled: OnceLock::new(),
        }))
    }

    /// The template of `tokenizer_config.json`'s `chat_template` field.
    pub(super) fn from_config(cfg_path: &Path, field: Option<ConfigTemplates>) -> TemplateState {
        match field {
            None => TemplateState::Missing,
            Some(ConfigTemplates::One(source)) => Self::found(cfg_path.to_path_buf(), source),
            Some(ConfigTemplates::Named(list)) => {
                match list.into_iter().rev().find(|t| t.name == "default") {
                    Some(t) => Self::found(cfg_path.to_path_buf(), t.template),
                    None => TemplateState::NoDefault(cfg_path.to_path_buf()),
                }
            }
        }
    }

    /// The template source, if there is one.
    pub(super) fn source(&self) -> Option<&str> {
        match self {
            TemplateState::Found(t) => Some(&t.source),
            _ => None,
        }
    }

    /// `messages` rendered with `variables` (the special tokens) set; `dir`
    /// is the tokenizer's directory or GGUF file, named when there is no template.
    pub(super) fn render(
        &self,
        dir: &Path,
        variables: &[(&'static str, String)],
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let t = match self {
            TemplateState::Found(t) => t,
            TemplateState::Missing => {
                return Err(Error::Format {
                    path: show(dir),
                    message: if dir.is_file() {
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
        let mut ctx: Vec<(&str, Value)> = variables
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
/// separators=None, sort_keys=False)`, HTML characters not escaped. serde_json
/// writes the JSON; [`PyJsonFormatter`] gives it Python's layout.
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
    let non_finite = Cell::new(None);
    let formatter = PyJsonFormatter {
        ensure_ascii,
        indent,
        item_sep,
        key_sep,
        level: 0,
        has_value: false,
        non_finite: &non_finite,
    };
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    let value = PyJsonValue {
        value,
        sort_keys,
        non_finite: &non_finite,
    };
    value
        .serialize(&mut ser)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let out = String::from_utf8(out).expect("serde_json writes UTF-8");
    Ok(Value::from_safe_string(out))
}

/// A template value as `json.dumps` sees it: None/undefined as null, keys
/// as strings (`true`, `null`, numbers as printed), `sort_keys` applied.
struct PyJsonValue<'a> {
    value: &'a Value,
    sort_keys: bool,
    /// Where a NaN or infinity is announced to [`PyJsonFormatter`]: serde_json
    /// writes every non-finite float as `null`, Python as `NaN`/`Infinity`.
    non_finite: &'a Cell<Option<&'static str>>,
}

impl PyJsonValue<'_> {
    fn child<'b>(&'b self, value: &'b Value) -> PyJsonValue<'b> {
        PyJsonValue {
            value,
            sort_keys: self.sort_keys,
            non_finite: self.non_finite,
        }
    }
}

impl Serialize for PyJsonValue<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let v = self.value;
        match v.kind() {
            ValueKind::Undefined | ValueKind::None => s.serialize_unit(),
            ValueKind::Bool => s.serialize_bool(v.is_true()),
            ValueKind::Number if v.is_integer() => match i64::try_from(v.clone()) {
                Ok(i) => s.serialize_i64(i),
                Err(_) => match u64::try_from(v.clone()) {
                    Ok(u) => s.serialize_u64(u),
                    Err(_) => match i128::try_from(v.clone()) {
                        Ok(i) => s.serialize_i128(i),
                        Err(_) => {
                            s.serialize_u128(u128::try_from(v.clone()).map_err(S::Error::custom)?)
                        }
                    },
                },
            },
            ValueKind::Number => {
                let f = f64::try_from(v.clone()).map_err(S::Error::custom)?;
                if f.is_finite() {
                    s.serialize_f64(f)
                } else {
                    self.non_finite.set(Some(if f.is_nan() {
                        "NaN"
                    } else if f > 0.0 {
                        "Infinity"
                    } else {
                        "-Infinity"
                    }));
                    s.serialize_unit()
                }
            }
            ValueKind::String => s.serialize_str(v.as_str().unwrap_or("")),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = v.try_iter().map_err(S::Error::custom)?.collect();
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for x in &items {
                    seq.serialize_element(&self.child(x))?;
                }
                seq.end()
            }
            ValueKind::Map => {
                let mut keys: Vec<Value> = v.try_iter().map_err(S::Error::custom)?.collect();
                if self.sort_keys {
                    keys.sort();
                }
                let mut map = s.serialize_map(Some(keys.len()))?;
                for k in &keys {
                    let key = match k.kind() {
                        ValueKind::String => k.as_str().unwrap_or("").to_string(),
                        ValueKind::Bool => if k.is_true() { "true" } else { "false" }.to_string(),
                        ValueKind::None => "null".to_string(),
                        _ => k.to_string(),
                    };
                    let item = v.get_item(k).map_err(S::Error::custom)?;
                    map.serialize_entry(&key, &self.child(&item))?;
                }
                map.end()
            }
            kind => Err(S::Error::custom(format!(
                "cannot serialize a value of kind {kind}"
            ))),
        }
    }
}

/// serde_json's output in Python's `json.dumps` layout: its separators, its
/// indentation (`indent` as a string per level; empty containers stay `[]`,
/// `{}`), `repr(float)` numbers, `NaN`/`Infinity`, and with `ensure_ascii`
/// every character outside printable ASCII as `\uXXXX` (UTF-16 units).
struct PyJsonFormatter<'a> {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    level: usize,
    /// Whether the container being written has an element (PrettyFormatter's rule).
    has_value: bool,
    non_finite: &'a Cell<Option<&'static str>>,
}

impl PyJsonFormatter<'_> {
    fn newline<W: ?Sized + std::io::Write>(&self, w: &mut W) -> std::io::Result<()> {
        if let Some(indent) = &self.indent {
            w.write_all(b"\n")?;
            for _ in 0..self.level {
                w.write_all(indent.as_bytes())?;
            }
        }
        Ok(())
    }

    fn open<W: ?Sized + std::io::Write>(&mut self, w: &mut W, c: &[u8]) -> std::io::Result<()> {
        self.level += 1;
        self.has_value = false;
        w.write_all(c)
    }

    fn close<W: ?Sized + std::io::Write>(&mut self, w: &mut W, c: &[u8]) -> std::io::Result<()> {
        self.level -= 1;
        if self.has_value {
            self.newline(w)?;
        }
        w.write_all(c)
    }

    fn item<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        if !first {
            w.write_all(self.item_sep.as_bytes())?;
        }
        self.newline(w)
    }
}

impl serde_json::ser::Formatter for PyJsonFormatter<'_> {
    fn write_null<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        let text = self.non_finite.take().unwrap_or("null");
        w.write_all(text.as_bytes())
    }

    fn write_f64<W: ?Sized + std::io::Write>(&mut self, w: &mut W, f: f64) -> std::io::Result<()> {
        w.write_all(py_float_repr(f).as_bytes())
    }

    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        if !self.ensure_ascii {
            return w.write_all(fragment.as_bytes());
        }
        let mut buf = [0u16; 2];
        for c in fragment.chars() {
            if (' '..='~').contains(&c) {
                w.write_all(&[c as u8])?;
            } else {
                for unit in c.encode_utf16(&mut buf) {
                    write!(w, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }

    fn begin_array<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.open(w, b"[")
    }

    fn end_array<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.close(w, b"]")
    }

    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.item(w, first)
    }

    fn end_array_value<W: ?Sized + std::io::Write>(&mut self, _: &mut W) -> std::io::Result<()> {
        self.has_value = true;
        Ok(())
    }

    fn begin_object<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.open(w, b"{")
    }

    fn end_object<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.close(w, b"}")
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.item(w, first)
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(self.key_sep.as_bytes())
    }

    fn end_object_value<W: ?Sized + std::io::Write>(&mut self, _: &mut W) -> std::io::Result<()> {
        self.has_value = true;
        Ok(())
    }
}

/// Python's `datetime.now().strftime(fmt)`, in UTC.
fn strftime_utc_now(fmt: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    strftime(secs, fmt)
}

/// `strftime` as glibc's in the C locale (what Python calls on Linux), by
/// jiff: POSIX names and `%c`/`%x`/`%X` layouts, GNU flags (`%-d`), and a
/// directive jiff does not know written as is, as glibc writes it.
fn strftime(unix_secs: i64, fmt: &str) -> String {
    use jiff::fmt::strtime::{BrokenDownTime, Config, PosixCustom};
    let Ok(ts) = jiff::Timestamp::from_second(unix_secs) else {
        return fmt.to_string();
    };
    let config = Config::new().custom(PosixCustom::new()).lenient(true);
    BrokenDownTime::from(ts)
        .to_string_with_config(&config, fmt)
        .unwrap_or_else(|_| fmt.to_string())
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
    fn tojson_writes_as_python_json_dumps() {
        // Expected: Python's json.dumps of the same value with the same arguments.
        let env = compile_template(
            "{%- set v = {'b': 1e16, 'a': [1.5e-05, s, none, true, 'nan'|float, 'inf'|float], 'c': {}, 'd': [], 'e': {'x': [1, {'y': 2}]}} -%}\
             {{ v | tojson(ensure_ascii=true, sort_keys=true) }}|{{ v | tojson(true, 2) }}|\
             {{ v | tojson(ensure_ascii=true, indent='\\t', separators=[';', '=']) }}|\
             {{ v | tojson(separators=[',', ':']) }}|{{ v | tojson }}",
        )
        .unwrap();
        let got = env
            .get_template("chat_template")
            .unwrap()
            .render(minijinja::context! { s => "\u{e9}\u{1f600}\u{1}\u{7f}" })
            .unwrap();
        let want = [
            "{\"a\": [1.5e-05, \"\\u00e9\\ud83d\\ude00\\u0001\\u007f\", null, true, NaN, Infinity], \"b\": 1e+16, \"c\": {}, \"d\": [], \"e\": {\"x\": [1, {\"y\": 2}]}}",
            "{\n  \"b\": 1e+16,\n  \"a\": [\n    1.5e-05,\n    \"\\u00e9\\ud83d\\ude00\\u0001\\u007f\",\n    null,\n    true,\n    NaN,\n    Infinity\n  ],\n  \"c\": {},\n  \"d\": [],\n  \"e\": {\n    \"x\": [\n      1,\n      {\n        \"y\": 2\n      }\n    ]\n  }\n}",
            "{\n\t\"b\"=1e+16;\n\t\"a\"=[\n\t\t1.5e-05;\n\t\t\"\\u00e9\\ud83d\\ude00\\u0001\\u007f\";\n\t\tnull;\n\t\ttrue;\n\t\tNaN;\n\t\tInfinity\n\t];\n\t\"c\"={};\n\t\"d\"=[];\n\t\"e\"={\n\t\t\"x\"=[\n\t\t\t1;\n\t\t\t{\n\t\t\t\t\"y\"=2\n\t\t\t}\n\t\t]\n\t}\n}",
            "{\"b\":1e+16,\"a\":[1.5e-05,\"\u{e9}\u{1f600}\\u0001\u{7f}\",null,true,NaN,Infinity],\"c\":{},\"d\":[],\"e\":{\"x\":[1,{\"y\":2}]}}",
            "{\"b\": 1e+16, \"a\": [1.5e-05, \"\u{e9}\u{1f600}\\u0001\u{7f}\", null, true, NaN, Infinity], \"c\": {}, \"d\": [], \"e\": {\"x\": [1, {\"y\": 2}]}}",
        ];
        assert_eq!(got, want.join("|"));
    }

    #[test]
    fn strftime_formats_what_python_formats() {
        // Python 3 on Linux (glibc, C locale), same instant.
        let t = 1_721_997_296;
        assert_eq!(
            strftime(t, "%c|%x|%X|%F %T|%e|%Z|%z|%u %w|%J %%"),
            "Fri Jul 26 12:34:56 2024|07/26/24|12:34:56|2024-07-26 12:34:56|26|UTC|+0000|5 5|%J %"
        );
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

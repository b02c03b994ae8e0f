//! PEFT adapter directories: `adapter_config.json` + `adapter_model.safetensors`
//! with PEFT's key names, so adapters move between this library and PEFT.
//!
//! Keys: `base_model.model.<module>.lora_A.weight` [r, in],
//! `base_model.model.<module>.lora_B.weight` [out, r],
//! `base_model.model.<module>.lora_magnitude_vector` [out] (DoRA; no `.weight`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::safetensors::{read_safetensors, write_safetensors, HostTensor};
use crate::error::{Error, Result};
use crate::files::write_atomically;

/// PEFT's scaling: lora_alpha / r, or lora_alpha / √r with rsLoRA.
pub fn lora_scaling(alpha: f32, rank: usize, use_rslora: bool) -> f32 {
    if use_rslora {
        alpha / (rank as f32).sqrt()
    } else {
        alpha / rank as f32
    }
}

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
const KEY_PREFIX: &str = "base_model.model.";
const A_SUFFIX: &str = ".lora_A.weight";
const B_SUFFIX: &str = ".lora_B.weight";
const M_SUFFIX: &str = ".lora_magnitude_vector";

/// PEFT's `LoraConfig` fields that matter here; any others are kept as they
/// were read so that a round trip loses nothing.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AdapterConfig {
    #[serde(default = "default_peft_type")]
    pub peft_type: String,
    pub r: usize,
    pub lora_alpha: f32,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default, deserialize_with = "targets_or_null")]
    pub target_modules: TargetModules,
    #[serde(default)]
    pub lora_dropout: f32,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default = "default_bias")]
    pub bias: String,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub task_type: Option<String>,
    /// Per-module overrides of r and alpha (PEFT's `rank_pattern`, `alpha_pattern`).
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, usize>,
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, f32>,
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

fn default_peft_type() -> String {
    "LORA".into()
}

fn default_bias() -> String {
    "none".into()
}

/// PEFT's `target_modules`: a list of names, where a module matches a name
/// equal to its path or that its path ends in (`.q_proj`); or one string, a
/// regular expression the whole module path must match (`"all-linear"`:
/// every linear layer but the output head).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum TargetModules {
    Names(Vec<String>),
    Regex(String),
}

impl Default for TargetModules {
    fn default() -> Self {
        TargetModules::Names(Vec::new())
    }
}

/// `null` (PEFT's "not set") reads as an empty list.
fn targets_or_null<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<TargetModules, D::Error> {
    Ok(Option::<TargetModules>::deserialize(d)?.unwrap_or_default())
}

/// PEFT's pattern match: a key matches a module path equal to it or ending in `.key`.
fn pattern_matches(key: &str, module: &str) -> bool {
    module == key || module.ends_with(&format!(".{key}"))
}

/// A regex anchored at both ends, as Python's `re.fullmatch` applies it.
fn full_match(pattern: &str) -> std::result::Result<regex::Regex, regex::Error> {
    regex::Regex::new(&format!("^(?:{pattern})$"))
}

/// The distinct last names of the model's modules (`q_proj, k_proj, …`).
fn projection_names(model_linears: &BTreeMap<String, (usize, usize)>) -> String {
    let mut names: Vec<&str> = Vec::new();
    for m in model_linears.keys() {
        let last = m.rsplit('.').next().unwrap_or(m);
        if !names.contains(&last) {
            names.push(last);
        }
    }
    names.join(", ")
}

/// Module names as PEFT matches them: a list (a module matches a name equal
/// to its path or that its path ends in), or a full-match regex.
enum Matcher {
    Names(Vec<String>),
    Regex(regex::Regex),
}

impl Matcher {
    fn matches(&self, module: &str) -> bool {
        match self {
            Matcher::Names(names) => names.iter().any(|n| pattern_matches(n, module)),
            Matcher::Regex(re) => re.is_match(module),
        }
    }
}

/// What an adapter config selects: `target_modules` (None: "all-linear"),
/// minus `exclude_modules`, within `layers_to_transform`.
struct Selector {
    targets: Option<Matcher>,
    exclude: Option<Matcher>,
    layers: Option<Vec<u64>>,
}

impl Selector {
    fn selects(&self, module: &str) -> bool {
        let named = self.targets.as_ref().is_none_or(|t| t.matches(module));
        // PEFT applies layers_to_transform to a list of names only, not to a regex.
        let in_layers = match (&self.layers, &self.targets) {
            (None, _) | (_, Some(Matcher::Regex(_))) => true,
            (Some(wanted), _) => layer_index(module).is_some_and(|i| wanted.contains(&i)),
        };
        let excluded = self.exclude.as_ref().is_some_and(|e| e.matches(module));
        named && in_layers && !excluded
    }
}

/// The layer index of a module path as PEFT finds it (`.*?\.[^.]*\.(\d+)\.`):
/// the first all-digit segment after the second, with more to follow
/// (N of `model.layers.N.…` and of `model.language_model.layers.N.…`).
fn layer_index(module: &str) -> Option<u64> {
    let segments: Vec<&str> = module.split('.').collect();
    let last = segments.len().checked_sub(1)?;
    segments
        .iter()
        .enumerate()
        .skip(2)
        .find(|&(i, s)| i < last && !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))?
        .1
        .parse()
        .ok()
}

impl AdapterConfig {
    /// A config for a new adapter, with PEFT's defaults for the rest.
    pub fn new(
        r: usize,
        lora_alpha: f32,
        use_dora: bool,
        target_modules: &[&str],
    ) -> AdapterConfig {
        AdapterConfig {
            peft_type: default_peft_type(),
            r,
            lora_alpha,
            use_dora,
            use_rslora: false,
            target_modules: TargetModules::Names(
                target_modules.iter().map(|s| s.to_string()).collect(),
            ),
            lora_dropout: 0.0,
            fan_in_fan_out: false,
            bias: default_bias(),
            base_model_name_or_path: None,
            task_type: None,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            other: serde_json::Map::new(),
        }
    }

    /// The rank and alpha for one module, after PEFT's per-module patterns.
    pub fn rank_and_alpha(&self, module: &str) -> (usize, f32) {
        let r = self
            .rank_pattern
            .iter()
            .find(|(k, _)| pattern_matches(k, module))
            .map_or(self.r, |(_, &r)| r);
        let alpha = self
            .alpha_pattern
            .iter()
            .find(|(k, _)| pattern_matches(k, module))
            .map_or(self.lora_alpha, |(_, &a)| a);
        (r, alpha)
    }

    /// s = lora_alpha / r, or lora_alpha / √r with rsLoRA.
    pub fn scaling(&self, module: &str) -> f32 {
        let (r, alpha) = self.rank_and_alpha(module);
        lora_scaling(alpha, r, self.use_rslora)
    }

    /// True when `module` is one this config adapts: `target_modules`, then
    /// `layers_to_transform` and `exclude_modules` (from
    /// [`AdapterConfig::other`]) as PEFT applies them. Settings that do not
    /// parse select nothing ([`AdapterWeights::load`] refuses them).
    pub fn targets(&self, module: &str) -> bool {
        self.selector().is_ok_and(|s| s.selects(module))
    }

    /// The module selection, parsed (regexes compiled) once.
    fn selector(&self) -> std::result::Result<Selector, String> {
        let targets = match &self.target_modules {
            TargetModules::Names(names) => Some(Matcher::Names(names.clone())),
            TargetModules::Regex(r) if r == "all-linear" => None,
            TargetModules::Regex(r) => Some(Matcher::Regex(
                full_match(r).map_err(|e| format!("target_modules regex {r:?}: {e}"))?,
            )),
        };
        let exclude = match self.other.get("exclude_modules") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(r)) => Some(Matcher::Regex(
                full_match(r).map_err(|e| format!("exclude_modules regex {r:?}: {e}"))?,
            )),
            Some(serde_json::Value::Array(v)) if v.iter().all(|x| x.is_string()) => {
                Some(Matcher::Names(
                    v.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect(),
                ))
            }
            Some(v) => {
                return Err(format!(
                    "exclude_modules {v} is not a regex or a list of names"
                ))
            }
        };
        let layers = match self.other.get("layers_to_transform") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) if v.as_u64().is_some() => v.as_u64().map(|i| vec![i]),
            Some(serde_json::Value::Array(items)) if items.iter().all(|x| x.as_u64().is_some()) => {
                Some(items.iter().filter_map(|x| x.as_u64()).collect())
            }
            Some(v) => {
                return Err(format!(
                    "layers_to_transform {v} is not a layer index or a list of them"
                ))
            }
        };
        Ok(Selector {
            targets,
            exclude,
            layers,
        })
    }

    /// The settings that select modules, for error messages.
    fn selection(&self) -> String {
        let mut parts = vec![format!(
            "target_modules {}",
            serde_json::to_string(&self.target_modules).unwrap_or_default()
        )];
        for key in ["layers_to_transform", "exclude_modules"] {
            match self.other.get(key) {
                None | Some(serde_json::Value::Null) => {}
                Some(v) => parts.push(format!("{key} {v}")),
            }
        }
        parts.join(", ")
    }

    /// The checks on values that serde's types cannot express.
    fn check_values(&self) -> std::result::Result<(), String> {
        if self.r == 0 {
            return Err("r must be at least 1".into());
        }
        if !self.lora_alpha.is_finite() {
            return Err(format!(
                "lora_alpha {} is not a finite number",
                self.lora_alpha
            ));
        }
        if let Some((k, _)) = self.rank_pattern.iter().find(|(_, &r)| r == 0) {
            return Err(format!("rank_pattern[{k:?}] must be at least 1"));
        }
        if let Some((k, a)) = self.alpha_pattern.iter().find(|(_, a)| !a.is_finite()) {
            return Err(format!("alpha_pattern[{k:?}] {a} is not a finite number"));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(format!(
                "lora_dropout {} is not in [0, 1)",
                self.lora_dropout
            ));
        }
        self.selector().map(|_| ())
    }

    fn check_supported(&self, path: &Path) -> Result<()> {
        let fail = |message: String| {
            Err(Error::Format {
                path: path.display().to_string(),
                message,
            })
        };
        if self.peft_type != "LORA" {
            return fail(format!(
                "peft_type {:?} is not supported; expected \"LORA\"",
                self.peft_type
            ));
        }
        if self.fan_in_fan_out {
            return fail("fan_in_fan_out: true (GPT-2 Conv1D layers) is not supported".into());
        }
        if self.bias != "none" {
            return fail(format!(
                "bias {:?} is not supported; expected \"none\"",
                self.bias
            ));
        }
        self.check_values().or_else(fail)
    }
}

/// One module's adapter tensors, on the host, as f32.
#[derive(Clone, Debug, PartialEq)]
pub struct ModuleAdapter {
    /// [r, in]
    pub lora_a: HostTensor,
    /// [out, r]
    pub lora_b: HostTensor,
    /// [out], DoRA only
    pub magnitude: Option<HostTensor>,
}

/// A whole PEFT adapter: its config and the tensors of every adapted module,
/// keyed by module path (e.g. `model.layers.0.self_attn.q_proj`).
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterWeights {
    pub config: AdapterConfig,
    pub modules: BTreeMap<String, ModuleAdapter>,
}

impl AdapterWeights {
    /// Reads an adapter directory written by PEFT (or by [`AdapterWeights::save`]).
    pub fn load(dir: &Path) -> Result<AdapterWeights> {
        let config_path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&config_path).map_err(|source| Error::Io {
            path: config_path.display().to_string(),
            source,
        })?;
        let config: AdapterConfig =
            crate::io::parse_json(&text).map_err(|message| Error::Format {
                path: config_path.display().to_string(),
                message: format!("invalid adapter config: {message}"),
            })?;
        config.check_supported(&config_path)?;
        let weights_path = dir.join(WEIGHTS_FILE);
        let tensors = read_safetensors(&weights_path)?;
        let err = |message: String| Error::Format {
            path: weights_path.display().to_string(),
            message,
        };

        // Group keys by module; every key must be one of the three PEFT kinds.
        let mut parts: BTreeMap<String, [Option<HostTensor>; 3]> = BTreeMap::new();
        for (key, t) in tensors {
            let stripped = key.strip_prefix(KEY_PREFIX).ok_or_else(|| {
                err(format!("tensor {key} does not start with {KEY_PREFIX:?}, so it is not a PEFT adapter key"))
            })?;
            let (module, slot) = if let Some(m) = stripped.strip_suffix(A_SUFFIX) {
                (m, 0)
            } else if let Some(m) = stripped.strip_suffix(B_SUFFIX) {
                (m, 1)
            } else if let Some(m) = stripped
                .strip_suffix(M_SUFFIX)
                .or_else(|| stripped.strip_suffix(".lora_magnitude_vector.weight"))
            {
                (m, 2)
            } else {
                return Err(err(format!(
                    "tensor {key} is not a lora_A, lora_B or lora_magnitude_vector tensor"
                )));
            };
            if t.dtype == crate::DType::I32 {
                return Err(err(format!(
                    "tensor {key} has dtype I32; expected F32, BF16 or F16"
                )));
            }
            // Adapters are trained in f32: widen 16-bit files on load.
            let t = HostTensor::from_f32(&t.to_f32(), &t.shape);
            // Adapters made with transformers before 4.52 name a multimodal
            // Gemma 3's modules as its hub files do (`language_model.model.…`).
            let module = crate::io::hf::name_in_memory(module);
            parts.entry(module).or_default()[slot] = Some(t);
        }
        if parts.is_empty() {
            return Err(err("holds no adapter tensors".into()));
        }

        let mut modules = BTreeMap::new();
        for (module, [a, b, m]) in parts {
            let key = |suffix: &str| format!("{KEY_PREFIX}{module}{suffix}");
            let a = a.ok_or_else(|| err(format!("{} is missing", key(A_SUFFIX))))?;
            let b = b.ok_or_else(|| err(format!("{} is missing", key(B_SUFFIX))))?;
            if config.use_dora && m.is_none() {
                return Err(err(format!(
                    "use_dora is true but {} is missing",
                    key(M_SUFFIX)
                )));
            }
            if !config.use_dora && m.is_some() {
                return Err(err(format!(
                    "{} is present but use_dora is false",
                    key(M_SUFFIX)
                )));
            }
            let (&[r, _], &[_, rb]) = (&a.shape[..], &b.shape[..]) else {
                return Err(err(format!(
                    "{} is {:?} and {} is {:?}; both must be 2-D",
                    key(A_SUFFIX),
                    a.shape,
                    key(B_SUFFIX),
                    b.shape
                )));
            };
            if r != rb {
                return Err(err(format!(
                    "{} is {:?} but {} is {:?}: their ranks differ",
                    key(A_SUFFIX),
                    a.shape,
                    key(B_SUFFIX),
                    b.shape
                )));
            }
            let (config_r, _) = config.rank_and_alpha(&module);
            if r != config_r {
                return Err(err(format!(
                    "{} is {:?} and {} is {:?} (rank {r}), but {CONFIG_FILE} gives {module} r = {config_r}",
                    key(A_SUFFIX),
                    a.shape,
                    key(B_SUFFIX),
                    b.shape
                )));
            }
            for (suffix, t) in [
                (A_SUFFIX, Some(&a)),
                (B_SUFFIX, Some(&b)),
                (M_SUFFIX, m.as_ref()),
            ] {
                if let Some(i) = t.and_then(HostTensor::first_non_finite) {
                    return Err(err(format!(
                        "tensor {} holds a non-finite value (NaN or infinity) at element {i}",
                        key(suffix)
                    )));
                }
            }
            if let Some(m) = &m {
                if m.shape != [b.shape[0]] {
                    return Err(err(format!(
                        "{} is {:?}, expected [{}]",
                        key(M_SUFFIX),
                        m.shape,
                        b.shape[0]
                    )));
                }
            }
            modules.insert(
                module,
                ModuleAdapter {
                    lora_a: a,
                    lora_b: b,
                    magnitude: m,
                },
            );
        }
        Ok(AdapterWeights { config, modules })
    }

    /// Checks the adapter against the model's adaptable linear layers, `[out,
    /// in]` by module path, as PEFT decides what to adapt: the config's
    /// `target_modules` (and `layers_to_transform`) select modules, each
    /// selected module must have tensors and each tensor a selected module,
    /// and every listed target must exist. Errors name the module or tensor.
    pub fn check_fits(&self, model_linears: &BTreeMap<String, (usize, usize)>) -> Result<()> {
        self.check_shapes(model_linears)?;
        let c = &self.config;
        let selector = c.selector().map_err(Error::InvalidArgument)?;
        if let TargetModules::Names(names) = &c.target_modules {
            for name in names {
                if !model_linears.keys().any(|m| pattern_matches(name, m)) {
                    return Err(Error::Shape(format!(
                        "adapter target_modules names {name:?}, which matches none of the model's adaptable modules ({})",
                        projection_names(model_linears)
                    )));
                }
            }
        }
        if let Some(module) = self.modules.keys().find(|m| !selector.selects(m)) {
            return Err(Error::Shape(format!(
                "adapter holds tensors for {module}, which its config does not select ({})",
                c.selection()
            )));
        }
        if let Some(module) = model_linears
            .keys()
            .find(|m| selector.selects(m) && !self.modules.contains_key(*m))
        {
            return Err(Error::Shape(format!(
                "adapter config selects {module} ({}), but the adapter holds no tensors for it",
                c.selection()
            )));
        }
        Ok(())
    }

    /// Checks every module's tensors against the model's linear shapes; the
    /// error names the tensor and both shapes.
    pub fn check_shapes(&self, model_linears: &BTreeMap<String, (usize, usize)>) -> Result<()> {
        for (module, m) in &self.modules {
            let Some(&(out_f, in_f)) = model_linears.get(module) else {
                return Err(Error::Shape(format!(
                    "adapter module {module} does not exist in the model (is the adapter for another model?)"
                )));
            };
            let r = m.lora_a.shape[0];
            let checks = [
                (A_SUFFIX, &m.lora_a.shape, vec![r, in_f]),
                (B_SUFFIX, &m.lora_b.shape, vec![out_f, r]),
            ];
            for (suffix, got, want) in checks {
                if *got != want {
                    return Err(Error::Shape(format!(
                        "{KEY_PREFIX}{module}{suffix} has shape {got:?} but the model's {module} \
                         is [{out_f}, {in_f}]: expected {want:?}"
                    )));
                }
            }
            if let Some(mag) = &m.magnitude {
                if mag.shape != [out_f] {
                    return Err(Error::Shape(format!(
                        "{KEY_PREFIX}{module}{M_SUFFIX} has shape {:?} but the model's {module} has {out_f} outputs",
                        mag.shape
                    )));
                }
            }
        }
        Ok(())
    }

    /// Writes `adapter_model.safetensors` and `adapter_config.json` into `dir`
    /// (created if needed), each atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let mut tensors = BTreeMap::new();
        for (module, m) in &self.modules {
            tensors.insert(format!("{KEY_PREFIX}{module}{A_SUFFIX}"), m.lora_a.clone());
            tensors.insert(format!("{KEY_PREFIX}{module}{B_SUFFIX}"), m.lora_b.clone());
            if let Some(mag) = &m.magnitude {
                tensors.insert(format!("{KEY_PREFIX}{module}{M_SUFFIX}"), mag.clone());
            }
        }
        let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
        let weights = (WEIGHTS_FILE, &tensors, Some(metadata));
        write_adapter_dir(dir, weights, (CONFIG_FILE, &self.config))
    }
}

/// Writes an adapter directory: a safetensors file (name, tensors, metadata)
/// and a JSON config (name, value), each atomically, into `dir` (created if needed).
pub(crate) fn write_adapter_dir(
    dir: &Path,
    (weights_file, tensors, metadata): (
        &str,
        &BTreeMap<String, HostTensor>,
        Option<std::collections::HashMap<String, String>>,
    ),
    (config_file, config): (&str, &impl Serialize),
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.display().to_string(),
        source,
    })?;
    write_safetensors(&dir.join(weights_file), tensors, metadata)?;
    let json = serde_json::to_string_pretty(config).map_err(|e| Error::Format {
        path: dir.join(config_file).display().to_string(),
        message: e.to_string(),
    })?;
    write_atomically(&dir.join(config_file), json.as_bytes())
}

//! PEFT adapter files: round trips, and bad files each refused with one clear
//! line naming the file and the tensor or field at fault. Atomic writes.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{fixture, temp_dir};

use dora_wgpu::io::{
    read_safetensors, write_safetensors, AdapterConfig, AdapterWeights, HostTensor, ModuleAdapter,
    TargetModules,
};

/// A copy of PEFT's fixture adapter with its tensor file replaced by `tensors`.
fn adapter_with(
    name: &str,
    tensors: &BTreeMap<String, HostTensor>,
    config: Option<&str>,
) -> PathBuf {
    let dir = temp_dir(name);
    let cfg = config.map(str::to_string).unwrap_or_else(|| {
        std::fs::read_to_string(fixture("peft_adapter/adapter_config.json")).unwrap()
    });
    std::fs::write(dir.join("adapter_config.json"), cfg).unwrap();
    write_safetensors(&dir.join("adapter_model.safetensors"), tensors, None).unwrap();
    dir
}

fn peft_tensors() -> BTreeMap<String, HostTensor> {
    read_safetensors(&fixture("peft_adapter/adapter_model.safetensors")).unwrap()
}

fn load_error(dir: &Path) -> String {
    let msg = AdapterWeights::load(dir).unwrap_err().to_string();
    assert_eq!(msg.lines().count(), 1, "{msg}");
    msg
}

const Q_A: &str = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
const Q_M: &str = "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector";

#[test]
fn truncated_safetensors_is_refused_with_the_file_name() {
    let dir = temp_dir("truncated");
    std::fs::copy(
        fixture("peft_adapter/adapter_config.json"),
        dir.join("adapter_config.json"),
    )
    .unwrap();
    let bytes = std::fs::read(fixture("peft_adapter/adapter_model.safetensors")).unwrap();
    std::fs::write(
        dir.join("adapter_model.safetensors"),
        &bytes[..bytes.len() - 100],
    )
    .unwrap();
    let msg = load_error(&dir);
    assert!(
        msg.contains("adapter_model.safetensors") && msg.contains("not a valid safetensors file"),
        "{msg}"
    );
    std::fs::write(dir.join("adapter_model.safetensors"), b"garbage").unwrap();
    assert!(load_error(&dir).contains("not a valid safetensors file"));
}

#[test]
fn wrong_dtype_is_refused_naming_the_tensor() {
    // A hand-built file with an i64 tensor: safetensors accepts it, we do not.
    let dir = temp_dir("dtype");
    std::fs::copy(
        fixture("peft_adapter/adapter_config.json"),
        dir.join("adapter_config.json"),
    )
    .unwrap();
    let data = vec![0u8; 8 * 4 * 24];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![4, 24], &data).unwrap();
    let bytes = safetensors::serialize([(Q_A, view)], None).unwrap();
    std::fs::write(dir.join("adapter_model.safetensors"), bytes).unwrap();
    let msg = load_error(&dir);
    assert!(
        msg.contains(Q_A) && msg.contains("I64") && msg.contains("expected F32"),
        "{msg}"
    );
}

#[test]
fn missing_magnitude_with_use_dora_is_refused() {
    let mut t = peft_tensors();
    t.remove(Q_M);
    let msg = load_error(&adapter_with("no-magnitude", &t, None));
    assert!(
        msg.contains("use_dora is true") && msg.contains(Q_M),
        "{msg}"
    );
}

#[test]
fn inconsistent_or_unknown_tensors_are_refused() {
    let mut t = peft_tensors();
    t.insert(
        Q_A.to_string(),
        HostTensor::from_f32(&[0.0; 5 * 24], &[5, 24]),
    );
    let msg = load_error(&adapter_with("rank-mismatch", &t, None));
    assert!(
        msg.contains("ranks differ") && msg.contains("[5, 24]") && msg.contains("[16, 4]"),
        "{msg}"
    );

    let mut t = peft_tensors();
    t.insert(Q_M.to_string(), HostTensor::from_f32(&[1.0; 3], &[3]));
    let msg = load_error(&adapter_with("magnitude-shape", &t, None));
    assert!(
        msg.contains(Q_M) && msg.contains("[3]") && msg.contains("[16]"),
        "{msg}"
    );

    let mut t = peft_tensors();
    t.insert(
        "base_model.model.model.layers.0.self_attn.q_proj.lora_embedding_A".into(),
        HostTensor::from_f32(&[0.0], &[1]),
    );
    let msg = load_error(&adapter_with("unknown-key", &t, None));
    assert!(msg.contains("lora_embedding_A"), "{msg}");
}

#[test]
fn a_shape_that_does_not_fit_the_model_names_the_tensor_and_both_shapes() {
    let adapter = AdapterWeights::load(&fixture("peft_adapter")).unwrap();
    let io = read_safetensors(&fixture("peft_adapter_io.safetensors")).unwrap();
    let mut shapes: BTreeMap<String, (usize, usize)> = io
        .iter()
        .filter(|(k, _)| k.ends_with(".weight") && !k.starts_with("merged."))
        .map(|(k, t)| {
            (
                k.trim_end_matches(".weight").to_string(),
                (t.shape[0], t.shape[1]),
            )
        })
        .collect();
    adapter.check_shapes(&shapes).unwrap();
    // The same module with in = 30 instead of 24: an adapter for another model.
    shapes.insert("model.layers.0.self_attn.q_proj".into(), (16, 30));
    let msg = adapter.check_shapes(&shapes).unwrap_err().to_string();
    assert!(
        msg.contains(Q_A)
            && msg.contains("[4, 24]")
            && msg.contains("[16, 30]")
            && msg.contains("[4, 30]"),
        "{msg}"
    );
    shapes.remove("model.layers.0.self_attn.q_proj");
    let msg = adapter.check_shapes(&shapes).unwrap_err().to_string();
    assert!(
        msg.contains("model.layers.0.self_attn.q_proj")
            && msg.contains("does not exist in the model"),
        "{msg}"
    );
}

#[test]
fn bad_configs_are_refused_naming_the_field() {
    let t = peft_tensors();
    let msg = load_error(&adapter_with("bad-json", &t, Some("{ not json")));
    assert!(
        msg.contains("adapter_config.json") && msg.contains("invalid adapter config"),
        "{msg}"
    );
    let msg = load_error(&adapter_with("no-r", &t, Some(r#"{"lora_alpha": 8}"#)));
    assert!(msg.contains("missing field `r`"), "{msg}");
    let msg = load_error(&adapter_with(
        "conv1d",
        &t,
        Some(r#"{"r": 4, "lora_alpha": 8, "use_dora": true, "fan_in_fan_out": true}"#),
    ));
    assert!(msg.contains("fan_in_fan_out"), "{msg}");
    let msg = load_error(&adapter_with(
        "prefix",
        &t,
        Some(r#"{"r": 4, "lora_alpha": 8, "peft_type": "PREFIX_TUNING"}"#),
    ));
    assert!(msg.contains("PREFIX_TUNING"), "{msg}");
    let missing = temp_dir("missing");
    let msg = load_error(&missing);
    assert!(msg.contains("adapter_config.json"), "{msg}");
}

#[test]
fn plain_lora_adapters_load_and_configs_round_trip() {
    // PEFT's own file, minus the magnitudes and with use_dora off: a LoRA adapter.
    let t: BTreeMap<_, _> = peft_tensors()
        .into_iter()
        .filter(|(k, _)| !k.ends_with("magnitude_vector"))
        .collect();
    let cfg = std::fs::read_to_string(fixture("peft_adapter/adapter_config.json"))
        .unwrap()
        .replace("\"use_dora\": true", "\"use_dora\": false");
    let a = AdapterWeights::load(&adapter_with("lora", &t, Some(&cfg))).unwrap();
    assert!(!a.config.use_dora);
    assert!(a.modules.values().all(|m| m.magnitude.is_none()));
    // PEFT's extra fields survive a save and load.
    let peft = AdapterWeights::load(&fixture("peft_adapter")).unwrap();
    assert!(peft.config.other.contains_key("peft_version"));
    let dir = temp_dir("roundtrip");
    peft.save(&dir).unwrap();
    assert_eq!(AdapterWeights::load(&dir).unwrap(), peft);
    // target_modules may be a single string: a regex the whole path must match, as in PEFT.
    let one: AdapterConfig =
        serde_json::from_str(r#"{"r": 2, "lora_alpha": 4, "target_modules": ".*\\.q_proj"}"#)
            .unwrap();
    assert_eq!(
        one.target_modules,
        TargetModules::Regex(r".*\.q_proj".into())
    );
    assert!(
        one.targets("model.layers.3.self_attn.q_proj")
            && !one.targets("model.layers.3.self_attn.k_proj")
    );
    let bare: AdapterConfig =
        serde_json::from_str(r#"{"r": 2, "lora_alpha": 4, "target_modules": "q_proj"}"#).unwrap();
    assert!(
        !bare.targets("model.layers.3.self_attn.q_proj"),
        "a string is a full-match regex, not a suffix"
    );
    // Per-module overrides.
    let mut c = AdapterConfig::new(8, 16.0, true, &["q_proj"]);
    c.alpha_pattern.insert("q_proj".into(), 32.0);
    assert_eq!(c.scaling("model.layers.0.self_attn.q_proj"), 4.0);
    c.use_rslora = true;
    assert_eq!(
        c.scaling("model.layers.0.self_attn.k_proj"),
        16.0 / 8f32.sqrt()
    );
}

#[test]
fn an_interrupted_save_leaves_the_previous_adapter_loadable() {
    let dir = temp_dir("atomic");
    let good = AdapterWeights::load(&fixture("peft_adapter")).unwrap();
    good.save(&dir).unwrap();
    // A crash mid-write leaves at most a stray temporary file; the real files are untouched.
    std::fs::write(
        dir.join(".adapter_model.safetensors.tmp-999"),
        b"half a file",
    )
    .unwrap();
    assert_eq!(AdapterWeights::load(&dir).unwrap(), good);
    // A save that fails (here: a tensor whose bytes do not fill its shape)
    // fails with an error naming the file, and the previous adapter still loads unchanged.
    let mut broken = good.clone();
    broken
        .modules
        .values_mut()
        .next()
        .unwrap()
        .lora_b
        .bytes
        .pop();
    let err = broken.save(&dir).unwrap_err().to_string();
    assert!(err.contains("adapter_model.safetensors"), "{err}");
    assert_eq!(AdapterWeights::load(&dir).unwrap(), good);
    let mut changed = good.clone();
    let m: &mut ModuleAdapter = changed.modules.values_mut().next().unwrap();
    m.lora_b = HostTensor::from_f32(&vec![1.0; m.lora_b.numel()], &m.lora_b.shape.clone());
    changed.save(&dir).unwrap();
    assert_eq!(AdapterWeights::load(&dir).unwrap(), changed);
}

#[test]
fn streamed_safetensors_read_back_as_written() {
    use dora_wgpu::io::{write_safetensors_streamed, TensorEntry};
    use std::borrow::Cow;
    let dir = temp_dir("streamed");
    let path = dir.join("t.safetensors");
    let bf16: Vec<u8> = [1.0f32, -2.5, 3.25]
        .iter()
        .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
        .collect();
    let tensors: BTreeMap<String, HostTensor> = [
        (
            "a".to_string(),
            HostTensor::from_f32(&[1.0, 2.0, 3.0, 4.0], &[2, 2]),
        ),
        (
            "b".to_string(),
            HostTensor {
                dtype: dora_wgpu::DType::BF16,
                shape: vec![3],
                bytes: bf16,
            },
        ),
    ]
    .into();
    let entries: Vec<TensorEntry> = tensors
        .iter()
        .map(|(name, t)| TensorEntry {
            name: name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
        })
        .collect();
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    write_safetensors_streamed(&path, &entries, &metadata, |e| {
        Ok(Cow::Borrowed(&tensors[&e.name].bytes[..]))
    })
    .unwrap();
    assert_eq!(read_safetensors(&path).unwrap(), tensors);
    // Bytes that do not fill the shape: an error naming the tensor, the old file kept.
    let before = std::fs::read(&path).unwrap();
    let err =
        write_safetensors_streamed(&path, &entries, &metadata, |_| Ok(Cow::Owned(vec![0u8; 3])))
            .unwrap_err()
            .to_string();
    assert!(err.contains("tensor a: 3 bytes for shape [2, 2]"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        1,
        "no temporary left"
    );
}

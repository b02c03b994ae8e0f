//! RoPE variants against transformers (tests/fixtures/rope, written by
//! tools/gen_family_fixtures.py): for every case, config.json in both layouts
//! (transformers 5's `rope_parameters`, the older `rope_scaling` +
//! `rope_theta`) must give transformers' inverse frequencies, attention
//! scaling and cos/sin tables at lengths where the scaling bites.

mod common;

use common::*;
use dora_wgpu::io::hf::{ModelConfig, RopeConfig};
use dora_wgpu::io::read_safetensors;
use dora_wgpu::ops::RopeTables;
use serde_json::Value;

/// Partial rotary is Phi-3's alone: on a Llama config (whose transformers
/// code ignores it) it is refused by name.
const REFUSED: [(&str, &str); 1] = [(
    "partial_default",
    "partial_rotary_factor 0.5 is not supported for model_type llama",
)];

fn rope_of<'c>(config: &'c ModelConfig, case: &Value) -> &'c RopeConfig {
    match case["layer_type"].as_str() {
        Some("sliding_attention") => config.sliding_rope.as_ref().expect("a sliding rope"),
        _ => &config.rope,
    }
}

/// A Gemma 3 config in the layout Gemma 3 checkpoints ship (pre
/// transformers 5): top-level `rope_theta` for full attention with
/// `rope_scaling`, and `rope_local_base_freq` for the sliding layers.
fn gemma_old_layout(config: &Value) -> Value {
    let mut c = config.as_object().unwrap().clone();
    let rope = c.remove("rope_parameters").unwrap();
    let (full, sliding) = (&rope["full_attention"], &rope["sliding_attention"]);
    assert_eq!(sliding["rope_type"], "default");
    c.insert("rope_theta".into(), full["rope_theta"].clone());
    c.insert("rope_local_base_freq".into(), sliding["rope_theta"].clone());
    let mut scaling = full.as_object().unwrap().clone();
    scaling.remove("rope_theta");
    c.insert("rope_scaling".into(), scaling.into());
    c.into()
}

#[test]
fn rope_variants_match_transformers_in_both_config_layouts() {
    let fixture_dir = fixture("rope");
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture_dir.join("rope.json")).unwrap())
            .unwrap();
    let tensors = read_safetensors(&fixture_dir.join("rope.safetensors")).unwrap();
    let tensor = |key: &Value| tensors[key.as_str().unwrap()].to_f32();
    let dir = temp_dir("rope-configs");
    let mut checked = 0;
    for (name, case) in r["cases"].as_object().unwrap() {
        for layout in ["config_json", "config_json_old"] {
            let config = match &case[layout] {
                Value::Null => gemma_old_layout(&case["config_json"]),
                c => c.clone(),
            };
            if let Some((_, why)) = REFUSED.iter().find(|(n, _)| n == name) {
                let mut llama = config.clone();
                llama["model_type"] = "llama".into();
                std::fs::write(dir.join("config.json"), llama.to_string()).unwrap();
                one_line_error(ModelConfig::load(&dir), &["config.json", why]);
            }
            std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
            let config = ModelConfig::load(&dir).unwrap_or_else(|e| panic!("{name} {layout}: {e}"));
            let rope = rope_of(&config, case);
            let dim = case["rotary_dim"].as_u64().unwrap() as usize;
            assert_eq!(dim, config.rotary_dim, "{name}: rotated dimensions");
            let inv = rope.inv_freq(dim);
            let want = tensor(&case["inv_freq"]);
            let e = rel_err(&inv, &want);
            assert!(e < 1e-6, "{name} {layout}: inv_freq off by {e:e}");
            let scaling = case["attention_scaling"].as_f64().unwrap();
            assert!(
                (rope.attention_scaling() as f64 - scaling).abs() < 1e-6,
                "{name} {layout}: attention scaling {} vs {scaling}",
                rope.attention_scaling()
            );
            let long = rope.long_inv_freq(dim);
            for (run, fwd) in case["forward"].as_object().unwrap() {
                let positions = fwd["positions"].as_u64().unwrap() as usize;
                // Dynamic NTK changes the frequencies only past
                // max_position_embeddings, which the model refuses to reach.
                if positions > config.max_position_embeddings {
                    assert!(fwd["inv_freq_changed"].as_bool().unwrap(), "{name} {run}");
                    continue;
                }
                // LongRoPE takes its long factors for a forward that ends past
                // the original length, as the model does.
                let inv = match &long {
                    Some((from, long)) if positions > *from => long,
                    _ => &inv,
                };
                let changed = fwd["inv_freq_changed"].as_bool().unwrap();
                assert_eq!(changed, *inv != rope.inv_freq(dim), "{name} {run}");
                let e = rel_err(inv, &tensor(&fwd["inv_freq_after"]));
                assert!(e < 1e-6, "{name} {layout} {run}: inv_freq off by {e:e}");
                let tables = RopeTables::from_inv_freq(
                    gpu(),
                    inv,
                    rope.attention_scaling(),
                    config.head_dim,
                    positions,
                )
                .unwrap();
                for (got, key) in [(&tables.cos, "cos"), (&tables.sin, "sin")] {
                    // transformers' tables are cat(freqs, freqs): compare the first half.
                    let want: Vec<f64> = tensor(&fwd[key])
                        .chunks(dim)
                        .flat_map(|row| row[..dim / 2].iter().map(|&v| v as f64))
                        .collect();
                    assert_close(
                        &format!("{name} {layout} {run} {key}"),
                        &got.to_vec_f32().unwrap(),
                        &want,
                        0.0,
                        2e-6,
                    );
                }
                checked += 1;
            }
        }
    }
    // 13 cases × 2 layouts, 2 runs each (6 for longrope), dynamic only its short ones.
    assert!(checked >= 56, "only {checked} tables checked");
    std::fs::remove_dir_all(&dir).ok();
}

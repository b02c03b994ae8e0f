//! `convert`: PEFT ↔ MLX-LM adapters. Round trips are exact, and the MLX-LM
//! files, fused with MLX-LM's own formula (in f64 here), give the weights
//! PEFT's `merge_and_unload()` gave (tests/fixtures/models/families.*).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{fixture, run_cli, temp_dir};
use dora_wgpu::io::{read_safetensors, write_safetensors, AdapterWeights, HostTensor};

fn model(name: &str) -> PathBuf {
    fixture(&format!("models/{name}"))
}

fn convert(
    from: &str,
    to: &str,
    adapter: &Path,
    out: &Path,
    model: Option<&Path>,
) -> (bool, String) {
    let mut args: Vec<std::ffi::OsString> = vec![
        "convert".into(),
        "--from".into(),
        from.into(),
        "--to".into(),
        to.into(),
    ];
    args.extend([
        "--adapter".into(),
        adapter.into(),
        "--out".into(),
        out.into(),
    ]);
    if let Some(m) = model {
        args.extend(["--model".into(), m.into()]);
    }
    let (ok, stdout, stderr) = run_cli(&args);
    (ok, if ok { stdout } else { stderr })
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `t` ([rows, cols]) transposed, as f32.
fn transposed(t: &HostTensor) -> Vec<f32> {
    let (rows, cols) = (t.shape[0], t.shape[1]);
    let v = t.to_f32();
    (0..cols)
        .flat_map(|j| (0..rows).map(move |i| (i, j)))
        .map(|(i, j)| v[i * cols + j])
        .collect()
}

#[test]
fn peft_to_mlx_and_back_is_exact() {
    for (base, layers) in [("tiny-llama3", 2), ("tiny-gemma3", 3), ("tiny-phi3", 2)] {
        let dir = temp_dir(&format!("convert-{base}"));
        let peft_dir = model(&format!("{base}-dora"));
        let (mlx, back) = (dir.join("mlx"), dir.join("back"));
        let (ok, msg) = convert("peft", "mlx", &peft_dir, &mlx, Some(&model(base)));
        assert!(ok, "{base}: {msg}");

        // MLX-LM's layout: lora_a [in, r] = lora_Aᵀ, lora_b [r, out] = lora_Bᵀ, m.
        let original = AdapterWeights::load(&peft_dir).unwrap();
        let tensors = read_safetensors(&mlx.join("adapters.safetensors")).unwrap();
        assert_eq!(tensors.len(), 3 * original.modules.len(), "{base}");
        for (module, m) in &original.modules {
            let a = &tensors[&format!("{module}.lora_a")];
            let b = &tensors[&format!("{module}.lora_b")];
            assert_eq!(a.shape, [m.lora_a.shape[1], m.lora_a.shape[0]], "{module}");
            assert_eq!(b.shape, [m.lora_b.shape[1], m.lora_b.shape[0]], "{module}");
            assert_eq!(a.to_f32(), transposed(&m.lora_a), "{module}");
            assert_eq!(b.to_f32(), transposed(&m.lora_b), "{module}");
            assert_eq!(
                tensors[&format!("{module}.m")].to_f32(),
                m.magnitude.as_ref().unwrap().to_f32()
            );
        }
        let config = json(&mlx.join("adapter_config.json"));
        let (r, alpha) = (original.config.r, original.config.lora_alpha);
        assert_eq!(config["fine_tune_type"], "dora");
        assert_eq!(config["num_layers"], layers);
        assert_eq!(config["lora_parameters"]["rank"], r);
        assert_eq!(
            config["lora_parameters"]["scale"].as_f64().unwrap(),
            alpha as f64 / r as f64
        );
        let keys = config["lora_parameters"]["keys"].as_array().unwrap();
        let per_layer = original.modules.len() / layers;
        assert_eq!(keys.len(), per_layer, "{base}: {keys:?}");

        let (ok, msg) = convert("mlx", "peft", &mlx, &back, Some(&model(base)));
        assert!(ok, "{base}: {msg}");
        let again = AdapterWeights::load(&back).unwrap();
        assert_eq!(
            again.modules, original.modules,
            "{base}: tensors changed in the round trip"
        );
        assert_eq!(
            (
                again.config.r,
                again.config.lora_alpha,
                again.config.use_dora
            ),
            (r, alpha, true)
        );
        assert_eq!(again.config.lora_dropout, original.config.lora_dropout);
        // It still selects exactly the modules the original adapted (checked by the model load).
        let (ok, _, stderr) = run_cli(&[
            "eval".as_ref(),
            "--model".as_ref(),
            model(base).as_os_str(),
            "--adapter".as_ref(),
            back.as_os_str(),
            "--data".as_ref(),
            fixture("data/eval.jsonl").as_os_str(),
        ]);
        assert!(ok, "{base}: the converted adapter does not load: {stderr}");
    }
}

#[test]
fn mlx_files_fuse_to_peft_merge_and_unload() {
    let dir = temp_dir("convert-fuse");
    let mlx = dir.join("mlx");
    let (ok, msg) = convert("peft", "mlx", &model("tiny-llama3-dora"), &mlx, None);
    assert!(ok, "{msg}");
    let config = json(&mlx.join("adapter_config.json"));
    let scale = config["lora_parameters"]["scale"].as_f64().unwrap();
    let adapter = read_safetensors(&mlx.join("adapters.safetensors")).unwrap();
    let base = read_safetensors(&model("tiny-llama3").join("model.safetensors")).unwrap();
    let merged = read_safetensors(&fixture("models/families.safetensors")).unwrap();
    let mut checked = 0;
    for (key, lora_a) in &adapter {
        let Some(module) = key.strip_suffix(".lora_a") else {
            continue;
        };
        // MLX-LM's DoRALinear.fuse: W' = m / ‖W + s·lora_bᵀ·lora_aᵀ‖ · (W + s·lora_bᵀ·lora_aᵀ), per row.
        let w = &base[&format!("{module}.weight")];
        let (out_f, in_f) = (w.shape[0], w.shape[1]);
        let (a, b) = (
            lora_a.to_f32(),
            adapter[&format!("{module}.lora_b")].to_f32(),
        );
        let m = adapter[&format!("{module}.m")].to_f32();
        let r = lora_a.shape[1];
        let w = w.to_f32();
        let mut fused = vec![0f64; out_f * in_f];
        for o in 0..out_f {
            let row: Vec<f64> = (0..in_f)
                .map(|i| {
                    w[o * in_f + i] as f64
                        + scale
                            * (0..r)
                                .map(|k| b[k * out_f + o] as f64 * a[i * r + k] as f64)
                                .sum::<f64>()
                })
                .collect();
            let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
            for i in 0..in_f {
                fused[o * in_f + i] = m[o] as f64 / norm * row[i];
            }
        }
        let want = merged[&format!("merged.tiny-llama3.{module}.weight")].to_f32();
        let err = fused
            .iter()
            .zip(&want)
            .map(|(x, y)| (x - *y as f64).abs())
            .fold(0.0, f64::max);
        let scale_of = want.iter().map(|v| v.abs() as f64).fold(0.0, f64::max);
        assert!(
            err < 1e-5 * scale_of,
            "{module}: MLX-LM's fuse differs from PEFT's merge by {err:e}"
        );
        checked += 1;
    }
    assert_eq!(checked, 14, "2 layers × 7 projections");
}

/// A copy of tiny-llama3-dora holding only layer 1's modules, with `config` edits.
fn last_layer_adapter(
    dir: &Path,
    edit: impl Fn(&mut serde_json::Map<String, serde_json::Value>),
) -> PathBuf {
    let mut a = AdapterWeights::load(&model("tiny-llama3-dora")).unwrap();
    a.modules.retain(|m, _| m.starts_with("model.layers.1."));
    a.config
        .other
        .insert("layers_to_transform".into(), serde_json::json!([1]));
    edit(&mut a.config.other);
    let out = dir.join("peft-layer1");
    a.save(&out).unwrap();
    out
}

#[test]
fn some_layers_convert_counted_from_the_last() {
    let dir = temp_dir("convert-layers");
    let peft = last_layer_adapter(&dir, |_| {});
    let (ok, msg) = convert("peft", "mlx", &peft, &dir.join("x"), None);
    assert!(!ok && msg.contains("--model"), "{msg}");
    assert!(!dir.join("x").exists());
    let (ok, msg) = convert(
        "peft",
        "mlx",
        &peft,
        &dir.join("mlx"),
        Some(&model("tiny-llama3")),
    );
    assert!(ok, "{msg}");
    assert_eq!(json(&dir.join("mlx/adapter_config.json"))["num_layers"], 1);
    let (ok, msg) = convert("mlx", "peft", &dir.join("mlx"), &dir.join("back"), None);
    assert!(ok, "{msg}");
    let back = AdapterWeights::load(&dir.join("back")).unwrap();
    assert_eq!(
        back.config.other["layers_to_transform"],
        serde_json::json!([1])
    );
    assert_eq!(back.modules, AdapterWeights::load(&peft).unwrap().modules);
}

#[test]
fn what_cannot_map_is_refused_in_one_line_and_nothing_is_written() {
    let dir = temp_dir("convert-refuse");
    // Layer 0 of two is not "the last num_layers layers".
    let first = {
        let mut a = AdapterWeights::load(&model("tiny-llama3-dora")).unwrap();
        a.modules.retain(|m, _| m.starts_with("model.layers.0."));
        a.config
            .other
            .insert("layers_to_transform".into(), serde_json::json!([0]));
        let p = dir.join("peft-layer0");
        a.save(&p).unwrap();
        p
    };
    let ranked = {
        let mut a = AdapterWeights::load(&model("tiny-llama3-dora")).unwrap();
        a.config.rank_pattern = BTreeMap::from([("q_proj".to_string(), 4)]);
        let p = dir.join("peft-ranked");
        a.save(&p).unwrap();
        p
    };
    let (ok, _) = convert(
        "peft",
        "mlx",
        &model("tiny-llama3-dora"),
        &dir.join("mlx"),
        None,
    );
    assert!(ok);
    let full = dir.join("mlx-full");
    std::fs::create_dir_all(&full).unwrap();
    std::fs::copy(
        dir.join("mlx/adapters.safetensors"),
        full.join("adapters.safetensors"),
    )
    .unwrap();
    let mut c = json(&dir.join("mlx/adapter_config.json"));
    c["fine_tune_type"] = "full".into();
    std::fs::write(full.join("adapter_config.json"), c.to_string()).unwrap();
    let occupied = dir.join("occupied");
    std::fs::create_dir_all(&occupied).unwrap();
    std::fs::write(occupied.join("keep.txt"), "mine").unwrap();

    type Case<'a> = (
        &'a str,
        &'a str,
        &'a Path,
        &'a Path,
        Option<PathBuf>,
        &'a str,
    );
    // Layer 1 alone without layers_to_transform: PEFT would read it as every layer.
    let unlisted = {
        let mut a = AdapterWeights::load(&model("tiny-llama3-dora")).unwrap();
        a.modules.retain(|m, _| m.starts_with("model.layers.1."));
        let p = dir.join("peft-unlisted");
        a.save(&p).unwrap();
        p
    };
    // An MLX-LM adapter of layer 0 of two: MLX-LM's num_layers 1 means layer 1.
    let mlx_first = dir.join("mlx-first");
    std::fs::create_dir_all(&mlx_first).unwrap();
    let layer0: BTreeMap<String, HostTensor> =
        read_safetensors(&dir.join("mlx/adapters.safetensors"))
            .unwrap()
            .into_iter()
            .filter(|(k, _)| k.starts_with("model.layers.0."))
            .collect();
    write_safetensors(&mlx_first.join("adapters.safetensors"), &layer0, None).unwrap();
    let mut c1 = json(&dir.join("mlx/adapter_config.json"));
    c1["num_layers"] = 1.into();
    std::fs::write(mlx_first.join("adapter_config.json"), c1.to_string()).unwrap();

    let cases: [Case; 7] = [
        (
            "peft",
            "mlx",
            &first,
            &dir.join("o1"),
            Some(model("tiny-llama3")),
            "not the last",
        ),
        (
            "peft",
            "mlx",
            &ranked,
            &dir.join("o2"),
            None,
            "rank_pattern",
        ),
        ("mlx", "peft", &full, &dir.join("o3"), None, "full"),
        (
            "peft",
            "mlx",
            &model("tiny-llama3-dora"),
            &occupied,
            None,
            "not an empty directory",
        ),
        (
            "peft",
            "peft",
            &model("tiny-llama3-dora"),
            &dir.join("o5"),
            None,
            "nothing to convert",
        ),
        (
            "peft",
            "mlx",
            &unlisted,
            &dir.join("o6"),
            None,
            "layer 0 has no adapter tensors",
        ),
        (
            "mlx",
            "peft",
            &mlx_first,
            &dir.join("o7"),
            Some(model("tiny-llama3")),
            "do not end at the model's last layer",
        ),
    ];
    for (from, to, adapter, out, m, needle) in cases {
        let (ok, msg) = convert(from, to, adapter, out, m.as_deref());
        assert!(!ok, "{needle}: accepted");
        assert!(
            msg.contains(needle) && msg.trim().lines().count() == 1,
            "{needle}: {msg}"
        );
    }
    for o in ["o1", "o2", "o3", "o5", "o6", "o7"] {
        assert!(!dir.join(o).exists(), "{o} was written");
    }
    assert_eq!(
        std::fs::read_to_string(occupied.join("keep.txt")).unwrap(),
        "mine"
    );
    assert_eq!(std::fs::read_dir(&occupied).unwrap().count(), 1);
}

//! The `dora-wgpu` binary end to end on the tiny fixture models: each
//! subcommand's output against transformers/PEFT, and bad inputs failing
//! with one line and a non-zero exit code.

mod common;

use std::path::{Path, PathBuf};

use common::{cli_fails_with as fails_with, run_cli as run, temp_dir};

use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn model(name: &str) -> String {
    fixtures().join("models").join(name).display().to_string()
}

fn reference() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("models/reference.json")).unwrap(),
    )
    .unwrap()
}

#[test]
fn eval_json_matches_transformers_with_and_without_adapter() {
    let r = reference();
    let data = fixtures().join("data/eval.jsonl").display().to_string();
    for m in ["tiny-llama", "tiny-qwen2"] {
        for (adapter, key) in [(None, "none"), (Some(format!("{m}-dora")), "dora")] {
            let dir = model(m);
            let mut args = vec!["eval", "--model", &dir, "--data", &data, "--json"];
            let adapter_dir = adapter.map(|a| model(&a));
            if let Some(a) = &adapter_dir {
                args.extend(["--adapter", a.as_str()]);
            }
            let (ok, out, err) = run(&args);
            assert!(ok, "{err}");
            let got: Value = serde_json::from_str(out.trim()).unwrap();
            let want = &r["eval_loss"][m][key];
            let (loss, want_loss) = (
                got["loss"].as_f64().unwrap(),
                want["loss"].as_f64().unwrap(),
            );
            assert!(
                (loss - want_loss).abs() < 1e-4 * want_loss,
                "{m} {key}: {loss} vs {want_loss}"
            );
            assert!(
                (got["ppl"].as_f64().unwrap() - want["ppl"].as_f64().unwrap()).abs()
                    < 1e-3 * want["ppl"].as_f64().unwrap()
            );
            assert_eq!(got["tokens"], want["tokens"]);
        }
    }
}

#[test]
fn greedy_generate_streams_transformers_continuation() {
    let r = reference();
    for m in ["tiny-llama", "tiny-qwen2"] {
        let g = &r["generate"][m]["dora"];
        let adapter = model(&format!("{m}-dora"));
        let dir = model(m);
        let n = g["generated_ids"].as_array().unwrap().len().to_string();
        let (ok, out, err) = run(&[
            "generate",
            "--model",
            &dir,
            "--adapter",
            &adapter,
            "--prompt",
            "Tell me about the fox.",
            "--chat",
            "--max-tokens",
            &n,
            "--temperature",
            "0",
        ]);
        assert!(ok, "{err}");
        let want = g["generated_text"].as_str().unwrap();
        assert_eq!(out.strip_suffix('\n').unwrap(), want, "{m}");
        assert!(err.contains("tokens/s"), "{err}");
    }
    // Sampling is reproducible with a seed.
    let dir = model("tiny-llama");
    let args = [
        "generate",
        "--model",
        &dir,
        "--prompt",
        "The fox",
        "--max-tokens",
        "8",
        "--temperature",
        "0.8",
        "--top-p",
        "0.9",
        "--seed",
        "3",
    ];
    assert_eq!(run(&args).1, run(&args).1);
}

#[test]
fn merge_writes_a_model_that_loads_and_matches_the_adapter() {
    let out = temp_dir("cli-merge");
    let out_s = out.display().to_string();
    let (ok, _, err) = run(&[
        "merge",
        "--model",
        &model("tiny-qwen2"),
        "--adapter",
        &model("tiny-qwen2-dora"),
        "--out",
        &out_s,
    ]);
    assert!(ok, "{err}");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "chat_template.jinja",
        "generation_config.json",
    ] {
        assert!(
            out.join(f).exists(),
            "{f} missing from the merged directory"
        );
    }
    // The merged model evaluates like base + adapter, within bf16 rounding of the merged weights.
    let data = fixtures().join("data/eval.jsonl").display().to_string();
    let eval = |args: &[&str]| -> f64 {
        let (ok, o, e) = run(args);
        assert!(ok, "{e}");
        serde_json::from_str::<Value>(o.trim()).unwrap()["loss"]
            .as_f64()
            .unwrap()
    };
    let merged = eval(&["eval", "--model", &out_s, "--data", &data, "--json"]);
    let adapted = eval(&[
        "eval",
        "--model",
        &model("tiny-qwen2"),
        "--adapter",
        &model("tiny-qwen2-dora"),
        "--data",
        &data,
        "--json",
    ]);
    assert!(
        (merged - adapted).abs() < 0.01 * adapted,
        "merged {merged} vs adapter {adapted}"
    );
    let weights = dora_wgpu::io::read_safetensors(&out.join("model.safetensors")).unwrap();
    assert_eq!(
        weights["model.layers.0.self_attn.q_proj.weight"].dtype,
        dora_wgpu::DType::BF16,
        "base dtype kept"
    );
}

#[test]
fn devices_lists_the_adapter_in_use() {
    let (ok, out, err) = run(&["devices"]);
    assert!(ok, "{err}");
    assert!(!out.trim().is_empty());
    // --json: each adapter's features and limits as wgpu itself reports them.
    let (ok, out, err) = run(&["devices", "--json"]);
    assert!(ok, "{err}");
    let reports: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapters =
        pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all().with_env()));
    assert_eq!(reports.len(), adapters.len(), "{out}");
    for (report, adapter) in reports.iter().zip(&adapters) {
        let (info, limits) = (adapter.get_info(), adapter.limits());
        assert_eq!(report["name"], info.name.as_str());
        assert_eq!(report["backend"], format!("{:?}", info.backend).as_str());
        assert_eq!(
            report["subgroups"],
            adapter.features().contains(wgpu::Features::SUBGROUP)
        );
        assert_eq!(
            report["max_compute_workgroup_storage_size"],
            limits.max_compute_workgroup_storage_size
        );
        assert_eq!(
            report["cooperative_matrix"],
            adapter
                .features()
                .contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
        );
        // Without f16 cooperative matrices (lavapipe, llvmpipe) the matmul
        // says why it cannot use them.
        let offered = adapter
            .features()
            .contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX | wgpu::Features::SHADER_F16);
        let matmul = report["cooperative_matmul"].as_str().unwrap();
        assert_eq!(!offered, matmul.starts_with("unavailable: "), "{matmul}");
    }
    let in_use = common::gpu().adapter_name();
    assert!(
        reports.iter().any(|r| r["name"] == in_use),
        "{in_use} missing from {out}"
    );
}

#[test]
fn bad_inputs_fail_with_one_line() {
    let data = fixtures().join("data/eval.jsonl").display().to_string();
    fails_with(
        &["eval", "--model", "/no/such/model", "--data", &data],
        &["/no/such/model/config.json"],
    );
    fails_with(&["eval", "--data", &data], &["--model"]);
    fails_with(&["frobnicate"], &["unknown command"]);
    fails_with(
        &[
            "eval",
            "--model",
            &model("tiny-llama"),
            "--data",
            &data,
            "--bogus",
        ],
        &["--bogus"],
    );

    let gpt2 = temp_dir("cli-gpt2");
    std::fs::write(
        gpt2.join("config.json"),
        r#"{"model_type": "gpt2", "hidden_size": 8}"#,
    )
    .unwrap();
    fails_with(
        &[
            "eval",
            "--model",
            &gpt2.display().to_string(),
            "--data",
            &data,
        ],
        &["model_type", "gpt2", "llama"],
    );

    // An adapter made for another model: tiny-llama's MLP is 160 wide, tiny-qwen2's 128.
    fails_with(
        &[
            "eval",
            "--model",
            &model("tiny-qwen2"),
            "--adapter",
            &model("tiny-llama-dora"),
            "--data",
            &data,
        ],
        &["lora_", "has shape", "expected"],
    );

    let bad = temp_dir("cli-jsonl").join("bad.jsonl");
    std::fs::write(&bad, "{\"text\": \"fine\"}\n\n{\"text\": oops}\n").unwrap();
    fails_with(
        &[
            "eval",
            "--model",
            &model("tiny-llama"),
            "--data",
            &bad.display().to_string(),
        ],
        &["bad.jsonl:3", "invalid JSON"],
    );
    std::fs::write(&bad, "{\"text\": \"fine\"}\n{\"question\": \"no\"}\n").unwrap();
    fails_with(
        &[
            "eval",
            "--model",
            &model("tiny-llama"),
            "--data",
            &bad.display().to_string(),
        ],
        &["bad.jsonl:2", "\"text\""],
    );
    fails_with(
        &[
            "generate",
            "--model",
            &model("tiny-llama"),
            "--prompt",
            "x",
            "--top-p",
            "2",
        ],
        &["top_p"],
    );
    fails_with(
        &[
            "generate",
            "--model",
            &model("tiny-llama"),
            "--prompt",
            "x",
            "--max-tokens",
            "many",
        ],
        &["--max-tokens"],
    );
}

/// Pulls the numbers out of `step N: val loss X` lines.
fn val_losses(stdout: &str) -> Vec<(usize, f64)> {
    stdout
        .lines()
        .filter_map(|l| {
            let (step, loss) = l.strip_prefix("step ")?.split_once(": val loss ")?;
            Some((step.parse().ok()?, loss.trim().parse().ok()?))
        })
        .collect()
}

/// The README's first command, shortened: the embedded default model and data,
/// validation loss falling, samples before and after, a PEFT adapter and
/// metrics on disk; then `--resume` continues from the last checkpoint.
#[test]
fn train_with_no_model_runs_the_embedded_default_and_resumes() {
    let dir = temp_dir("cli-train");
    let out = dir.join("adapter");
    let out_s = out.display().to_string();
    let (ok, stdout, stderr) = run(&[
        "train",
        "--adapter-path",
        &out_s,
        "--iters",
        "8",
        "--steps-per-eval",
        "4",
        "--save-every",
        "4",
    ]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("(embedded default)"), "{stdout}");
    assert!(
        stdout.contains("before: ") && stdout.contains("after: "),
        "{stdout}"
    );
    let vals = val_losses(&stdout);
    assert_eq!(
        vals.iter().map(|v| v.0).collect::<Vec<_>>(),
        vec![0, 4, 8],
        "{stdout}"
    );
    assert!(
        vals[2].1 < 0.8 * vals[0].1,
        "validation loss should fall: {vals:?}"
    );
    assert!(stdout.contains("done: 8 steps"), "{stdout}");
    assert!(stderr.contains("step 8/8"), "progress line: {stderr}");
    // A PEFT adapter at the top, checkpoints below, one metrics line per step and evaluation.
    let adapter = dora_wgpu::io::AdapterWeights::load(&out).unwrap();
    assert!(adapter.config.use_dora && adapter.config.r == 8 && adapter.config.lora_alpha == 16.0);
    assert_eq!(adapter.modules.len(), 4 * 7, "7 projections × 4 layers");
    assert!(
        out.join("checkpoints/step-000004").is_dir()
            && out.join("checkpoints/step-000008").is_dir()
    );
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 8 + 3);
    // loss.svg/png: 8 training points (and their average) and 3 validation points.
    let svg = std::fs::read_to_string(out.join("loss.svg")).unwrap();
    for (label, n) in [("train", 8), ("validation", 3)] {
        let want = format!("data-label=\"{label}\" data-points=\"{n}\"");
        assert!(svg.contains(&want), "loss.svg lacks {want}");
    }
    let png = std::fs::read(out.join("loss.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "loss.png is a PNG");

    let (ok, stdout, stderr) = run(&[
        "train",
        "--adapter-path",
        &out_s,
        "--resume",
        "--iters",
        "10",
        "--steps-per-eval",
        "0",
    ]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("(step 8)"), "{stdout}");
    assert!(stdout.contains("done: 2 steps"), "{stdout}");
    assert!(out.join("checkpoints/step-000010").is_dir());
    // The plot keeps the steps from before the resume.
    let svg = std::fs::read_to_string(out.join("loss.svg")).unwrap();
    assert!(
        svg.contains("data-label=\"train\" data-points=\"10\""),
        "resumed plot"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn train_rejects_bad_options_with_one_line() {
    let dir = temp_dir("cli-train-bad");
    let d = dir.display().to_string();
    fails_with(&["train", "--method", "qlora"], &["--method", "qlora"]);
    fails_with(&["train", "--rank", "0"], &["--rank"]);
    fails_with(&["train", "--targets", "q_proj,wq"], &["wq"]);
    fails_with(&["train", "--model", &model("tiny-llama")], &["--data"]);
    fails_with(
        &["train", "--adapter-path", &d, "--resume"],
        &["--resume", "no checkpoint"],
    );
    // A data file with a bad line: named with its line number.
    let data = common::data_dir_with(&dir, "{\"text\": \"fine\"}\n{\"txet\": \"typo\"}\n");
    fails_with(
        &[
            "train",
            "--model",
            &model("tiny-llama"),
            "--data",
            &data.display().to_string(),
            "--adapter-path",
            &d,
        ],
        &["train.jsonl:2"],
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn help_lists_every_option_with_its_default() {
    let (ok, out, err) = run(&["train", "--help"]);
    assert!(ok, "{err}");
    let line = |name: &str| -> String {
        let found = out.lines().find(|l| l.trim_start().starts_with(name));
        found.unwrap_or_else(|| panic!("no {name} in {out}")).into()
    };
    assert!(line("--rank ").contains("[default: 8]"), "{out}");
    assert!(line("--alpha ").contains("[default: 16]"), "{out}");
    assert!(
        line("--iters ").contains("[default: 1000; embedded demo: 80]"),
        "{out}"
    );
    assert!(line("--lr ").contains("[default: 2e-4"), "{out}");
    // Enumerated values: the library's names, parsed with its FromStr.
    assert!(
        line("--method ").contains("[default: dora] [possible values: dora, lora]"),
        "{out}"
    );
    assert!(
        line("--lr-schedule ").contains("[possible values: constant, cosine]"),
        "{out}"
    );
    for option in [
        "--adapter-path",
        "--resume",
        "--overwrite",
        "--grad-checkpoint",
    ] {
        line(option);
    }

    let (ok, out, err) = run(&["eval", "-h"]);
    assert!(ok, "{err}");
    for option in [
        "--model <DIR>",
        "--adapter <DIR>",
        "--data <FILE>",
        "--json",
    ] {
        assert!(out.contains(option), "{out}");
    }
    let (ok, out, err) = run(&["generate", "--help"]);
    assert!(ok, "{err}");
    assert!(out.contains("--max-tokens <N>"), "{out}");
    assert!(out.contains("[default: 256]"), "{out}");
    // The overview, with no subcommand too.
    for args in [&["--help"][..], &[]] {
        let (ok, out, err) = run(args);
        assert!(ok, "{err}");
        for command in [
            "devices",
            "eval",
            "generate",
            "merge",
            "train",
            "analyze",
            "completions",
        ] {
            assert!(out.contains(command), "{out}");
        }
    }
}

#[test]
fn version_and_completions() {
    for flag in ["-V", "--version"] {
        let (ok, out, err) = run(&[flag]);
        assert!(ok, "{err}");
        assert_eq!(
            out.trim(),
            format!("dora-wgpu {}", env!("CARGO_PKG_VERSION"))
        );
    }
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let (ok, out, err) = run(&["completions", shell]);
        assert!(ok, "{shell}: {err}");
        assert!(out.contains("dora-wgpu"), "{shell}: {out}");
        assert!(
            out.contains("lr-schedule"),
            "{shell} completes train's options"
        );
    }
    fails_with(&["completions", "tcsh"], &["tcsh", "bash"]);
}

#[test]
fn clap_errors_are_one_line_with_the_reason() {
    fails_with(
        &["train", "--bogus"],
        &["error: unexpected argument '--bogus' found; see 'dora-wgpu train --help'"],
    );
    fails_with(&["train", "--rnak", "4"], &["'--rnak'", "'--rank'"]);
    fails_with(&["eval"], &["required", "--model <DIR>", "--data <FILE>"]);
    fails_with(&["train", "--iters"], &["--iters", "value is required"]);
    fails_with(&["train", "--iters=x"], &["--iters", "'x'"]);
    fails_with(&["merg"], &["unknown command 'merg'", "'merge'"]);
    // Negative numbers reach the config's range checks.
    fails_with(&["train", "--alpha", "-1"], &["--alpha", "positive"]);
}

/// `--opt=value` and `--opt value` alike, enumerated values included, on the
/// tiny model: the adapter written says so.
#[test]
fn train_takes_option_equals_value() {
    let dir = temp_dir("cli-equals");
    let data = common::data_dir_with(
        &dir,
        &std::fs::read_to_string(fixtures().join("data/eval.jsonl")).unwrap(),
    );
    let out = dir.join("adapter");
    let (ok, stdout, stderr) = run(&[
        "train",
        "--model",
        &model("tiny-llama"),
        &format!("--data={}", data.display()),
        "--rank=4",
        "--method=lora",
        "--lr-schedule",
        "cosine",
        "--iters",
        "1",
        "--steps-per-eval=0",
        "--adapter-path",
        &out.display().to_string(),
    ]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("done: 1 steps"), "{stdout}");
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["r"], 4, "{config}");
    assert_eq!(config["use_dora"], false, "{config}");
    std::fs::remove_dir_all(&dir).ok();
}

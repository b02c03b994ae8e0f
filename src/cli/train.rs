//! `dora-wgpu train`: options → [`TrainConfig`], data directory → examples,
//! a progress line, validation lines, samples before and after, Ctrl-C → a
//! checkpoint and a clean exit.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use dora_wgpu::data::{check_examples_vocabulary, read_jsonl, Example};
use dora_wgpu::nn::Llama;
use dora_wgpu::tasks::{self, Sampling};
use dora_wgpu::train::{checkpoint, Event, ProgressLine, Stop, TrainConfig, Trainer};
use dora_wgpu::{ChatMessage, Error, Gpu, Result, Tokenizer};

use crate::Args;

const FLAGS: &[&str] = &["rslora", "resume", "overwrite", "grad-checkpoint"];
const OPTIONS: &[&str] = &[
    "model",
    "data",
    "adapter-path",
    "method",
    "rank",
    "alpha",
    "dropout",
    "targets",
    "num-layers",
    "iters",
    "batch-size",
    "grad-accum",
    "max-seq-len",
    "lr",
    "lr-schedule",
    "warmup",
    "weight-decay",
    "grad-clip",
    "seed",
    "steps-per-eval",
    "val-batches",
    "save-every",
    "sample-prompt",
];

/// The embedded demo's settings: it must learn visibly within a few minutes
/// on a 2-core software GPU (lavapipe), so a higher rate and fewer steps than
/// for real models. Validation loss is ~0.25 by step 80 (8.2 at the start).
fn default_demo_config() -> TrainConfig {
    TrainConfig {
        iters: 80,
        lr: 5e-3,
        steps_per_eval: 20,
        val_batches: 0,
        save_every: 40,
        max_seq_len: 256,
        ..TrainConfig::default()
    }
}

/// Applies the options given on the command line over `base`.
fn apply_options(args: &Args, mut c: TrainConfig) -> Result<TrainConfig> {
    macro_rules! set {
        ($field:ident, $name:literal) => {
            if args.values.contains_key($name) {
                c.$field = args.optional($name, c.$field.clone())?;
            }
        };
    }
    set!(method, "method");
    set!(rank, "rank");
    set!(alpha, "alpha");
    set!(dropout, "dropout");
    set!(iters, "iters");
    set!(batch_size, "batch-size");
    set!(grad_accum, "grad-accum");
    set!(max_seq_len, "max-seq-len");
    set!(lr, "lr");
    set!(schedule, "lr-schedule");
    set!(warmup, "warmup");
    set!(weight_decay, "weight-decay");
    set!(grad_clip, "grad-clip");
    set!(seed, "seed");
    set!(steps_per_eval, "steps-per-eval");
    set!(val_batches, "val-batches");
    set!(save_every, "save-every");
    if args.flag("rslora") {
        c.rslora = true;
    }
    if args.flag("grad-checkpoint") {
        c.grad_checkpoint = true;
    }
    if let Some(t) = args.values.get("targets") {
        c.targets = t
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
    }
    if args.values.contains_key("num-layers") {
        c.num_layers = Some(args.optional("num-layers", 0)?);
    }
    c.validate()?;
    Ok(c)
}

/// The first user message of the first chat line in `test.jsonl` or
/// `valid.jsonl`, as a sample prompt.
fn prompt_from_data(dir: &Path) -> Option<String> {
    let first_question = |name: &str| -> Option<String> {
        let text = std::fs::read_to_string(dir.join(name)).ok()?;
        let line: serde_json::Value = serde_json::from_str(text.lines().next()?).ok()?;
        let messages = line.get("messages")?.as_array()?;
        let user = messages.iter().find(|m| m["role"] == "user")?;
        user["content"].as_str().map(String::from)
    };
    first_question("test.jsonl").or_else(|| first_question("valid.jsonl"))
}

/// Greedy chat answer to `prompt`, for the before/after samples.
fn sample(model: &Llama, tokenizer: &Tokenizer, prompt: &str) -> Result<String> {
    let text = tokenizer.apply_chat_template(&[ChatMessage::new("user", prompt)], true)?;
    let ids = tokenizer.encode(&text, false)?;
    let sampling = Sampling {
        max_tokens: 48,
        ..Sampling::default()
    };
    let mut out = String::new();
    tasks::generate(model, tokenizer, &ids, &sampling, |t| out.push_str(t))?;
    Ok(out.trim().replace('\n', " "))
}

/// The process-wide Ctrl-C flag: the first press asks the running trainer to
/// save and stop; a second press exits at once.
fn interrupt_flag() -> Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        let f = flag.clone();
        let installed = ctrlc::set_handler(move || {
            if f.swap(true, Ordering::SeqCst) {
                eprintln!("\ninterrupted again: exiting without saving");
                std::process::exit(130);
            }
            eprintln!(
                "\ninterrupted: saving a checkpoint after this step (Ctrl-C again to quit now)"
            );
        });
        if installed.is_err() {
            log::warn!("cannot install a Ctrl-C handler");
        }
        flag
    })
    .clone()
}

/// Removes what a new run would otherwise append to or mix with: the old
/// checkpoints and metrics (the adapter and plot are replaced atomically).
fn remove_run_files(out_dir: &Path) -> Result<()> {
    let checkpoints = out_dir.join(checkpoint::CHECKPOINTS_DIR);
    let metrics = out_dir.join(dora_wgpu::train::METRICS_FILE);
    let io_err = |path: &Path| {
        let path = path.display().to_string();
        move |source| Error::Io { path, source }
    };
    if checkpoints.exists() {
        std::fs::remove_dir_all(&checkpoints).map_err(io_err(&checkpoints))?;
    }
    if metrics.exists() {
        std::fs::remove_file(&metrics).map_err(io_err(&metrics))?;
    }
    Ok(())
}

pub fn run(raw: Vec<String>) -> Result<()> {
    let args = Args::parse(raw, FLAGS, OPTIONS)?;
    let demo = !args.values.contains_key("model") && !args.values.contains_key("data");
    let (model_dir, data_dir) = if demo {
        (
            dora_wgpu::assets::default_model_dir()?,
            dora_wgpu::assets::default_data_dir()?,
        )
    } else {
        (args.path("model")?, args.path("data")?)
    };
    let out_dir = match args.values.get("adapter-path") {
        Some(p) => PathBuf::from(p),
        None if demo => PathBuf::from("adapters/default"),
        None => PathBuf::from("adapters"),
    };
    let resume_from = if args.flag("resume") {
        Some(checkpoint::latest(&out_dir).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "--resume: no checkpoint under {}",
                out_dir.join(checkpoint::CHECKPOINTS_DIR).display()
            ))
        })?)
    } else {
        None
    };
    // A resumed run continues with the checkpoint's settings unless told otherwise.
    let base = match &resume_from {
        Some(dir) => checkpoint::load(dir)?.state.config,
        None if demo => default_demo_config(),
        None => TrainConfig::default(),
    };
    let config = apply_options(&args, base)?;
    // Another run's files are replaced only when asked, and only once
    // everything else has loaded (a bad option must not cost a run).
    let replaced = if resume_from.is_none() {
        let existing = checkpoint::existing_run_files(&out_dir);
        if !existing.is_empty() && !args.flag("overwrite") {
            return Err(Error::InvalidArgument(format!(
                "{} already holds a run ({}); pass --resume to continue it, --overwrite to replace it, or another --adapter-path",
                out_dir.display(),
                existing.join(", ")
            )));
        }
        existing
    } else {
        Vec::new()
    };

    let gpu = Gpu::new()?;
    let tokenizer = Tokenizer::from_dir(&model_dir)?;
    let model = Llama::load(&gpu, &model_dir)?;
    let vocab = model.config.vocab_size;
    // train.jsonl must exist; valid.jsonl and test.jsonl may not.
    let read = |name: &str, required: bool| -> Result<Option<Vec<Example>>> {
        let path = data_dir.join(name);
        if !required && !path.is_file() {
            return Ok(None);
        }
        let examples = read_jsonl(&path, &tokenizer)?;
        check_examples_vocabulary(&path, &examples, &tokenizer, vocab)?;
        Ok(Some(examples))
    };
    let train = read("train.jsonl", true)?.unwrap_or_default();
    let valid = read("valid.jsonl", false)?.unwrap_or_default();
    let test = read("test.jsonl", false)?;
    let mut trainer = Trainer::new(model, config.clone(), train, valid)?.with_output_dir(&out_dir);
    if let Some(dir) = &resume_from {
        trainer.resume(dir)?;
    }

    let c = trainer.config().clone();
    let m = &trainer.model().config;
    let trainable: usize = trainer.model().parameters().iter().map(|p| p.numel()).sum();
    println!(
        "model: {}{}  ({} layers, hidden {}, vocab {})",
        model_dir.display(),
        if demo { " (embedded default)" } else { "" },
        m.num_hidden_layers,
        m.hidden_size,
        m.vocab_size
    );
    println!("device: {} ({:?})", gpu.adapter_name(), gpu.backend());
    println!(
        "adapter: {:?} r {} alpha {} on {} ({} trainable parameters) → {}",
        c.method,
        c.rank,
        c.alpha,
        if c.targets.is_empty() {
            "all seven projections".to_string()
        } else {
            c.targets.join(",")
        },
        trainable,
        out_dir.display()
    );
    let report = trainer.prepare_report();
    if report.truncated > 0 {
        eprintln!(
            "warning: {} training examples were longer than --max-seq-len {} tokens and were truncated",
            report.truncated, c.max_seq_len
        );
    }
    if report.dropped > 0 {
        eprintln!(
            "warning: {} training examples have no token to learn from and were skipped",
            report.dropped
        );
    }
    println!(
        "data: {} train, {} valid examples; {} steps of batch {} × {} accumulation, lr {:e} ({:?})",
        trainer.train_examples(),
        trainer.valid_examples(),
        c.iters,
        c.batch_size,
        c.grad_accum,
        c.lr,
        c.schedule
    );
    if let Some(dir) = &resume_from {
        println!(
            "resuming from {} (step {})",
            dir.display(),
            trainer.step_count()
        );
    }
    let prompt = args
        .values
        .get("sample-prompt")
        .cloned()
        .or_else(|| demo.then(|| prompt_from_data(&data_dir)).flatten());
    if let Some(p) = &prompt {
        println!("prompt: {p}");
        println!("before: {}", sample(trainer.model(), &tokenizer, p)?);
    }

    if !replaced.is_empty() {
        println!(
            "--overwrite: replacing {} in {}",
            replaced.join(", "),
            out_dir.display()
        );
        remove_run_files(&out_dir)?;
    }

    let interrupted = interrupt_flag();
    let cancel = trainer.cancel_flag();
    let mut progress = ProgressLine::new(c.iters);
    let summary = trainer.run(|event| {
        if interrupted.load(Ordering::Relaxed) {
            cancel.store(true, Ordering::Relaxed);
        }
        match event {
            Event::Step(s) => progress.update(s),
            Event::Validation { step, loss, .. } => {
                progress.println(&format!("step {step}: val loss {loss:.4}"))
            }
            Event::Saved { step, dir } => {
                log::info!("step {step}: checkpoint {}", dir.display())
            }
        }
        ControlFlow::Continue(())
    });
    progress.finish();
    let summary = summary?;

    if summary.stop == Stop::Cancelled {
        println!(
            "stopped at step {}; checkpoint saved to {}. Continue with --resume.",
            summary.step,
            summary.checkpoint.as_deref().unwrap_or(&out_dir).display()
        );
        return Ok(());
    }
    if let Some(p) = &prompt {
        println!("after:  {}", sample(trainer.model(), &tokenizer, p)?);
    }
    if let Some(test) = test {
        let report = tasks::evaluate(trainer.model(), &test)?;
        println!(
            "test loss {:.4} (ppl {:.2}, {} tokens)",
            report.loss, report.ppl, report.tokens
        );
    }
    let val = match (summary.validation.first(), summary.validation.last()) {
        (Some(a), Some(b)) if summary.validation.len() > 1 => {
            format!(", val loss {:.4} → {:.4}", a.1, b.1)
        }
        _ => String::new(),
    };
    println!(
        "done: {} steps in {:.1} s ({:.0} tokens/s, peak GPU memory {:.1} MB allocated, {:.1} MB live){val}; adapter saved to {}",
        summary.losses.len(),
        summary.train_s,
        summary.tokens as f64 / summary.train_s.max(1e-9),
        summary.peak_gpu_bytes as f64 / 1e6,
        summary.peak_live_bytes as f64 / 1e6,
        out_dir.display()
    );
    Ok(())
}

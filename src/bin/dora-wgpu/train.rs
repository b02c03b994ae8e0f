//! `dora-wgpu train`: options → [`TrainConfig`], data directory → examples,
//! a progress line, validation lines, samples before and after, Ctrl-C → a
//! checkpoint and a clean exit.

use std::ffi::OsStr;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use clap::builder::{PossibleValue, StringValueParser, TypedValueParser};
use clap::Args;
use serde::Serialize;

use dora_wgpu::nn::Llama;
use dora_wgpu::tasks::{self, Sampling};
use dora_wgpu::text::data::{check_examples_vocabulary, read_jsonl, Example};
use dora_wgpu::train::{
    checkpoint, format_bytes, Event, Method, Schedule, Stop, TrainConfig, Trainer,
};
use dora_wgpu::{ChatMessage, Error, Gpu, GpuOptions, PoolLimits, Result, Tokenizer};

use crate::progress::ProgressLine;

/// `dora-wgpu train`'s options. Those that set a [`TrainConfig`] field are
/// `Option`s: one not given keeps the base config's value (the defaults, the
/// demo's, or a resumed checkpoint's). Their help gets `[default: …]` from
/// the configs themselves ([`document_defaults`]).
#[derive(Args)]
#[command(
    after_help = "Options not given keep their default; with --resume, the checkpoint's setting."
)]
pub struct TrainArgs {
    /// Hugging Face model directory or GGUF file (with --data) [default: the embedded demo model]
    #[arg(long, value_name = "DIR", requires = "data")]
    model: Option<PathBuf>,
    /// Data directory: train.jsonl, optional valid.jsonl and test.jsonl (with --model) [default: the embedded demo data]
    #[arg(long, value_name = "DIR", requires = "model")]
    data: Option<PathBuf>,
    /// Output directory: the PEFT adapter, metrics, loss plot and checkpoints [default: adapters; embedded demo: adapters/default]
    #[arg(long, value_name = "DIR")]
    adapter_path: Option<PathBuf>,
    /// Adapter type
    #[arg(long, value_name = "METHOD", value_parser = Choices(&[Method::Dora, Method::Lora]))]
    method: Option<Method>,
    /// Adapter rank r
    #[arg(long, value_name = "N")]
    rank: Option<usize>,
    /// Adapter scale alpha (the update is scaled by alpha / r)
    #[arg(long, value_name = "A")]
    alpha: Option<f32>,
    /// Dropout on the adapter's input
    #[arg(long, value_name = "P")]
    dropout: Option<f32>,
    /// Scale by alpha / sqrt(r) instead of alpha / r
    #[arg(long)]
    rslora: bool,
    /// Comma-separated projections to adapt (q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj; Phi-3: qkv_proj,o_proj,gate_up_proj,down_proj)
    #[arg(long, value_name = "LIST")]
    targets: Option<String>,
    /// Adapt only the last N decoder layers
    #[arg(long, value_name = "N")]
    num_layers: Option<usize>,
    /// Optimizer steps
    #[arg(long, value_name = "N")]
    iters: Option<usize>,
    /// Examples per micro-batch
    #[arg(long, value_name = "N")]
    batch_size: Option<usize>,
    /// Micro-batches per optimizer step
    #[arg(long, value_name = "N")]
    grad_accum: Option<usize>,
    /// Longer examples are truncated to this many tokens
    #[arg(long, value_name = "N")]
    max_seq_len: Option<usize>,
    /// Recompute each decoder layer during backward instead of keeping its activations
    #[arg(long)]
    grad_checkpoint: bool,
    /// Peak learning rate (AdamW)
    #[arg(long, value_name = "LR")]
    lr: Option<f32>,
    /// Learning-rate schedule after the warmup, as transformers'
    #[arg(long, value_name = "SCHEDULE", value_parser = Choices(&[Schedule::Constant, Schedule::Cosine]))]
    lr_schedule: Option<Schedule>,
    /// Warmup steps (the rate rises linearly from 0)
    #[arg(long, value_name = "N")]
    warmup: Option<usize>,
    /// AdamW weight decay
    #[arg(long, value_name = "W")]
    weight_decay: Option<f32>,
    /// Maximum global gradient norm; 0 turns clipping off
    #[arg(long, value_name = "G")]
    grad_clip: Option<f32>,
    /// Seed of the adapter initialisation, dropout and data order
    #[arg(long, value_name = "S")]
    seed: Option<u64>,
    /// Validate every N steps (and before the first and after the last); 0 never
    #[arg(long, value_name = "N")]
    steps_per_eval: Option<usize>,
    /// Validation batches per evaluation; 0 uses the whole validation set
    #[arg(long, value_name = "N")]
    val_batches: Option<usize>,
    /// Checkpoint every N steps (and always at the end); 0 only at the end
    #[arg(long, value_name = "N")]
    save_every: Option<usize>,
    /// Continue from the newest checkpoint under --adapter-path, with its settings
    #[arg(long)]
    resume: bool,
    /// Replace another run's files in --adapter-path (a new run refuses to otherwise)
    #[arg(long)]
    overwrite: bool,
    /// Cap on the GPU memory this run may hold (e.g. 3GB, 512MiB); a step
    /// estimated not to fit is refused before training, naming settings that would [default: no cap]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    gpu_memory_limit: Option<u64>,
    /// Print a greedy answer to this prompt before and after training [default: none; embedded demo: the first question of its test data]
    #[arg(long, value_name = "TEXT", allow_hyphen_values = true)]
    sample_prompt: Option<String>,
}

/// A size in bytes: a number with an optional unit (B, kB/MB/GB, KiB/MiB/GiB).
fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let factor: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "kib" => 1024.0,
        "mib" => 1048576.0,
        "gib" => 1073741824.0,
        other => {
            return Err(format!(
                "unknown unit {other:?}; use B, kB, MB, GB, KiB, MiB or GiB"
            ))
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 4GB or 512MiB"))?;
    if !(value * factor >= 1.0 && (value * factor).is_finite()) {
        return Err(format!("{text:?} is not a positive size"));
    }
    Ok((value * factor) as u64)
}

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

/// A value's name as serde (and so the checkpoints and `FromStr`) spells it.
fn name_of<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// Parses an enumerated option with the library's `FromStr` (its error is
/// clap's reason) and lists the given variants, by their serde names, as the
/// possible values in the help and the shell completions.
#[derive(Clone)]
pub(crate) struct Choices<T: 'static>(pub(crate) &'static [T]);

impl<T> TypedValueParser for Choices<T>
where
    T: FromStr<Err = String> + Serialize + Clone + Send + Sync + 'static,
{
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> std::result::Result<T, clap::Error> {
        StringValueParser::new()
            .try_map(|s| s.parse::<T>())
            .parse_ref(cmd, arg, value)
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(
            self.0.iter().map(|v| PossibleValue::new(name_of(v))),
        ))
    }
}

/// How a default reads in the help: `2e-4` rather than `0.0002`.
trait Shown {
    fn shown(&self) -> String;
}
impl Shown for usize {
    fn shown(&self) -> String {
        self.to_string()
    }
}
impl Shown for u64 {
    fn shown(&self) -> String {
        self.to_string()
    }
}
impl Shown for f32 {
    fn shown(&self) -> String {
        if *self != 0.0 && self.abs() < 1e-2 {
            format!("{self:e}")
        } else {
            self.to_string()
        }
    }
}
impl Shown for Method {
    fn shown(&self) -> String {
        name_of(self)
    }
}
impl Shown for Schedule {
    fn shown(&self) -> String {
        name_of(self)
    }
}

/// The options that set one `TrainConfig` field each, as `option => field`:
/// generates [`set_fields`] (applying those given) and [`field_default`]
/// (a field's value for the help), so the two cannot disagree.
macro_rules! config_fields {
    ($($option:ident => $field:ident),* $(,)?) => {
        fn set_fields(o: &TrainArgs, c: &mut TrainConfig) {
            $(if let Some(v) = &o.$option {
                c.$field = v.clone();
            })*
        }

        /// `c`'s value for the option with clap id `id`, as the help shows it.
        fn field_default(id: &str, c: &TrainConfig) -> Option<String> {
            match id {
                $(stringify!($option) => Some(c.$field.shown()),)*
                "targets" if c.targets.is_empty() => Some("every projection of the model's family".into()),
                "targets" => Some(c.targets.join(",")),
                "num_layers" => Some(c.num_layers.map_or("all layers".into(), |n| n.to_string())),
                _ => None,
            }
        }
    };
}

config_fields! {
    method => method,
    rank => rank,
    alpha => alpha,
    dropout => dropout,
    iters => iters,
    batch_size => batch_size,
    grad_accum => grad_accum,
    max_seq_len => max_seq_len,
    lr => lr,
    lr_schedule => schedule,
    warmup => warmup,
    weight_decay => weight_decay,
    grad_clip => grad_clip,
    seed => seed,
    steps_per_eval => steps_per_eval,
    val_batches => val_batches,
    save_every => save_every,
}

/// Appends `[default: …]` to the help of every option that sets a config
/// field, from `TrainConfig::default()`, and the embedded demo's value where
/// it differs.
pub fn document_defaults(cmd: clap::Command) -> clap::Command {
    let (normal, demo) = (TrainConfig::default(), default_demo_config());
    cmd.mut_args(|arg| {
        let id = arg.get_id().as_str();
        let Some(default) = field_default(id, &normal) else {
            return arg;
        };
        let default = match field_default(id, &demo) {
            Some(d) if d != default => format!("{default}; embedded demo: {d}"),
            _ => default,
        };
        let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
        arg.help(format!("{help} [default: {default}]"))
    })
}

/// Applies the options given on the command line over `base`.
fn apply_options(o: &TrainArgs, mut c: TrainConfig) -> Result<TrainConfig> {
    set_fields(o, &mut c);
    if o.rslora {
        c.rslora = true;
    }
    if o.grad_checkpoint {
        c.grad_checkpoint = true;
    }
    if let Some(t) = &o.targets {
        c.targets = t
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
    }
    if let Some(n) = o.num_layers {
        c.num_layers = Some(n);
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

pub fn run(args: TrainArgs) -> Result<()> {
    let (model_dir, data_dir, demo) = match (&args.model, &args.data) {
        (None, None) => (
            dora_wgpu::assets::default_model_dir()?,
            dora_wgpu::assets::default_data_dir()?,
            true,
        ),
        (Some(model), Some(data)) => (model.clone(), data.clone(), false),
        _ => {
            return Err(Error::InvalidArgument(
                "train needs both --model and --data, or neither (the embedded demo)".into(),
            ))
        }
    };
    let out_dir = match &args.adapter_path {
        Some(p) => p.clone(),
        None if demo => PathBuf::from("adapters/default"),
        None => PathBuf::from("adapters"),
    };
    let resume_from = if args.resume {
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
        if !existing.is_empty() && !args.overwrite {
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

    let gpu = Gpu::with_options(&GpuOptions {
        memory: PoolLimits {
            max_bytes: args.gpu_memory_limit,
            ..PoolLimits::default()
        },
        ..GpuOptions::default()
    })?;
    let tokenizer = Tokenizer::load(&model_dir)?;
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
            let names = dora_wgpu::nn::projections(m).iter().map(|(_, name)| *name);
            names.collect::<Vec<_>>().join(",")
        } else {
            c.targets.join(",")
        },
        trainable,
        out_dir.display()
    );
    let memory = trainer.memory_estimate();
    println!(
        "memory: about {} per step (weights {}, adapter and AdamW {}, activations {}){}",
        format_bytes(memory.total()),
        format_bytes(memory.resident),
        format_bytes(memory.adapter_and_optimizer),
        format_bytes(memory.activations),
        args.gpu_memory_limit
            .map_or(String::new(), |l| format!("; limit {}", format_bytes(l)))
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
        .sample_prompt
        .clone()
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

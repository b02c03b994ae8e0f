//! A miniature of the DoRA paper's weight-decomposition analysis (Liu et al.
//! 2024, §3.2, Fig. 2) on the embedded default model: fine-tune the q_proj and
//! v_proj weights of every layer by full fine-tuning (FT), LoRA and DoRA under
//! the same budget (same batches in the same order, same steps, batch size,
//! seed, clipping; a learning rate per method), keep four checkpoints of each,
//! and measure how far each weight's row norms (ΔM) and row directions (ΔD)
//! moved from the base. The paper finds a negative slope of ΔM on ΔD for FT
//! and DoRA and a positive one for LoRA.
//!
//!     cargo run --release --example decomposition -- [--iters 60] [--batch-size 4]
//!         [--max-seq-len 128] [--lr-ft 1e-3] [--lr-lora 5e-3] [--lr-dora 5e-3] [--seed 0]
//!         [--out adapters/decomposition] [--docs docs]
//!
//! Checkpoints go under `--out` (FT ones as Hugging Face model directories,
//! LoRA/DoRA ones as PEFT adapters); `decomposition.{png,svg,csv,json}` go
//! into `--docs`.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use dora_wgpu::io::hf::load_weights;
use dora_wgpu::io::{write_safetensors, HostTensor};
use dora_wgpu::nn::{Linear, Llama, Projection, PROJECTIONS};
use dora_wgpu::ops;
use dora_wgpu::optim::{AdamW, AdamWConfig};
use dora_wgpu::plot::{Chart, Marker, Rgb, Series};
use dora_wgpu::tasks::analyze::{
    analyze_adapters, analyze_tuned, fit_line, fits, write_csv, write_json, LineFit, Record,
};
use dora_wgpu::tasks::evaluate;
use dora_wgpu::text::data::{read_jsonl, Example};
use dora_wgpu::train::{prepare, Batcher, Event, Method, TrainConfig, Trainer};
use dora_wgpu::{Error, Gpu, Result, Tensor, Tokenizer};

/// The trained projections: every layer's attention query and value weights.
const TARGETS: [&str; 2] = ["q_proj", "v_proj"];
/// Files of the base model directory an FT checkpoint copies unchanged.
const MODEL_FILES: [&str; 4] = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
];
/// Logits elements per chunk of the LM-head loss (the Trainer's bound).
const LOSS_CHUNK_ELEMENTS: usize = 1 << 23;

struct Options {
    steps: usize,
    batch: usize,
    max_seq_len: usize,
    lr_ft: f32,
    lr_lora: f32,
    lr_dora: f32,
    seed: u64,
    out: PathBuf,
    docs: PathBuf,
}

impl Options {
    fn parse() -> Result<Options> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut o = Options {
            steps: 60,
            batch: 4,
            max_seq_len: 128,
            lr_ft: 1e-3,
            lr_lora: 5e-3,
            lr_dora: 5e-3,
            seed: 0,
            out: PathBuf::from("adapters/decomposition"),
            docs: PathBuf::from("docs"),
        };
        let bad =
            |name: &str, v: &str| Error::InvalidArgument(format!("{name}: cannot read {v:?}"));
        let mut it = args.iter();
        while let Some(name) = it.next() {
            let v = it
                .next()
                .ok_or_else(|| Error::InvalidArgument(format!("{name} needs a value")))?;
            match name.as_str() {
                "--iters" => o.steps = v.parse().map_err(|_| bad(name, v))?,
                "--batch-size" => o.batch = v.parse().map_err(|_| bad(name, v))?,
                "--max-seq-len" => o.max_seq_len = v.parse().map_err(|_| bad(name, v))?,
                "--lr-ft" => o.lr_ft = v.parse().map_err(|_| bad(name, v))?,
                "--lr-lora" => o.lr_lora = v.parse().map_err(|_| bad(name, v))?,
                "--lr-dora" => o.lr_dora = v.parse().map_err(|_| bad(name, v))?,
                "--seed" => o.seed = v.parse().map_err(|_| bad(name, v))?,
                "--out" => o.out = PathBuf::from(v),
                "--docs" => o.docs = PathBuf::from(v),
                _ => return Err(Error::InvalidArgument(format!("unknown option {name}"))),
            }
        }
        // Four checkpoints at T/4, T/2, 3T/4 and T.
        if o.steps < 4 || !o.steps.is_multiple_of(4) {
            return Err(Error::InvalidArgument(format!(
                "--iters must be a positive multiple of 4, got {}",
                o.steps
            )));
        }
        for (name, lr) in [
            ("--lr-ft", o.lr_ft),
            ("--lr-lora", o.lr_lora),
            ("--lr-dora", o.lr_dora),
        ] {
            if !(lr.is_finite() && lr > 0.0) {
                return Err(Error::InvalidArgument(format!(
                    "{name} must be a positive number, got {lr}"
                )));
            }
        }
        // The Trainer's own checks of the shared settings, before any work.
        o.train_config(Method::Lora, o.lr_lora).validate()?;
        Ok(o)
    }

    /// The Trainer settings every method shares; FT mirrors them by hand.
    fn train_config(&self, method: Method, lr: f32) -> TrainConfig {
        TrainConfig {
            method,
            targets: TARGETS.iter().map(|t| t.to_string()).collect(),
            iters: self.steps,
            batch_size: self.batch,
            max_seq_len: self.max_seq_len,
            lr,
            seed: self.seed,
            steps_per_eval: 0,
            save_every: self.steps / 4,
            ..TrainConfig::default()
        }
    }
}

/// What one method's run produced.
struct Run {
    method: &'static str,
    lr: f32,
    /// (step, checkpoint directory), oldest first.
    checkpoints: Vec<(usize, PathBuf)>,
    /// Mean training loss of the last quarter of the steps.
    train_loss: f32,
    val_loss: f64,
    seconds: f64,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

fn mean_tail(losses: &[f32]) -> f32 {
    let tail = &losses[losses.len() - (losses.len() / 4).max(1).min(losses.len())..];
    tail.iter().sum::<f32>() / tail.len().max(1) as f32
}

fn is_target(module: &str) -> bool {
    TARGETS.iter().any(|t| module.ends_with(&format!(".{t}")))
}

/// LoRA or DoRA through the library's Trainer. Its checkpoints are copied
/// out as they are saved, because the Trainer keeps only the newest three.
fn run_adapter(
    gpu: &Gpu,
    o: &Options,
    method: Method,
    lr: f32,
    data: (&[Example], &[Example]),
    model_dir: &Path,
) -> Result<Run> {
    let started = Instant::now();
    let name = match method {
        Method::Lora => "LoRA",
        Method::Dora => "DoRA",
    };
    let run_dir = o.out.join(name.to_lowercase());
    let keep_dir = o.out.join(format!("{}-checkpoints", name.to_lowercase()));
    for d in [&run_dir, &keep_dir] {
        if d.exists() {
            std::fs::remove_dir_all(d).map_err(io_err(d))?;
        }
    }
    let model = Llama::load(gpu, model_dir)?;
    let mut trainer = Trainer::new(
        model,
        o.train_config(method, lr),
        data.0.to_vec(),
        data.1.to_vec(),
    )?
    .with_output_dir(&run_dir);
    let mut checkpoints = Vec::new();
    let mut failure = None;
    let summary = trainer.run(|event| {
        match event {
            Event::Step(s) if s.step.is_multiple_of(10) => {
                println!("  {name} step {:>3}  loss {:.4}", s.step, s.loss);
            }
            Event::Saved { step, dir } => {
                let keep = keep_dir.join(format!("step-{step:06}"));
                match copy_adapter(dir, &keep) {
                    Ok(()) => checkpoints.push((step, keep)),
                    Err(e) => {
                        failure = Some(e);
                        return ControlFlow::Break(());
                    }
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    let val_loss = evaluate(trainer.model(), data.1)?.loss;
    Ok(Run {
        method: name,
        lr,
        checkpoints,
        train_loss: mean_tail(&summary.losses),
        val_loss,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn copy_adapter(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(io_err(to))?;
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        let src = from.join(file);
        std::fs::copy(&src, to.join(file)).map_err(io_err(&src))?;
    }
    Ok(())
}

/// Full fine-tuning of the q_proj/v_proj weights: the same batches as the
/// Trainer (same preparation, batcher and seed), the same loss, gradient
/// clipping and AdamW settings, only the trained tensors differ.
fn run_full(
    gpu: &Gpu,
    o: &Options,
    lr: f32,
    data: (&[Example], &[Example]),
    model_dir: &Path,
) -> Result<Run> {
    let started = Instant::now();
    let config = o.train_config(Method::Lora, lr); // only the shared settings are used
    let run_dir = o.out.join("ft");
    if run_dir.exists() {
        std::fs::remove_dir_all(&run_dir).map_err(io_err(&run_dir))?;
    }
    let mut model = Llama::load(gpu, model_dir)?;
    // The base weights of the targets become trainable leaves. `Linear`
    // refuses them in `new` (adapters need a frozen base), but its forward is
    // a plain x·Wᵀ matmul, which records W's gradient once W is a parameter;
    // "Frozen" here only means "no adapter".
    let mut params: Vec<(String, Tensor)> = Vec::new();
    for (i, layer) in model.layers.iter_mut().enumerate() {
        for ((parent, name), slot) in PROJECTIONS.iter().zip(layer.projections.iter_mut()) {
            if !TARGETS.contains(name) {
                continue;
            }
            let base = slot.base().clone();
            let weight = base.weight.into_param()?;
            params.push((
                format!("model.layers.{i}.{parent}.{name}.weight"),
                weight.clone(),
            ));
            *slot = Projection::Frozen(Linear {
                weight,
                bias: base.bias,
            });
        }
    }
    let mut optimizer = AdamW::new(
        params.iter().map(|(_, t)| t.clone()).collect(),
        AdamWConfig {
            lr,
            weight_decay: config.weight_decay,
            ..Default::default()
        },
    )?;
    let (train, _) = prepare(data.0.to_vec(), config.max_seq_len);
    let mut batcher = Batcher::new(train, config.batch_size, config.shuffle, config.seed);
    let chunk_rows = (LOSS_CHUNK_ELEMENTS / model.config.vocab_size).max(1);
    let hidden_size = model.config.hidden_size;
    let base_weights = load_weights(model_dir)?;
    let mut losses = Vec::with_capacity(config.iters);
    let mut checkpoints = Vec::new();
    for step in 1..=config.iters {
        let Some(batch) = batcher.next_batch() else {
            return Err(Error::InvalidArgument(
                "no training example has a token to learn from".into(),
            ));
        };
        let ids = Tensor::from_i32(gpu, &batch.ids, &[batch.batch, batch.seq])?;
        let hidden = model.forward_hidden_train(&ids, 0)?;
        let hidden = ops::reshape(&hidden, &[batch.batch * batch.seq, hidden_size])?;
        let loss = model.loss(&hidden, &batch.targets, chunk_rows)?;
        loss.backward()?;
        let grads: Vec<Tensor> = optimizer.params().iter().filter_map(Tensor::grad).collect();
        let grad_norm = ops::global_norm(&grads)?.item()?;
        let loss = loss.item()?;
        if !loss.is_finite() || !grad_norm.is_finite() {
            return Err(Error::Training(format!(
                "FT step {step}: loss {loss}, gradient norm {grad_norm}; try a lower --lr-ft"
            )));
        }
        // The Trainer's clipping: torch's clip_grad_norm_ on the global norm.
        let clip = if config.grad_clip > 0.0 {
            (config.grad_clip / (grad_norm + 1e-6)).min(1.0)
        } else {
            1.0
        };
        optimizer.step_scaled(clip)?;
        optimizer.zero_grad();
        losses.push(loss);
        if step.is_multiple_of(10) {
            println!("  FT step {step:>3}  loss {loss:.4}");
        }
        if step.is_multiple_of(config.save_every) {
            let dir = run_dir.join(format!("step-{step:06}"));
            save_full(&dir, model_dir, &base_weights, &params)?;
            checkpoints.push((step, dir));
        }
    }
    let val_loss = evaluate(&model, data.1)?.loss;
    Ok(Run {
        method: "FT",
        lr,
        checkpoints,
        train_loss: mean_tail(&losses),
        val_loss,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// A Hugging Face model directory: the base files, and the base weights with
/// the tuned ones in place.
fn save_full(
    dir: &Path,
    model_dir: &Path,
    base: &BTreeMap<String, HostTensor>,
    tuned: &[(String, Tensor)],
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut weights = base.clone();
    for (name, t) in tuned {
        weights.insert(name.clone(), HostTensor::from_gpu(t)?);
    }
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    write_safetensors(&dir.join("model.safetensors"), &weights, Some(metadata))?;
    for file in MODEL_FILES {
        let src = model_dir.join(file);
        std::fs::copy(&src, dir.join(file)).map_err(io_err(&src))?;
    }
    Ok(())
}

/// ΔM and ΔD of the targets at every checkpoint of a run, labelled e.g. "FT step 15".
fn analyze_run(gpu: &Gpu, model_dir: &Path, run: &Run) -> Result<Vec<Record>> {
    let mut records = Vec::new();
    if run.method == "FT" {
        for (step, dir) in &run.checkpoints {
            for mut r in analyze_tuned(gpu, model_dir, dir)? {
                // The other projections were not trained: ΔM = ΔD = 0 there.
                if is_target(&r.module) {
                    r.checkpoint = format!("FT step {step}");
                    records.push(r);
                }
            }
        }
    } else {
        let dirs: Vec<PathBuf> = run.checkpoints.iter().map(|(_, d)| d.clone()).collect();
        // analyze_adapters labels a checkpoint by its directory name.
        let steps: BTreeMap<String, usize> = run
            .checkpoints
            .iter()
            .filter_map(|(step, d)| Some((d.file_name()?.to_string_lossy().into_owned(), *step)))
            .collect();
        for mut r in analyze_adapters(gpu, model_dir, &dirs)? {
            if let Some(step) = steps.get(&r.checkpoint) {
                r.checkpoint = format!("{} step {step}", run.method);
            }
            records.push(r);
        }
    }
    Ok(records)
}

/// Light to dark shades of one hue per method, one shade per checkpoint.
const SHADES: [[Rgb; 4]; 3] = [
    // FT: blues
    [
        [0x9e, 0xca, 0xe1],
        [0x4b, 0x9a, 0xcc],
        [0x21, 0x66, 0xac],
        [0x08, 0x30, 0x6b],
    ],
    // LoRA: oranges
    [
        [0xfd, 0xbe, 0x85],
        [0xfd, 0x8d, 0x3c],
        [0xd9, 0x47, 0x01],
        [0x8c, 0x2d, 0x04],
    ],
    // DoRA: greens
    [
        [0xa1, 0xd9, 0x9b],
        [0x41, 0xab, 0x5d],
        [0x23, 0x84, 0x43],
        [0x00, 0x44, 0x1b],
    ],
];
const MARKERS: [Marker; 3] = [Marker::Circle, Marker::Square, Marker::Triangle];

/// One scatter for all three methods: ΔD on x, ΔM on y, a marker shape and
/// hue per method, darker for later checkpoints, and each method's fitted line.
fn chart(records: &[Record], runs: &[Run], fits: &[LineFit]) -> Chart {
    let mut chart = Chart::new(
        "Magnitude vs direction change: FT, LoRA, DoRA",
        "ΔD = mean over rows of 1 - cos(W_t, W_0)",
        "ΔM = mean over rows of |m_t - m_0|  (q_proj, v_proj; 4 layers)",
    );
    chart.plot_size = (620, 420);
    for (k, run) in runs.iter().enumerate() {
        for (j, (step, _)) in run.checkpoints.iter().enumerate() {
            let label = format!("{} step {step}", run.method);
            let points = records
                .iter()
                .filter(|r| r.checkpoint == label)
                .map(|r| (r.delta_d, r.delta_m))
                .collect();
            chart.series.push(
                Series::markers(label, points)
                    .with_marker(MARKERS[k % 3])
                    .with_color(SHADES[k % 3][j.min(3)]),
            );
        }
    }
    for (k, (run, fit)) in runs.iter().zip(fits).enumerate() {
        let (Some(b), Some(a)) = (fit.slope, fit.intercept) else {
            continue;
        };
        let xs = records
            .iter()
            .filter(|r| r.method == run.method)
            .map(|r| r.delta_d);
        let (lo, hi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(x), hi.max(x))
        });
        let r = fit.pearson.map_or("-".into(), |r| format!("{r:+.2}"));
        chart.series.push(
            Series::line(
                format!("{} fit: slope {b:+.3}, r {r}", run.method),
                vec![(lo, a + b * lo), (hi, a + b * hi)],
            )
            .with_color(SHADES[k % 3][3]),
        );
    }
    chart
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let started = Instant::now();
    let o = Options::parse()?;
    let gpu = Gpu::new()?;
    println!("device: {} ({:?})", gpu.adapter_name(), gpu.backend());
    let model_dir = dora_wgpu::assets::default_model_dir()?;
    let data_dir = dora_wgpu::assets::default_data_dir()?;
    let tokenizer = Tokenizer::from_dir(&model_dir)?;
    let train = read_jsonl(&data_dir.join("train.jsonl"), &tokenizer)?;
    let valid = read_jsonl(&data_dir.join("valid.jsonl"), &tokenizer)?;
    let base_val = evaluate(&Llama::load(&gpu, &model_dir)?, &valid)?.loss;
    println!(
        "{} steps, batch {}, seed {}, checkpoints every {} steps; base model val loss {base_val:.4}",
        o.steps,
        o.batch,
        o.seed,
        o.steps / 4
    );
    let data = (&train[..], &valid[..]);
    println!("full fine-tuning (lr {:e})", o.lr_ft);
    let ft = run_full(&gpu, &o, o.lr_ft, data, &model_dir)?;
    println!("LoRA (lr {:e})", o.lr_lora);
    let lora = run_adapter(&gpu, &o, Method::Lora, o.lr_lora, data, &model_dir)?;
    println!("DoRA (lr {:e})", o.lr_dora);
    let dora = run_adapter(&gpu, &o, Method::Dora, o.lr_dora, data, &model_dir)?;
    let runs = [ft, lora, dora];

    let analysis_started = Instant::now();
    let mut records = Vec::new();
    for run in &runs {
        records.extend(analyze_run(&gpu, &model_dir, run)?);
    }
    // Per method: a fit per checkpoint, then the pooled one (checkpoint None).
    let all_fits = fits(&records);
    let pooled: Vec<LineFit> = runs
        .iter()
        .map(|run| {
            all_fits
                .iter()
                .find(|f| f.method == run.method && f.checkpoint.is_none())
                .map_or(fit_line(&[]), |f| f.line)
        })
        .collect();
    std::fs::create_dir_all(&o.docs).map_err(io_err(&o.docs))?;
    write_csv(&o.docs.join("decomposition.csv"), &records)?;
    write_json(&o.docs.join("decomposition.json"), &records)?;
    chart(&records, &runs, &pooled).save(&o.docs.join("decomposition"))?;
    let analysis_s = analysis_started.elapsed().as_secs_f64();

    let r = |v: Option<f64>| v.map_or("-".into(), |r| format!("{r:+.2}"));
    println!(
        "\n{:<6} {:>6} {:>10} {:>8} {:>6} {:>7} {:>6}   r within each checkpoint",
        "method", "lr", "train loss", "val loss", "time s", "slope", "r"
    );
    for (run, fit) in runs.iter().zip(&pooled) {
        let per_checkpoint: Vec<String> = all_fits
            .iter()
            .filter(|f| f.method == run.method && f.checkpoint.is_some())
            .map(|f| r(f.line.pearson))
            .collect();
        println!(
            "{:<6} {:>6.0e} {:>10.3} {:>8.3} {:>6.0} {:>7} {:>6}   {}",
            run.method,
            run.lr,
            run.train_loss,
            run.val_loss,
            run.seconds,
            fit.slope.map_or("-".into(), |b| format!("{b:+.3}")),
            r(fit.pearson),
            per_checkpoint.join(" "),
        );
    }
    println!(
        "\nslope, r: least squares of ΔM on ΔD and Pearson's r over all {} points of a method \
         (4 checkpoints × 4 layers × q/v);\nr within each checkpoint: the same over its 8 points. \
         train loss: mean of the last quarter of the steps.\n\
         The paper's Fig. 2: FT −0.62, LoRA +0.83, DoRA −0.31.\n\
         wrote {}/decomposition.{{png,svg,csv,json}}; analysis {analysis_s:.1} s, total {:.0} s",
        records.len() / runs.len().max(1),
        o.docs.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

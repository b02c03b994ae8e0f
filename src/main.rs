//! The `dora-wgpu` command line: parses arguments and calls the library.
//! Every failure is one line on stderr and a non-zero exit code.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use dora_wgpu::io::AdapterWeights;
use dora_wgpu::nn::Llama;
use dora_wgpu::tasks::{self, analyze, Sampling};
use dora_wgpu::{ChatMessage, Error, Gpu, Result, Tokenizer};

/// Subcommands big enough for a file of their own (binary only, not the library).
mod cli {
    pub mod train;
}

const USAGE: &str = "dora-wgpu — DoRA fine-tuning on any GPU through wgpu

usage:
  dora-wgpu devices
  dora-wgpu eval --model DIR [--adapter DIR] --data FILE.jsonl [--json]
  dora-wgpu generate --model DIR [--adapter DIR] --prompt TEXT [--chat] [--max-tokens N]
                     [--temperature T] [--top-p P] [--seed S]
  dora-wgpu merge --model DIR --adapter DIR --out DIR
  dora-wgpu train [--model DIR --data DIR] [--adapter-path DIR] [--method dora|lora]
                  [--rank N] [--alpha A] [--dropout P] [--rslora] [--targets q_proj,v_proj,..]
                  [--num-layers N] [--iters N] [--batch-size N] [--grad-accum N]
                  [--max-seq-len N] [--lr LR] [--lr-schedule constant|cosine] [--warmup N]
                  [--weight-decay W] [--grad-clip G] [--seed S] [--steps-per-eval N]
                  [--val-batches N] [--save-every N] [--resume] [--overwrite]
                  [--grad-checkpoint] [--sample-prompt TEXT]
    Without --model and --data: fine-tunes the embedded default model on the
    embedded default data (a quick demo; writes to adapters/default).
  dora-wgpu analyze --base DIR (--adapter DIR [--adapter DIR ...] | --tuned DIR)
                    [--json FILE] [--csv FILE] [--plot STEM]
            (defaults: decomposition.json, .csv, .png and .svg in the current directory)

Choose the GPU with WGPU_BACKEND (vulkan, metal, dx12, gl) and WGPU_ADAPTER_NAME.";

/// `--name value` options and `--flag` switches after the subcommand.
pub(crate) struct Args {
    pub(crate) command: String,
    pub(crate) values: BTreeMap<String, String>,
    flags: Vec<String>,
    /// Every option in order, for options that may repeat (`values` keeps the last).
    all: Vec<(String, String)>,
}

impl Args {
    pub(crate) fn parse(raw: Vec<String>, flags: &[&str], options: &[&str]) -> Result<Args> {
        let mut it = raw.into_iter();
        let command = it.next().unwrap_or_default();
        let (mut values, mut seen_flags, mut all) = (BTreeMap::new(), Vec::new(), Vec::new());
        while let Some(arg) = it.next() {
            let name = arg.strip_prefix("--").ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "unexpected argument {arg:?}; options start with --"
                ))
            })?;
            if flags.contains(&name) {
                seen_flags.push(name.to_string());
            } else if options.contains(&name) {
                let value = it
                    .next()
                    .ok_or_else(|| Error::InvalidArgument(format!("--{name} needs a value")))?;
                all.push((name.to_string(), value.clone()));
                values.insert(name.to_string(), value);
            } else {
                return Err(Error::InvalidArgument(format!(
                    "unknown option --{name} for {command}; see dora-wgpu --help"
                )));
            }
        }
        Ok(Args {
            command,
            values,
            flags: seen_flags,
            all,
        })
    }

    /// Every value of a repeatable option, in order.
    fn paths(&self, name: &str) -> Vec<PathBuf> {
        let of_name = self.all.iter().filter(|(n, _)| n == name);
        of_name.map(|(_, v)| PathBuf::from(v)).collect()
    }

    pub(crate) fn required(&self, name: &str) -> Result<&str> {
        self.values
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| Error::InvalidArgument(format!("{} needs --{name}", self.command)))
    }

    pub(crate) fn path(&self, name: &str) -> Result<PathBuf> {
        self.required(name).map(PathBuf::from)
    }

    pub(crate) fn optional<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T> {
        match self.values.get(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| {
                Error::InvalidArgument(format!("--{name} {v:?} is not a valid value"))
            }),
        }
    }

    pub(crate) fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }
}

fn load_model(gpu: &Gpu, args: &Args) -> Result<Llama> {
    let mut model = Llama::load(gpu, &args.path("model")?)?;
    if let Some(dir) = args.values.get("adapter") {
        model.attach_adapter(&AdapterWeights::load(&PathBuf::from(dir))?)?;
    }
    Ok(model)
}

fn run(raw: Vec<String>) -> Result<()> {
    let command = raw.first().map(String::as_str).unwrap_or("");
    match command {
        "devices" => {
            let adapters = dora_wgpu::list_adapters(dora_wgpu::wgpu::Backends::all().with_env());
            if adapters.is_empty() {
                return Err(Error::NoAdapter(
                    "none found; install a Vulkan driver (e.g. Mesa's mesa-vulkan-drivers)".into(),
                ));
            }
            for a in adapters {
                println!(
                    "{:<8} {:<14} {}",
                    format!("{:?}", a.backend),
                    format!("{:?}", a.device_type),
                    a.name
                );
            }
            Ok(())
        }
        "eval" => {
            let args = Args::parse(raw, &["json"], &["model", "adapter", "data"])?;
            let gpu = Gpu::new()?;
            let model = load_model(&gpu, &args)?;
            let tokenizer = Tokenizer::from_dir(args.path("model")?)?;
            let data = args.path("data")?;
            let examples = dora_wgpu::data::read_jsonl(&data, &tokenizer)?;
            let vocab = model.config.vocab_size;
            dora_wgpu::data::check_examples_vocabulary(&data, &examples, &tokenizer, vocab)?;
            let report = tasks::evaluate(&model, &examples)?;
            if args.flag("json") {
                println!(
                    "{}",
                    serde_json::to_string(&report).expect("plain numbers serialize")
                );
            } else {
                println!(
                    "loss {:.6}  ppl {:.4}  tokens {}",
                    report.loss, report.ppl, report.tokens
                );
            }
            Ok(())
        }
        "generate" => {
            let args = Args::parse(
                raw,
                &["chat"],
                &[
                    "model",
                    "adapter",
                    "prompt",
                    "max-tokens",
                    "temperature",
                    "top-p",
                    "seed",
                ],
            )?;
            let sampling = Sampling {
                max_tokens: args.optional("max-tokens", 256)?,
                temperature: args.optional("temperature", 0.0)?,
                top_p: args.optional("top-p", 1.0)?,
                seed: args.optional("seed", 0)?,
            };
            let gpu = Gpu::new()?;
            let model = load_model(&gpu, &args)?;
            let tokenizer = Tokenizer::from_dir(args.path("model")?)?;
            let prompt = args.required("prompt")?;
            let ids = if args.flag("chat") {
                let text =
                    tokenizer.apply_chat_template(&[ChatMessage::new("user", prompt)], true)?;
                tokenizer.encode(&text, false)?
            } else {
                tokenizer.encode(prompt, true)?
            };
            let started = std::time::Instant::now();
            let mut stdout = std::io::stdout();
            let new = tasks::generate(&model, &tokenizer, &ids, &sampling, |text| {
                let _ = stdout.write_all(text.as_bytes());
                let _ = stdout.flush();
            })?;
            let secs = started.elapsed().as_secs_f64();
            println!();
            eprintln!(
                "{} tokens in {secs:.2}s ({:.2} tokens/s)",
                new.len(),
                new.len() as f64 / secs.max(1e-9)
            );
            Ok(())
        }
        "merge" => {
            let args = Args::parse(raw, &[], &["model", "adapter", "out"])?;
            let gpu = Gpu::new()?;
            let out = args.path("out")?;
            tasks::merge_model(&gpu, &args.path("model")?, &args.path("adapter")?, &out)?;
            println!("wrote {}", out.display());
            Ok(())
        }
        "train" => cli::train::run(raw),
        "analyze" => {
            let options = ["base", "adapter", "tuned", "json", "csv", "plot"];
            let args = Args::parse(raw, &[], &options)?;
            let base = args.path("base")?;
            let adapters = args.paths("adapter");
            let tuned = args.values.get("tuned").map(PathBuf::from);
            if adapters.is_empty() == tuned.is_none() {
                return Err(Error::InvalidArgument(
                    "analyze needs either --adapter DIR (repeatable) or --tuned DIR".into(),
                ));
            }
            let gpu = Gpu::new()?;
            let records = match tuned {
                Some(tuned) => tasks::analyze_tuned(&gpu, &base, &tuned)?,
                None => tasks::analyze_adapters(&gpu, &base, &adapters)?,
            };
            let fits = analyze::fits(&records);
            print!("{}", analyze::format_report(&records, &fits));
            let json = args.optional("json", PathBuf::from("decomposition.json"))?;
            let csv = args.optional("csv", PathBuf::from("decomposition.csv"))?;
            let plot = args.optional("plot", PathBuf::from("decomposition"))?;
            analyze::write_json(&json, &records)?;
            analyze::write_csv(&csv, &records)?;
            analyze::decomposition_chart(&records).save(&plot)?;
            let (p, j, c) = (plot.display(), json.display(), csv.display());
            println!("\nwrote {j}, {c}, {p}.png and {p}.svg");
            Ok(())
        }
        "" | "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(Error::InvalidArgument(format!(
            "unknown command {other:?}; see dora-wgpu --help"
        ))),
    }
}

/// The arguments after the program name; one that is not UTF-8 is an error
/// naming it (`std::env::args` would panic).
fn utf8_args() -> Result<Vec<String>> {
    std::env::args_os()
        .skip(1)
        .map(|a| {
            a.into_string()
                .map_err(|a| Error::InvalidArgument(format!("argument {a:?} is not valid UTF-8")))
        })
        .collect()
}

fn main() {
    // Quiet unless asked (RUST_LOG=info): wgpu logs probing failures of backends it does not use.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("off")).init();
    // A panic is a bug in dora-wgpu, never a user error: one line, with the
    // source location a bug report needs.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("error: {}", dora_wgpu::describe_panic(info))
    }));
    if let Err(e) = utf8_args().and_then(run) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

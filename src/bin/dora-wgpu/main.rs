//! The `dora-wgpu` command line: clap parses the arguments, the library does
//! the work. Every failure is one line on stderr and a non-zero exit code.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::error::ErrorKind;
use clap::{ArgGroup, Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use dora_wgpu::io::AdapterWeights;
use dora_wgpu::nn::Llama;
use dora_wgpu::tasks::{self, analyze, AdapterFormat, Sampling};
use dora_wgpu::{ChatMessage, Error, Gpu, Result, Tokenizer};

mod progress;
mod train;

/// DoRA (weight-decomposed low-rank adaptation) fine-tuning on any GPU through wgpu.
#[derive(Parser)]
#[command(
    name = "dora-wgpu",
    version,
    args_override_self = true,
    after_help = "Choose the GPU with WGPU_BACKEND (vulkan, metal, dx12, gl) and WGPU_ADAPTER_NAME."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Args)]
struct DevicesArgs {
    /// Print the reports as JSON
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// List the GPU adapters, their backends and what they offer the kernels
    Devices(DevicesArgs),
    /// Report the loss and perplexity of a model (and adapter) on a JSONL file
    Eval(EvalArgs),
    /// Stream a continuation of a prompt (KV cache; greedy unless --temperature)
    Generate(GenerateArgs),
    /// Merge an adapter into its model, writing a plain Hugging Face model directory
    Merge(MergeArgs),
    /// Fine-tune a model with DoRA or LoRA (without --model and --data: the embedded demo)
    Train(Box<train::TrainArgs>),
    /// The DoRA paper's magnitude/direction (ΔM/ΔD) analysis of adapted weights
    Analyze(AnalyzeArgs),
    /// Convert an adapter between PEFT's files and MLX-LM's (LoRA and DoRA, tensors exact)
    Convert(ConvertArgs),
    /// Print a shell completion script
    Completions {
        /// The shell to complete for
        shell: clap_complete::Shell,
    },
}

#[derive(Args)]
struct EvalArgs {
    /// Hugging Face model directory, or a GGUF file
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// PEFT adapter directory (LoRA or DoRA) to apply [default: none]
    #[arg(long, value_name = "DIR")]
    adapter: Option<PathBuf>,
    /// JSONL file of examples ({"text"}, {"prompt", "completion"} or {"messages"} lines)
    #[arg(long, value_name = "FILE")]
    data: PathBuf,
    /// Print the report as one JSON object
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct GenerateArgs {
    /// Hugging Face model directory, or a GGUF file
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// PEFT adapter directory (LoRA or DoRA) to apply [default: none]
    #[arg(long, value_name = "DIR")]
    adapter: Option<PathBuf>,
    /// The prompt
    #[arg(long, value_name = "TEXT", allow_hyphen_values = true)]
    prompt: String,
    /// Wrap the prompt in the model's chat template as a user message
    #[arg(long)]
    chat: bool,
    /// Tokens to generate at most
    #[arg(long, value_name = "N", default_value_t = Sampling::default().max_tokens)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy
    #[arg(long, value_name = "T", default_value_t = Sampling::default().temperature)]
    temperature: f32,
    /// Nucleus sampling: the smallest set of tokens with this probability mass
    #[arg(long, value_name = "P", default_value_t = Sampling::default().top_p)]
    top_p: f32,
    /// Sampling seed
    #[arg(long, value_name = "S", default_value_t = Sampling::default().seed)]
    seed: u64,
}

#[derive(Args)]
struct MergeArgs {
    /// Hugging Face model directory, or a GGUF file
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// PEFT adapter directory to merge into the model's weights
    #[arg(long, value_name = "DIR")]
    adapter: PathBuf,
    /// New (or empty) output directory, or a new .gguf file (from a GGUF --model)
    #[arg(long, value_name = "DIR|FILE.gguf")]
    out: PathBuf,
    /// Tensor format of a merged .gguf file: f16, bf16, q8_0, or the base's own (same) [default: same]
    #[arg(long, value_name = "TYPE", value_parser = tasks::OutType::NAMES)]
    outtype: Option<String>,
}

#[derive(Args)]
struct ConvertArgs {
    /// The adapter's format
    #[arg(long, value_name = "FORMAT", value_parser = train::Choices(&[AdapterFormat::Peft, AdapterFormat::Mlx]))]
    from: AdapterFormat,
    /// The format to write
    #[arg(long, value_name = "FORMAT", value_parser = train::Choices(&[AdapterFormat::Peft, AdapterFormat::Mlx]))]
    to: AdapterFormat,
    /// The adapter directory to convert
    #[arg(long, value_name = "DIR")]
    adapter: PathBuf,
    /// New (or empty) output directory
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// The Hugging Face model the adapter is for: checks the tensors' shapes, and counts layers for an adapter of only some (PEFT to MLX needs it then) [default: none]
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
}

#[derive(Args)]
#[command(group(ArgGroup::new("weights").required(true).args(["adapter", "tuned"])))]
struct AnalyzeArgs {
    /// The base model directory, or a GGUF file
    #[arg(long, value_name = "DIR")]
    base: PathBuf,
    /// PEFT adapter directory of the base model (repeatable)
    #[arg(long, value_name = "DIR")]
    adapter: Vec<PathBuf>,
    /// A fully fine-tuned model directory, instead of --adapter
    #[arg(long, value_name = "DIR")]
    tuned: Option<PathBuf>,
    /// Per-weight records as JSON
    #[arg(long, value_name = "FILE", default_value = "decomposition.json")]
    json: PathBuf,
    /// Per-weight records as CSV
    #[arg(long, value_name = "FILE", default_value = "decomposition.csv")]
    csv: PathBuf,
    /// The ΔM/ΔD scatter, written as STEM.png and STEM.svg
    #[arg(long, value_name = "STEM", default_value = "decomposition")]
    plot: PathBuf,
}

/// The whole command line: the derived parser, with values that may start
/// with `-` (so `--alpha -1` reaches the range check) and the train
/// options' defaults, which come from `TrainConfig`, in their help.
fn command() -> clap::Command {
    Cli::command()
        .mut_subcommands(|sub| {
            sub.mut_args(|a| {
                if a.get_action().takes_values() {
                    a.allow_negative_numbers(true)
                } else {
                    a
                }
            })
        })
        .mut_subcommand("train", train::document_defaults)
}

fn load_model(gpu: &Gpu, model: &Path, adapter: Option<&Path>) -> Result<Llama> {
    let mut model = Llama::load(gpu, model)?;
    if let Some(dir) = adapter {
        model.attach_adapter(&AdapterWeights::load(dir)?)?;
    }
    Ok(model)
}

fn devices(args: DevicesArgs) -> Result<()> {
    let adapters = dora_wgpu::describe_adapters(dora_wgpu::wgpu::Backends::all().with_env());
    if adapters.is_empty() {
        return Err(Error::NoAdapter(
            "none found; install a Vulkan driver (e.g. Mesa's mesa-vulkan-drivers)".into(),
        ));
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&adapters).expect("reports serialize")
        );
        return Ok(());
    }
    for a in adapters {
        println!("{:<8} {:<14} {}", a.backend, a.device_type, a.name);
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        let coop = if a.cooperative_matrix_configs.is_empty() {
            yes_no(a.cooperative_matrix).to_string()
        } else {
            a.cooperative_matrix_configs.join(", ")
        };
        println!(
            "         subgroups {} ({}..{}), shader-f16 {}, timestamps {}, cooperative matrix {coop}; \
             workgroup memory {} KiB, {} invocations",
            yes_no(a.subgroups),
            a.subgroup_sizes.0,
            a.subgroup_sizes.1,
            yes_no(a.shader_f16),
            yes_no(a.timestamp_query),
            a.max_compute_workgroup_storage_size / 1024,
            a.max_compute_invocations_per_workgroup
        );
        println!("         cooperative matmul {}", a.cooperative_matmul);
    }
    Ok(())
}

fn eval(args: EvalArgs) -> Result<()> {
    let gpu = Gpu::new()?;
    let model = load_model(&gpu, &args.model, args.adapter.as_deref())?;
    let tokenizer = Tokenizer::load(&args.model)?;
    let examples = dora_wgpu::text::data::read_jsonl(&args.data, &tokenizer)?;
    let vocab = model.config.vocab_size;
    dora_wgpu::text::data::check_examples_vocabulary(&args.data, &examples, &tokenizer, vocab)?;
    let report = tasks::evaluate(&model, &examples)?;
    if args.json {
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

fn generate(args: GenerateArgs) -> Result<()> {
    let sampling = Sampling {
        max_tokens: args.max_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
    };
    let gpu = Gpu::new()?;
    let model = load_model(&gpu, &args.model, args.adapter.as_deref())?;
    let tokenizer = Tokenizer::load(&args.model)?;
    let ids = if args.chat {
        let user = [ChatMessage::new("user", &args.prompt)];
        let text = tokenizer.apply_chat_template(&user, true)?;
        tokenizer.encode(&text, false)?
    } else {
        tokenizer.encode(&args.prompt, true)?
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

fn merge(args: MergeArgs) -> Result<()> {
    let to_gguf = args.out.extension().is_some_and(|e| e == "gguf");
    let gpu = Gpu::new()?;
    if to_gguf {
        let name = args.outtype.as_deref().unwrap_or("same");
        let out_type = tasks::OutType::parse(name).expect("clap checked the name");
        let summary = tasks::merge_to_gguf(&gpu, &args.model, &args.adapter, &args.out, out_type)?;
        println!("wrote {} ({summary})", args.out.display());
        return Ok(());
    }
    if args.outtype.is_some() {
        return Err(Error::InvalidArgument(
            "--outtype applies to a .gguf --out only".into(),
        ));
    }
    tasks::merge_model(&gpu, &args.model, &args.adapter, &args.out)?;
    println!("wrote {}", args.out.display());
    Ok(())
}

fn analyze(args: AnalyzeArgs) -> Result<()> {
    let gpu = Gpu::new()?;
    let records = match &args.tuned {
        Some(tuned) => tasks::analyze_tuned(&gpu, &args.base, tuned)?,
        None => tasks::analyze_adapters(&gpu, &args.base, &args.adapter)?,
    };
    let fits = analyze::fits(&records);
    print!("{}", analyze::format_report(&records, &fits));
    let (json, csv, plot) = (&args.json, &args.csv, &args.plot);
    analyze::write_json(json, &records)?;
    analyze::write_csv(csv, &records)?;
    analyze::decomposition_chart(&records).save(plot)?;
    let (p, j, c) = (plot.display(), json.display(), csv.display());
    println!("\nwrote {j}, {c}, {p}.png and {p}.svg");
    Ok(())
}

fn convert(args: ConvertArgs) -> Result<()> {
    let summary = tasks::convert_adapter(
        args.from,
        args.to,
        &args.adapter,
        &args.out,
        args.model.as_deref(),
    )?;
    println!("wrote {}: {summary}", args.out.display());
    Ok(())
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Devices(args) => devices(args),
        Command::Eval(args) => eval(args),
        Command::Generate(args) => generate(args),
        Command::Merge(args) => merge(args),
        Command::Train(args) => train::run(*args),
        Command::Analyze(args) => analyze(args),
        Command::Convert(args) => convert(args),
        Command::Completions { shell } => {
            // Into a buffer first: clap_complete panics on a failed write.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut self::command(), "dora-wgpu", &mut script);
            match std::io::stdout().write_all(&script) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Error::Io {
                    path: "stdout".into(),
                    source: e,
                }),
                _ => Ok(()),
            }
        }
    }
}

/// The arguments after the program name; one that is not UTF-8 is an error
/// naming it (clap would only say that some argument is not).
fn utf8_args() -> Result<Vec<String>> {
    std::env::args_os()
        .skip(1)
        .map(|a| {
            a.into_string()
                .map_err(|a| Error::InvalidArgument(format!("argument {a:?} is not valid UTF-8")))
        })
        .collect()
}

/// A clap error as one line: clap's reason and tips without the usage block,
/// then where to read more, e.g. `error: unexpected argument '--bogus'
/// found; see 'dora-wgpu train --help'`.
fn one_line(err: &clap::Error, args: &[String]) -> String {
    let text = err.render().to_string();
    let before_usage = text.split("\nUsage:").next().unwrap_or_default();
    let mut parts = Vec::new();
    for block in before_usage.split("\n\n") {
        let mut lines = block.lines().map(str::trim).filter(|l| !l.is_empty());
        let Some(first) = lines.next() else { continue };
        // "to pass '--x' as a value, use '-- --x'": no value here is
        // positional; "For more information, try '--help'": said below.
        if first.starts_with("tip: to pass") || first.starts_with("For more information") {
            continue;
        }
        let rest: Vec<&str> = lines.collect();
        parts.push(if rest.is_empty() {
            first.to_string()
        } else {
            format!("{first} {}", rest.join(", "))
        });
    }
    let message = parts.join("; ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    let message = match err.kind() {
        ErrorKind::InvalidSubcommand => {
            message.replacen("unrecognized subcommand", "unknown command", 1)
        }
        _ => message.to_string(),
    };
    let subcommand = args
        .first()
        .filter(|a| Cli::command().find_subcommand(a.as_str()).is_some());
    let help = match subcommand {
        Some(s) => format!("dora-wgpu {s} --help"),
        None => "dora-wgpu --help".to_string(),
    };
    format!("error: {message}; see '{help}'")
}

fn main() {
    // Our warnings only unless asked (RUST_LOG=info): wgpu logs probing
    // failures of backends it does not use.
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("off,dora_wgpu=warn"),
    )
    .init();
    // A panic is a bug in dora-wgpu, never a user error: one line, with the
    // source location a bug report needs.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("error: {}", dora_wgpu::describe_panic(info))
    }));
    let args = match utf8_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let program = std::iter::once("dora-wgpu".to_string()).chain(args.iter().cloned());
    let parsed = command()
        .try_get_matches_from(program)
        .and_then(|matches| Cli::from_arg_matches(&matches));
    let cli = match parsed {
        Ok(cli) => cli,
        // --help and --version: printed as clap writes them, exit code 0.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            eprintln!("{}", one_line(&e, &args));
            std::process::exit(2);
        }
    };
    let Some(command) = cli.command else {
        // No subcommand: the overview, as `--help` prints it.
        let _ = command().print_help();
        return;
    };
    if let Err(e) = run(command) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

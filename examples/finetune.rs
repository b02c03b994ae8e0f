//! Fine-tuning from a program that owns its wgpu device, as a desktop app
//! with a renderer would: the app creates the device, hands a clone to
//! dora-wgpu, follows progress through the callback and may cancel at any
//! time (here: once the validation loss is low enough, or after `--max-seconds`).
//!
//!     cargo run --release --example finetune -- [--model DIR --data DIR] [--out DIR] [--max-seconds S]
//!
//! Without --model/--data it uses the embedded default model and data.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use dora_wgpu::nn::Llama;
use dora_wgpu::text::data::read_jsonl;
use dora_wgpu::train::{Event, Stop, TrainConfig, Trainer};
use dora_wgpu::wgpu;
use dora_wgpu::{Gpu, Tokenizer};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// The application's own device: any adapter wgpu finds, default limits.
fn app_device() -> (wgpu::Device, wgpu::Queue, wgpu::AdapterInfo) {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        ..Default::default()
    }))
    .expect("a GPU adapter (install Mesa's lavapipe if the machine has none)");
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("my app"),
        required_limits: adapter.limits(),
        ..Default::default()
    }))
    .expect("a device");
    (device, queue, adapter.get_info())
}

fn main() -> dora_wgpu::Result<()> {
    let (device, queue, info) = app_device();
    // The app keeps using `device` for its own work; dora-wgpu gets clones.
    let gpu = Gpu::from_device(device.clone(), queue.clone(), info)?;
    println!("training on {} ({:?})", gpu.adapter_name(), gpu.backend());

    let (model_dir, data_dir) = match (arg("--model"), arg("--data")) {
        (Some(m), Some(d)) => (PathBuf::from(m), PathBuf::from(d)),
        _ => (
            dora_wgpu::assets::default_model_dir()?,
            dora_wgpu::assets::default_data_dir()?,
        ),
    };
    let out = PathBuf::from(arg("--out").unwrap_or_else(|| "adapters/finetune-example".into()));
    let max_seconds: f64 =
        arg("--max-seconds").map_or(f64::INFINITY, |s| s.parse().unwrap_or(f64::INFINITY));

    let tokenizer = Tokenizer::load(&model_dir)?;
    let train = read_jsonl(&data_dir.join("train.jsonl"), &tokenizer)?;
    let valid = read_jsonl(&data_dir.join("valid.jsonl"), &tokenizer)?;
    let model = Llama::load(&gpu, &model_dir)?;
    let config = TrainConfig {
        iters: 150,
        lr: 5e-3,
        steps_per_eval: 25,
        save_every: 0,
        ..TrainConfig::default()
    };
    let _ = std::fs::remove_dir_all(out.join("checkpoints"));
    let mut trainer = Trainer::new(model, config, train, valid)?.with_output_dir(&out);

    // Another thread (a UI's cancel button) could set this flag at any time.
    let cancel = trainer.cancel_flag();
    let started = Instant::now();
    let summary = trainer.run(|event| match event {
        Event::Step(s) => {
            if s.step % 10 == 0 {
                println!(
                    "step {:>4}  loss {:.4}  {:.0} tok/s",
                    s.step, s.loss, s.tokens_per_s
                );
            }
            if started.elapsed().as_secs_f64() > max_seconds {
                cancel.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            ControlFlow::Continue(())
        }
        Event::Validation { step, loss, .. } => {
            println!("step {step:>4}  val loss {loss:.4}");
            // Good enough: stop early (the trainer saves a checkpoint first).
            if loss < 0.25 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }
        Event::Saved { step, dir } => {
            println!("step {step:>4}  saved {}", dir.display());
            ControlFlow::Continue(())
        }
    })?;
    let how = match summary.stop {
        Stop::Finished => "finished",
        Stop::Cancelled => "stopped early",
    };
    println!(
        "{how} after {} steps; PEFT adapter in {} (load it with PeftModel.from_pretrained)",
        summary.step,
        out.display()
    );
    // The device is still the app's: e.g. submit more work on it.
    queue.submit([]);
    Ok(())
}

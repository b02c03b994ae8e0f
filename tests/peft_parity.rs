//! DoRA and LoRA layers against Hugging Face PEFT (fixtures written by
//! tools/gen_fixtures.py with torch + peft): outputs, gradients, three AdamW
//! steps, merged weights, and adapter files in both directions.

mod common;

use std::collections::BTreeMap;

use common::*;
use dora_wgpu::io::{read_safetensors, AdapterWeights, HostTensor, ModuleAdapter};
use dora_wgpu::nn::{lora_scaling, DoraLinear, DoraPath, Linear, LoraLinear, Rng};
use dora_wgpu::ops;
use dora_wgpu::optim::{AdamW, AdamWConfig};
use dora_wgpu::{DType, Tensor};
use serde_json::Value;

/// Tracks the largest relative error seen per quantity, for the report.
#[derive(Default)]
struct Worst(BTreeMap<String, f64>);

impl Worst {
    fn check(&mut self, what: &str, label: &str, got: &[f32], want: &[f32], tol: f64) {
        let e = rel_err(got, want);
        assert!(e <= tol, "{label} {what}: relative error {e:e} > {tol:e}");
        let w = self.0.entry(what.to_string()).or_insert(0.0);
        *w = w.max(e);
    }
}

enum Layer {
    Dora(DoraLinear),
    Lora(LoraLinear),
}

impl Layer {
    fn forward(&self, x: &Tensor) -> dora_wgpu::Result<Tensor> {
        match self {
            Layer::Dora(l) => l.forward(x),
            Layer::Lora(l) => l.forward(x),
        }
    }
    fn parameters(&self) -> Vec<Tensor> {
        match self {
            Layer::Dora(l) => l.parameters(),
            Layer::Lora(l) => l.parameters(),
        }
    }
}

struct Case {
    name: String,
    cfg: Value,
    t: BTreeMap<String, HostTensor>,
}

impl Case {
    fn get(&self, key: &str) -> Vec<f32> {
        self.tensor(key).to_f32()
    }
    fn tensor(&self, key: &str) -> &HostTensor {
        self.t
            .get(&format!("{}.{key}", self.name))
            .unwrap_or_else(|| panic!("fixture lacks {}.{key}", self.name))
    }
    fn has(&self, key: &str) -> bool {
        self.t.contains_key(&format!("{}.{key}", self.name))
    }
    fn use_dora(&self) -> bool {
        self.cfg["use_dora"].as_bool().unwrap()
    }
    fn base_dtype(&self) -> DType {
        match self.cfg["base_dtype"].as_str().unwrap() {
            "bf16" => DType::BF16,
            _ => DType::F32,
        }
    }
    fn scaling(&self) -> f32 {
        let s = lora_scaling(
            self.cfg["lora_alpha"].as_f64().unwrap() as f32,
            self.cfg["r"].as_u64().unwrap() as usize,
            self.cfg["use_rslora"].as_bool().unwrap(),
        );
        assert_eq!(
            s as f64,
            self.cfg["scaling"].as_f64().unwrap(),
            "{}: scaling",
            self.name
        );
        s
    }
    fn layer(&self, path: DoraPath) -> Layer {
        let gpu = gpu();
        let w = self.tensor("weight");
        // bf16 configs hold bf16-representable values: stored as bf16 they are exact.
        let weight = Tensor::from_f32_as(gpu, &w.to_f32(), &w.shape, self.base_dtype()).unwrap();
        let bias = self
            .has("bias")
            .then(|| self.tensor("bias").to_gpu(gpu).unwrap());
        let base = Linear::new(weight, bias).unwrap();
        let adapter = ModuleAdapter {
            lora_a: self.tensor("lora_A").clone(),
            lora_b: self.tensor("lora_B").clone(),
            magnitude: self
                .has("magnitude")
                .then(|| self.tensor("magnitude").clone()),
        };
        if self.use_dora() {
            let mut l = DoraLinear::from_adapter(base, &adapter, self.scaling(), 0.0).unwrap();
            l.path = path;
            Layer::Dora(l)
        } else {
            Layer::Lora(LoraLinear::from_adapter(base, &adapter, self.scaling(), 0.0).unwrap())
        }
    }
}

fn cases() -> (Vec<Case>, Value) {
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("peft_layers.json")).unwrap())
            .unwrap();
    let tensors = read_safetensors(&fixture("peft_layers.safetensors")).unwrap();
    let cases = json["configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|cfg| Case {
            name: cfg["name"].as_str().unwrap().to_string(),
            cfg: cfg.clone(),
            t: tensors.clone(),
        })
        .collect();
    (cases, json)
}

#[test]
fn layers_match_peft_outputs_gradients_and_adamw_steps() {
    let gpu = gpu();
    let (cases, json) = cases();
    assert!(cases.len() >= 8);
    let a = &json["adamw"];
    let adamw = AdamWConfig {
        lr: a["lr"].as_f64().unwrap() as f32,
        beta1: a["beta1"].as_f64().unwrap() as f32,
        beta2: a["beta2"].as_f64().unwrap() as f32,
        eps: a["eps"].as_f64().unwrap() as f32,
        weight_decay: a["weight_decay"].as_f64().unwrap() as f32,
    };
    let mut worst = Worst::default();
    for case in &cases {
        let label = &case.name;
        // The base weights are exact in every config (bf16 ones hold bf16 values), so
        // the tolerance is f32's everywhere; bf16 configs are stated separately in the README.
        let tol = 1e-5;
        let x_host = case.tensor("x");
        let r_host = case.tensor("grad_out");
        for path in [DoraPath::Factored, DoraPath::Direct] {
            if path == DoraPath::Direct && !case.use_dora() {
                continue;
            }
            let layer = case.layer(path);
            let x = x_host.to_gpu(gpu).unwrap().into_param().unwrap();
            let y = layer.forward(&x).unwrap();
            assert_eq!(y.shape(), r_host.shape.as_slice());
            worst.check("y", label, &y.to_vec_f32().unwrap(), &case.get("y"), tol);
            let r = r_host.to_gpu(gpu).unwrap();
            ops::sum_all(&ops::mul(&y, &r).unwrap())
                .unwrap()
                .backward()
                .unwrap();
            let params = layer.parameters();
            let names = ["lora_A", "lora_B", "magnitude"];
            for (p, name) in params.iter().zip(names) {
                let got = p.grad().unwrap().to_vec_f32().unwrap();
                worst.check(
                    &format!("grad_{name}"),
                    label,
                    &got,
                    &case.get(&format!("grad_{name}")),
                    tol,
                );
            }
            worst.check(
                "grad_x",
                label,
                &x.grad().unwrap().to_vec_f32().unwrap(),
                &case.get("grad_x"),
                tol,
            );
        }

        // Three AdamW steps from the initial values, same x and R each step.
        let layer = case.layer(DoraPath::Factored);
        let params = layer.parameters();
        let mut opt = AdamW::new(params.clone(), adamw).unwrap();
        let x = x_host.to_gpu(gpu).unwrap();
        let r = r_host.to_gpu(gpu).unwrap();
        for _ in 0..a["steps"].as_u64().unwrap() {
            opt.zero_grad();
            let y = layer.forward(&x).unwrap();
            ops::sum_all(&ops::mul(&y, &r).unwrap())
                .unwrap()
                .backward()
                .unwrap();
            opt.step().unwrap();
        }
        for (p, name) in params.iter().zip(["lora_A", "lora_B", "magnitude"]) {
            worst.check(
                &format!("step3_{name}"),
                label,
                &p.to_vec_f32().unwrap(),
                &case.get(&format!("step3_{name}")),
                tol,
            );
        }

        // Merged weights against PEFT's merge_and_unload().
        let merged = match case.layer(DoraPath::Factored) {
            Layer::Dora(l) => l.merge().unwrap().0,
            Layer::Lora(l) => l.merged_weight().unwrap(),
        };
        assert_eq!(
            merged.dtype(),
            case.base_dtype(),
            "{label}: merged weight keeps the base dtype"
        );
        // A bf16 base stores the merged weight in bf16: compare at bf16's precision.
        let merge_tol = if case.base_dtype() == DType::BF16 {
            4e-3
        } else {
            tol
        };
        worst.check(
            &format!("merged_weight {}", case.base_dtype().name()),
            label,
            &merged.to_vec_f32().unwrap(),
            &case.get("merged_weight"),
            merge_tol,
        );
    }
    eprintln!("largest relative error against PEFT, per quantity:");
    for (k, v) in &worst.0 {
        eprintln!("  {k:16} {v:.2e}");
    }
}

/// The base weights of the fixture's tiny Llama-shaped model, by module path.
fn tiny_model() -> (
    BTreeMap<String, HostTensor>,
    BTreeMap<String, (usize, usize)>,
) {
    let io = read_safetensors(&fixture("peft_adapter_io.safetensors")).unwrap();
    let shapes = io
        .iter()
        .filter_map(|(k, t)| {
            let m = k.strip_suffix(".weight")?;
            (!k.starts_with("merged.")).then(|| (m.to_string(), (t.shape[0], t.shape[1])))
        })
        .collect();
    (io, shapes)
}

fn base_linear(io: &BTreeMap<String, HostTensor>, module: &str) -> Linear {
    base_linear_on(gpu(), io, module)
}

fn base_linear_on(gpu: &dora_wgpu::Gpu, io: &BTreeMap<String, HostTensor>, module: &str) -> Linear {
    let w = io[&format!("{module}.weight")].to_gpu(gpu).unwrap();
    let b = io
        .get(&format!("{module}.bias"))
        .map(|b| b.to_gpu(gpu).unwrap());
    Linear::new(w, b).unwrap()
}

#[test]
fn adapter_saved_by_peft_loads_and_reproduces_its_outputs_and_merge() {
    let adapter = AdapterWeights::load(&fixture("peft_adapter")).unwrap();
    let (io, shapes) = tiny_model();
    adapter.check_shapes(&shapes).unwrap();
    assert!(adapter.config.use_dora);
    assert_eq!(adapter.modules.len(), 6);
    for (module, weights) in &adapter.modules {
        assert!(adapter.config.targets(module), "{module} is a target");
        let layer = DoraLinear::from_adapter(
            base_linear(&io, module),
            weights,
            adapter.config.scaling(module),
            0.0,
        )
        .unwrap();
        let x = io[&format!("x.{module}")].to_gpu(gpu()).unwrap();
        let y = layer.forward(&x).unwrap().to_vec_f32().unwrap();
        let e = rel_err(&y, &io[&format!("y.{module}")].to_f32());
        assert!(e < 1e-5, "{module}: output relative error {e:e}");
        let merged = layer.merge().unwrap().0.to_vec_f32().unwrap();
        let e = rel_err(&merged, &io[&format!("merged.{module}")].to_f32());
        assert!(e < 1e-5, "{module}: merged weight relative error {e:e}");
    }
}

/// A context whose row reductions go through workgroup memory on every
/// device. The committed `rust_adapter` was written that way; subgroup
/// reductions sum in another order (last-bit differences in the initial
/// magnitudes ‖W‖), and the staleness check below compares bits.
fn workgroup_memory_gpu() -> &'static dora_wgpu::Gpu {
    static GPU: std::sync::OnceLock<dora_wgpu::Gpu> = std::sync::OnceLock::new();
    GPU.get_or_init(|| {
        let options = dora_wgpu::GpuOptions {
            subgroups: false,
            ..Default::default()
        };
        dora_wgpu::Gpu::with_options(&options).expect("GPU tests need an adapter")
    })
}

/// The adapter this library writes for the tiny model: fresh layers moved
/// off their initial values deterministically, so the file is the same on every run.
fn rust_adapter() -> (AdapterWeights, BTreeMap<String, DoraLinear>) {
    let gpu = workgroup_memory_gpu;
    let (io, shapes) = tiny_model();
    let options = dora_wgpu::nn::AdapterOptions {
        rank: 4,
        alpha: 8.0,
        ..Default::default()
    };
    let mut rng = Rng::new(2024);
    let mut layers = BTreeMap::new();
    let mut modules = BTreeMap::new();
    for (i, module) in shapes.keys().enumerate() {
        let layer =
            DoraLinear::new(base_linear_on(gpu(), &io, module), &options, i as u64).unwrap();
        let nb = layer.lora_b.numel();
        let db = Tensor::from_f32(gpu(), &random(&mut rng, nb), layer.lora_b.shape()).unwrap();
        ops::add_assign(&layer.lora_b, &db, 0.3).unwrap();
        let dm = Tensor::from_f32(
            gpu(),
            &random(&mut rng, layer.magnitude.numel()),
            layer.magnitude.shape(),
        )
        .unwrap();
        ops::add_assign(&layer.magnitude, &dm, 0.1).unwrap();
        modules.insert(module.clone(), layer.to_adapter().unwrap());
        layers.insert(module.clone(), layer);
    }
    let mut config =
        dora_wgpu::io::AdapterConfig::new(4, 8.0, true, &["q_proj", "v_proj", "down_proj"]);
    config.base_model_name_or_path = Some("tiny-fixture".into());
    (AdapterWeights { config, modules }, layers)
}

#[test]
fn adapter_saved_here_loads_in_peft_and_reproduces_our_outputs() {
    let (adapter, layers) = rust_adapter();
    let dir = std::env::temp_dir().join(format!("dora-wgpu-rust-adapter-{}", std::process::id()));
    adapter.save(&dir).unwrap();
    // What we save reads back unchanged.
    assert_eq!(AdapterWeights::load(&dir).unwrap(), adapter);
    let committed = fixture("rust_adapter");
    if std::env::var_os("DORA_WGPU_WRITE_FIXTURES").is_some() {
        adapter.save(&committed).unwrap();
        eprintln!(
            "wrote {}; now run tools/gen_fixtures.py to record PEFT's outputs",
            committed.display()
        );
    }
    // The committed copy, which tools/gen_fixtures.py loaded into PEFT, is what this code writes.
    assert_eq!(
        AdapterWeights::load(&committed).unwrap().modules,
        adapter.modules,
        "tests/fixtures/rust_adapter is stale: rerun with DORA_WGPU_WRITE_FIXTURES=1, then tools/gen_fixtures.py"
    );
    let peft = read_safetensors(&fixture("rust_adapter_peft_outputs.safetensors")).unwrap();
    let (io, _) = tiny_model();
    for (module, layer) in &layers {
        let x = io[&format!("x.{module}")]
            .to_gpu(workgroup_memory_gpu())
            .unwrap();
        let y = layer.forward(&x).unwrap().to_vec_f32().unwrap();
        let e = rel_err(&y, &peft[&format!("y.{module}")].to_f32());
        assert!(
            e < 1e-5,
            "{module}: PEFT's output from our adapter differs by {e:e}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

//! AdamW against torch.optim.AdamW (tests/fixtures/adamw.json, written by
//! tools/gen_fixtures.py): several steps, three hyper-parameter sets.

mod common;

use common::*;
use dora_wgpu::optim::{AdamW, AdamWConfig};
use dora_wgpu::Tensor;
use serde_json::Value;

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn fixture() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/adamw.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("run tools/gen_fixtures.py"))
        .unwrap()
}

#[test]
fn adamw_matches_torch_step_by_step() {
    let gpu = gpu();
    let fx = fixture();
    let mut worst = 0.0f64;
    for case in fx["cases"].as_array().unwrap() {
        let c = &case["config"];
        let config = AdamWConfig {
            lr: c["lr"].as_f64().unwrap() as f32,
            beta1: c["beta1"].as_f64().unwrap() as f32,
            beta2: c["beta2"].as_f64().unwrap() as f32,
            eps: c["eps"].as_f64().unwrap() as f32,
            weight_decay: c["weight_decay"].as_f64().unwrap() as f32,
        };
        let shapes: Vec<Vec<usize>> = serde_json::from_value(case["shapes"].clone()).unwrap();
        let params: Vec<Tensor> = case["init"]
            .as_array()
            .unwrap()
            .iter()
            .zip(&shapes)
            .map(|(v, s)| Tensor::param(gpu, &floats(v), s).unwrap())
            .collect();
        let mut opt = AdamW::new(params.clone(), config).unwrap();
        for (step, s) in case["steps"].as_array().unwrap().iter().enumerate() {
            opt.zero_grad();
            for ((p, g), shape) in params
                .iter()
                .zip(s["grads"].as_array().unwrap())
                .zip(&shapes)
            {
                // Gradients arrive through backward: d/dp Σ p ⊙ g = g.
                let gt = Tensor::from_f32(gpu, &floats(g), shape).unwrap();
                dora_wgpu::ops::sum_all(&dora_wgpu::ops::mul(p, &gt).unwrap())
                    .unwrap()
                    .backward()
                    .unwrap();
            }
            opt.step().unwrap();
            for (i, (p, want)) in params
                .iter()
                .zip(s["params"].as_array().unwrap())
                .enumerate()
            {
                let want: Vec<f64> = floats(want).iter().map(|&x| x as f64).collect();
                let got = p.to_vec_f32().unwrap();
                worst = worst.max(max_rel_err(&got, &want, 1e-3));
                assert_close(
                    &format!("{config:?} step {} param {i}", step + 1),
                    &got,
                    &want,
                    1e-5,
                    1e-6,
                );
            }
        }
        assert_eq!(opt.steps(), 5);
    }
    eprintln!("AdamW vs torch: worst relative error {worst:e}");
}

#[test]
fn scaled_step_equals_a_step_on_scaled_gradients() {
    let gpu = gpu();
    let init = [0.3f32, -1.2, 2.0, 0.0];
    let grad = [0.5f32, -0.25, 1.0, 2.0];
    let run = |scale_in_step: bool| {
        let p = Tensor::param(gpu, &init, &[4]).unwrap();
        let mut opt = AdamW::new(
            vec![p.clone()],
            AdamWConfig {
                lr: 0.1,
                ..Default::default()
            },
        )
        .unwrap();
        for _ in 0..3 {
            opt.zero_grad();
            let g: Vec<f32> = grad
                .iter()
                .map(|g| if scale_in_step { *g } else { g * 0.25 })
                .collect();
            let gt = Tensor::from_f32(gpu, &g, &[4]).unwrap();
            dora_wgpu::ops::sum_all(&dora_wgpu::ops::mul(&p, &gt).unwrap())
                .unwrap()
                .backward()
                .unwrap();
            if scale_in_step {
                opt.step_scaled(0.25).unwrap();
            } else {
                opt.step().unwrap();
            }
        }
        p.to_vec_f32().unwrap()
    };
    let (a, b) = (run(true), run(false));
    assert_close("scaled", &a, &to_f64(&b), 1e-6, 1e-7);
    assert_ne!(a, init.to_vec());
}

#[test]
fn adamw_refuses_frozen_tensors() {
    let gpu = gpu();
    let frozen = Tensor::from_f32(gpu, &[1.0], &[1]).unwrap();
    let err = AdamW::new(vec![frozen], AdamWConfig::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("not a trainable tensor"), "{err}");
}

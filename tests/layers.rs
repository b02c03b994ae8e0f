//! DoRA and LoRA layers against independent references: the factored and
//! direct norm paths against each other, B = 0 against the base layer,
//! gradients through the norm against finite differences, PEFT's dropout
//! formula against f64, merge/unmerge, and the f32 -> bf16/f16 kernel.

mod common;

use common::*;
use dora_wgpu::nn::{AdapterOptions, DoraLinear, DoraPath, Linear, LoraLinear, Rng};
use dora_wgpu::ops;
use dora_wgpu::{DType, Tensor};

/// A DoRA layer moved off its initial values (B ≠ 0, m ≠ ‖W‖) deterministically.
fn trained_layer(
    rng: &mut Rng,
    out_f: usize,
    in_f: usize,
    r: usize,
    dtype: DType,
    bias: bool,
) -> DoraLinear {
    let gpu = gpu();
    let w = kaiming(rng, out_f, in_f);
    let b = bias.then(|| Tensor::from_f32(gpu, &random(rng, out_f), &[out_f]).unwrap());
    let base = Linear::new(
        Tensor::from_f32_as(gpu, &w, &[out_f, in_f], dtype).unwrap(),
        b,
    )
    .unwrap();
    let options = AdapterOptions {
        rank: r,
        alpha: 2.0 * r as f32,
        ..Default::default()
    };
    let layer = DoraLinear::new(base, &options, rng.next_u64()).unwrap();
    perturb(rng, &layer.lora_b, 0.2);
    perturb(rng, &layer.magnitude, 0.05);
    layer
}

fn kaiming(rng: &mut Rng, rows: usize, cols: usize) -> Vec<f32> {
    dora_wgpu::nn::kaiming_uniform(rng, rows, cols)
}

fn perturb(rng: &mut Rng, t: &Tensor, amount: f32) {
    let d = Tensor::from_f32(gpu(), &random(rng, t.numel()), t.shape()).unwrap();
    ops::add_assign(t, &d, amount).unwrap();
}

fn grads(layer: &DoraLinear, x: &Tensor, r: &Tensor) -> Vec<Vec<f32>> {
    for p in layer.parameters() {
        p.zero_grad();
    }
    x.zero_grad();
    let y = layer.forward(x).unwrap();
    ops::sum_all(&ops::mul(&y, r).unwrap())
        .unwrap()
        .backward()
        .unwrap();
    let mut out: Vec<Vec<f32>> = layer
        .parameters()
        .iter()
        .map(|p| p.grad().unwrap().to_vec_f32().unwrap())
        .collect();
    out.push(x.grad().unwrap().to_vec_f32().unwrap());
    out
}

#[test]
fn factored_and_direct_paths_agree_on_outputs_and_gradients() {
    let gpu = gpu();
    let mut rng = Rng::new(11);
    for &(out_f, in_f, r, dtype, bias) in &[
        (29, 37, 4, DType::F32, true),
        (70, 20, 16, DType::F32, false),
        (33, 65, 1, DType::BF16, true),
        (5, 300, 8, DType::F16, false),
    ] {
        let mut layer = trained_layer(&mut rng, out_f, in_f, r, dtype, bias);
        // 75 tokens: the fused backward's column sums run in three chunks.
        let x = Tensor::param(gpu, &random(&mut rng, 3 * 25 * in_f), &[3, 25, in_f]).unwrap();
        let rr = Tensor::from_f32(gpu, &random(&mut rng, 3 * 25 * out_f), &[3, 25, out_f]).unwrap();
        for norm_grad in [false, true] {
            layer.norm_grad = norm_grad;
            layer.path = DoraPath::Factored;
            let n_factored = layer.weight_norm().unwrap().to_vec_f32().unwrap();
            let y_factored = layer.forward(&x).unwrap().to_vec_f32().unwrap();
            let g_factored = grads(&layer, &x, &rr);
            layer.path = DoraPath::Direct;
            let n_direct = layer.weight_norm().unwrap().to_vec_f32().unwrap();
            let y_direct = layer.forward(&x).unwrap().to_vec_f32().unwrap();
            let g_direct = grads(&layer, &x, &rr);
            let label = format!("{out_f}x{in_f} r{r} {dtype:?} norm_grad={norm_grad}");
            assert!(
                rel_err(&n_factored, &n_direct) < 1e-5,
                "{label}: norms {:e}",
                rel_err(&n_factored, &n_direct)
            );
            assert!(
                rel_err(&y_factored, &y_direct) < 1e-5,
                "{label}: outputs {:e}",
                rel_err(&y_factored, &y_direct)
            );
            for (i, (f, d)) in g_factored.iter().zip(&g_direct).enumerate() {
                assert!(
                    rel_err(f, d) < 1e-5,
                    "{label}: gradient {i} {:e}",
                    rel_err(f, d)
                );
            }
        }
    }
}

#[test]
fn dora_with_b_zero_equals_the_base_layer_exactly() {
    let gpu = gpu();
    let mut rng = Rng::new(12);
    for dtype in [DType::F32, DType::BF16] {
        let (out_f, in_f) = (33, 70);
        let w = kaiming(&mut rng, out_f, in_f);
        let b = Tensor::from_f32(gpu, &random(&mut rng, out_f), &[out_f]).unwrap();
        let base = Linear::new(
            Tensor::from_f32_as(gpu, &w, &[out_f, in_f], dtype).unwrap(),
            Some(b),
        )
        .unwrap();
        let x = Tensor::from_f32(gpu, &random(&mut rng, 9 * in_f), &[9, in_f]).unwrap();
        let want = base.forward(&x).unwrap().to_vec_f32().unwrap();
        let layer = DoraLinear::new(base, &AdapterOptions::default(), 5).unwrap();
        assert_eq!(
            layer.forward(&x).unwrap().to_vec_f32().unwrap(),
            want,
            "{dtype:?}"
        );
        let lora = LoraLinear::new(layer.base.clone(), &AdapterOptions::default(), 5).unwrap();
        assert_eq!(
            lora.forward(&x).unwrap().to_vec_f32().unwrap(),
            want,
            "LoRA {dtype:?}"
        );
    }
}

/// y = (m / n) ⊙ (x·Wᵀ + s·x·Aᵀ·Bᵀ) + b in f64, with n from A and B (so
/// differentiating it includes the gradient through the norm).
fn dora_ref(
    x: &[f64],
    w: &[f64],
    a: &[f64],
    b: &[f64],
    m: &[f64],
    s: f64,
    dims: (usize, usize, usize, usize),
) -> Vec<f64> {
    let (t, in_f, out_f, r) = dims;
    let ba = matmul_ref(b, a, out_f, r, in_f, false, false);
    let v: Vec<f64> = w.iter().zip(&ba).map(|(w, ba)| w + s * ba).collect();
    let n = row_norm_ref(&v, out_f, in_f);
    let z = matmul_ref(x, &v, t, in_f, out_f, false, true);
    (0..t * out_f)
        .map(|i| m[i % out_f] / n[i % out_f] * z[i])
        .collect()
}

#[test]
fn gradient_through_the_norm_matches_finite_differences() {
    let gpu = gpu();
    let mut rng = Rng::new(13);
    let (t, in_f, out_f, r) = (4, 9, 6, 3);
    for path in [DoraPath::Factored, DoraPath::Direct] {
        let mut layer = trained_layer(&mut rng, out_f, in_f, r, DType::F32, false);
        layer.norm_grad = true;
        layer.path = path;
        let x = random(&mut rng, t * in_f);
        let xt = Tensor::param(gpu, &x, &[t, in_f]).unwrap();
        let rr = random(&mut rng, t * out_f);
        let got = grads(
            &layer,
            &xt,
            &Tensor::from_f32(gpu, &rr, &[t, out_f]).unwrap(),
        );
        let w = to_f64(&layer.base.weight.to_vec_f32().unwrap());
        let p: Vec<Vec<f64>> = layer
            .parameters()
            .iter()
            .map(|p| to_f64(&p.to_vec_f32().unwrap()))
            .collect();
        let s = layer.scale as f64;
        let dims = (t, in_f, out_f, r);
        let loss = |x: &[f64], a: &[f64], b: &[f64], m: &[f64]| -> f64 {
            dora_ref(x, &w, a, b, m, s, dims)
                .iter()
                .zip(&rr)
                .map(|(y, r)| y * *r as f64)
                .sum()
        };
        let x64 = to_f64(&x);
        let want = [
            numeric_grad(&|v| loss(&x64, v, &p[1], &p[2]), &p[0], 1e-6),
            numeric_grad(&|v| loss(&x64, &p[0], v, &p[2]), &p[1], 1e-6),
            numeric_grad(&|v| loss(&x64, &p[0], &p[1], v), &p[2], 1e-6),
            numeric_grad(&|v| loss(v, &p[0], &p[1], &p[2]), &x64, 1e-6),
        ];
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_close(
                &format!("{path:?} norm_grad gradient {i}"),
                g,
                w,
                2e-3,
                2e-4,
            );
        }
    }
}

#[test]
fn dropout_follows_peft_semantics() {
    let gpu = gpu();
    let mut rng = Rng::new(14);
    let (t, in_f, out_f, r) = (6, 40, 12, 4);
    let mut layer = trained_layer(&mut rng, out_f, in_f, r, DType::F32, true);
    layer.dropout = 0.3;
    let x = random(&mut rng, t * in_f);
    let xt = Tensor::from_f32(gpu, &x, &[t, in_f]).unwrap();
    let seed = 77;
    let y = layer
        .forward_train(&xt, seed)
        .unwrap()
        .to_vec_f32()
        .unwrap();
    // The mask the kernel used: dropout of ones with the same seed.
    let ones = Tensor::from_f32(gpu, &vec![1.0; t * in_f], &[t, in_f]).unwrap();
    let mask = ops::dropout(&ones, 0.3, seed)
        .unwrap()
        .to_vec_f32()
        .unwrap();
    let kept = mask.iter().filter(|&&v| v != 0.0).count();
    assert!(mask
        .iter()
        .all(|&v| v == 0.0 || (v - 1.0 / 0.7).abs() < 1e-6));
    assert!(kept > 0 && kept < t * in_f);
    // y = x·Wᵀ + b + (c − 1) ⊙ (drop(x)·Wᵀ) + c ⊙ s·(drop(x)·Aᵀ)·Bᵀ in f64
    let w = to_f64(&layer.base.weight.to_vec_f32().unwrap());
    let bias = to_f64(&layer.base.bias.as_ref().unwrap().to_vec_f32().unwrap());
    let a = to_f64(&layer.lora_a.to_vec_f32().unwrap());
    let b = to_f64(&layer.lora_b.to_vec_f32().unwrap());
    let m = to_f64(&layer.magnitude.to_vec_f32().unwrap());
    let s = layer.scale as f64;
    let xd: Vec<f64> = x
        .iter()
        .zip(&mask)
        .map(|(x, k)| *x as f64 * *k as f64)
        .collect();
    let ba = matmul_ref(&b, &a, out_f, r, in_f, false, false);
    let v: Vec<f64> = w.iter().zip(&ba).map(|(w, ba)| w + s * ba).collect();
    let n = row_norm_ref(&v, out_f, in_f);
    let base = matmul_ref(&to_f64(&x), &w, t, in_f, out_f, false, true);
    let base_d = matmul_ref(&xd, &w, t, in_f, out_f, false, true);
    let lr = matmul_ref(
        &matmul_ref(&xd, &a, t, in_f, r, false, true),
        &b,
        t,
        r,
        out_f,
        false,
        true,
    );
    let want: Vec<f64> = (0..t * out_f)
        .map(|i| {
            let o = i % out_f;
            let c = m[o] / n[o];
            base[i] + bias[o] + (c - 1.0) * base_d[i] + c * s * lr[i]
        })
        .collect();
    assert_close("dropout forward", &y, &want, 1e-5, 1e-6);
    // Same seed, same mask; another seed, another mask; p = 0 is the plain forward.
    assert_eq!(
        layer
            .forward_train(&xt, seed)
            .unwrap()
            .to_vec_f32()
            .unwrap(),
        y
    );
    assert_ne!(
        layer
            .forward_train(&xt, seed + 1)
            .unwrap()
            .to_vec_f32()
            .unwrap(),
        y
    );
    layer.dropout = 0.0;
    assert_eq!(
        layer
            .forward_train(&xt, seed)
            .unwrap()
            .to_vec_f32()
            .unwrap(),
        layer.forward(&xt).unwrap().to_vec_f32().unwrap()
    );
}

#[test]
fn dropout_drops_about_p_and_its_gradient_uses_the_same_mask() {
    let gpu = gpu();
    let n = 100_000;
    let x = Tensor::param(gpu, &vec![2.0; n], &[n]).unwrap();
    let y = ops::dropout(&x, 0.25, 9).unwrap();
    let yv = y.to_vec_f32().unwrap();
    let dropped = yv.iter().filter(|&&v| v == 0.0).count() as f64 / n as f64;
    assert!((dropped - 0.25).abs() < 0.01, "dropped fraction {dropped}");
    ops::sum_all(&y).unwrap().backward().unwrap();
    let g = x.grad().unwrap().to_vec_f32().unwrap();
    for (gv, yv) in g.iter().zip(&yv) {
        assert_eq!(*gv == 0.0, *yv == 0.0);
        if *yv != 0.0 {
            assert!((gv - 1.0 / 0.75).abs() < 1e-6);
        }
    }
}

#[test]
fn merge_matches_the_adapter_and_unmerge_restores_the_base() {
    let gpu = gpu();
    let mut rng = Rng::new(15);
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let (out_f, in_f, r) = (48, 72, 8);
        let layer = trained_layer(&mut rng, out_f, in_f, r, dtype, true);
        let x = Tensor::from_f32(gpu, &random(&mut rng, 10 * in_f), &[10, in_f]).unwrap();
        let y_adapter = layer.forward(&x).unwrap().to_vec_f32().unwrap();
        let (merged, norms) = layer.merge().unwrap();
        assert_eq!(merged.dtype(), dtype, "merged weights keep the base dtype");
        let merged_layer = Linear::new(merged.clone(), layer.base.bias.clone()).unwrap();
        let y_merged = merged_layer.forward(&x).unwrap().to_vec_f32().unwrap();
        // In f32 the merged layer is the adapter; in 16 bits it is the adapter rounded.
        let tol = match dtype {
            DType::F32 => 1e-5,
            DType::F16 => 2e-3,
            _ => 1e-2,
        };
        let e = rel_err(&y_merged, &y_adapter);
        assert!(e < tol, "{dtype:?}: merged forward differs by {e:e}");
        let restored = layer.unmerge(&merged, &norms).unwrap();
        assert_eq!(restored.dtype(), dtype);
        let base = layer.base.weight.to_vec_f32().unwrap();
        let e = rel_err(&restored.to_vec_f32().unwrap(), &base);
        let tol = if dtype == DType::F32 { 1e-6 } else { 2e-2 };
        assert!(e < tol, "{dtype:?}: unmerge restores the base within {e:e}");
    }
}

#[test]
fn lora_layer_matches_f64_and_merges() {
    let gpu = gpu();
    let mut rng = Rng::new(16);
    let (t, in_f, out_f, r) = (5, 30, 20, 4);
    let w = kaiming(&mut rng, out_f, in_f);
    let base = Linear::new(Tensor::from_f32(gpu, &w, &[out_f, in_f]).unwrap(), None).unwrap();
    let options = AdapterOptions {
        rank: r,
        alpha: 16.0,
        use_rslora: true,
        dropout: 0.0,
    };
    let layer = LoraLinear::new(base, &options, 3).unwrap();
    assert_eq!(layer.scale, 16.0 / 2.0, "rsLoRA: alpha / sqrt(r)");
    perturb(&mut rng, &layer.lora_b, 0.3);
    let x = random(&mut rng, t * in_f);
    let y = layer
        .forward(&Tensor::from_f32(gpu, &x, &[t, in_f]).unwrap())
        .unwrap();
    let (a, b) = (
        to_f64(&layer.lora_a.to_vec_f32().unwrap()),
        to_f64(&layer.lora_b.to_vec_f32().unwrap()),
    );
    let ba = matmul_ref(&b, &a, out_f, r, in_f, false, false);
    let v: Vec<f64> = w
        .iter()
        .zip(&ba)
        .map(|(w, ba)| *w as f64 + 8.0 * ba)
        .collect();
    let want = matmul_ref(&to_f64(&x), &v, t, in_f, out_f, false, true);
    assert_close("lora forward", &y.to_vec_f32().unwrap(), &want, 1e-5, 1e-6);
    assert_close(
        "lora merge",
        &layer.merged_weight().unwrap().to_vec_f32().unwrap(),
        &v,
        1e-5,
        1e-6,
    );
}

#[test]
fn narrowing_to_16_bits_rounds_like_the_half_crate() {
    let gpu = gpu();
    let mut rng = Rng::new(17);
    let mut values: Vec<f32> = (0..5001)
        .map(|_| rng.normal() * 10f32.powi((rng.next_u64() % 12) as i32 - 6))
        .collect();
    values.extend([
        0.0,
        -0.0,
        65504.0,
        65520.0,
        1e6,
        -1e6,
        6e-8,
        3e-8,
        1e-7,
        -5.9e-8,
        1.0 + 1.0 / 2048.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ]);
    values.extend([1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, 3.0e38, -3.4e38]);
    let t = Tensor::from_f32(gpu, &values, &[values.len()]).unwrap();
    let bf = ops::cast(&t, DType::BF16).unwrap();
    let want_bf: Vec<u16> = values
        .iter()
        .map(|&v| half::bf16::from_f32(v).to_bits())
        .collect();
    let got_bf: Vec<u16> = bf
        .to_vec_f32()
        .unwrap()
        .iter()
        .map(|&v| half::bf16::from_f32(v).to_bits())
        .collect();
    assert_eq!(got_bf, want_bf);
    let f = ops::cast(&t, DType::F16).unwrap();
    let want_f: Vec<u16> = values
        .iter()
        .map(|&v| half::f16::from_f32(v).to_bits())
        .collect();
    let got_f: Vec<u16> = f
        .to_vec_f32()
        .unwrap()
        .iter()
        .map(|&v| half::f16::from_f32(v).to_bits())
        .collect();
    for (i, (g, w)) in got_f.iter().zip(&want_f).enumerate() {
        assert_eq!(g, w, "f16 of {}", values[i]);
    }
    // NaN stays NaN.
    let nan = Tensor::from_f32(gpu, &[f32::NAN], &[1]).unwrap();
    assert!(ops::cast(&nan, DType::F16).unwrap().to_vec_f32().unwrap()[0].is_nan());
    assert!(ops::cast(&nan, DType::BF16).unwrap().to_vec_f32().unwrap()[0].is_nan());
}

//! Finite-difference checks of every op's backward rule. The GPU computes
//! loss = Σ op(inputs) ⊙ R and back-propagates; the reference differentiates
//! the same loss numerically through a plain f64 CPU version of the op.

mod common;

use common::*;
use dora_wgpu::nn::Rng;
use dora_wgpu::ops::{self, Transpose};
use dora_wgpu::{Result, Tensor};

#[test]
fn matmul_gradients_all_layouts() {
    let mut rng = Rng::new(1);
    let (m, k, n) = (5, 7, 3);
    for (t, ta, tb) in [
        (Transpose::NN, false, false),
        (Transpose::NT, false, true),
        (Transpose::TN, true, false),
        (Transpose::TT, true, true),
    ] {
        let a = rand_input(&mut rng, &if ta { [k, m] } else { [m, k] });
        let b = rand_input(&mut rng, &if tb { [n, k] } else { [k, n] });
        check_grads(
            &format!("matmul {t:?}"),
            vec![a, b],
            |p| ops::matmul_ex(&p[0], &p[1], t),
            |x| matmul_ref(&x[0], &x[1], m, k, n, ta, tb),
        );
    }
}

#[test]
fn matmul_gradients_batched_and_shared_weight() {
    let mut rng = Rng::new(2);
    let (bt, m, k, n) = (2, 3, 4, 5);
    check_grads(
        "matmul batched NT",
        vec![
            rand_input(&mut rng, &[bt, m, k]),
            rand_input(&mut rng, &[bt, n, k]),
        ],
        |p| ops::matmul_ex(&p[0], &p[1], Transpose::NT),
        |x| {
            (0..bt)
                .flat_map(|i| {
                    matmul_ref(
                        &x[0][i * m * k..(i + 1) * m * k],
                        &x[1][i * n * k..(i + 1) * n * k],
                        m,
                        k,
                        n,
                        false,
                        true,
                    )
                })
                .collect()
        },
    );
    // x [2, 3, k] against one weight [n, k]: dW sums over every row of every batch.
    check_grads(
        "matmul shared weight",
        vec![
            rand_input(&mut rng, &[bt, m, k]),
            rand_input(&mut rng, &[n, k]),
        ],
        |p| ops::matmul_ex(&p[0], &p[1], Transpose::NT),
        |x| matmul_ref(&x[0], &x[1], bt * m, k, n, false, true),
    );
}

#[test]
fn binary_op_gradients_with_each_broadcast() {
    let mut rng = Rng::new(3);
    let (rows, cols) = (4, 6);
    type F = fn(f64, f64) -> f64;
    type Op = fn(&Tensor, &Tensor) -> Result<Tensor>;
    let ops_list: [(&str, Op, F); 4] = [
        ("add", ops::add, |a, b| a + b),
        ("sub", ops::sub, |a, b| a - b),
        ("mul", ops::mul, |a, b| a * b),
        ("div", ops::div, |a, b| a / b),
    ];
    for (name, op, f) in ops_list {
        for (bshape, index) in [
            (
                vec![rows, cols],
                (|i: usize, _c: usize| i) as fn(usize, usize) -> usize,
            ),
            (vec![cols], |i, c| i % c),
            (vec![rows, 1], |i, c| i / c),
        ] {
            let a = rand_input(&mut rng, &[rows, cols]);
            let b = positive_input(&mut rng, &bshape);
            check_grads(
                &format!("{name} b{bshape:?}"),
                vec![a, b],
                |p| op(&p[0], &p[1]),
                |x| {
                    (0..rows * cols)
                        .map(|i| f(x[0][i], x[1][index(i, cols)]))
                        .collect()
                },
            );
        }
    }
}

#[test]
fn unary_op_gradients() {
    let mut rng = Rng::new(4);
    let shape = [3, 5];
    type Op = fn(&Tensor) -> Result<Tensor>;
    type Case = (&'static str, Op, fn(f64) -> f64);
    let cases: [Case; 5] = [
        ("silu", ops::silu, |x| x / (1.0 + (-x).exp())),
        ("gelu_tanh", ops::gelu_tanh, gelu_tanh_ref),
        ("square", ops::square, |x| x * x),
        ("sqrt", ops::sqrt, |x| x.sqrt()),
        ("exp", ops::exp, |x| x.exp()),
    ];
    for (name, op, f) in cases {
        check_grads(
            name,
            vec![positive_input(&mut rng, &shape)],
            |p| op(&p[0]),
            |x| x[0].iter().map(|&v| f(v)).collect(),
        );
    }
    // GELU's curve bends on both sides of 0: check negative inputs too.
    check_grads(
        "gelu_tanh (signed inputs)",
        vec![rand_input(&mut rng, &shape)],
        |p| ops::gelu_tanh(&p[0]),
        |x| x[0].iter().map(|&v| gelu_tanh_ref(v)).collect(),
    );
    // Inputs in ±1 against a cap of 0.6: the curve is well into its bend.
    check_grads(
        "softcap",
        vec![rand_input(&mut rng, &shape)],
        |p| ops::softcap(&p[0], 0.6),
        |x| x[0].iter().map(|&v| 0.6 * (v / 0.6).tanh()).collect(),
    );
    check_grads(
        "scale",
        vec![rand_input(&mut rng, &shape)],
        |p| ops::scale(&p[0], -1.5),
        |x| x[0].iter().map(|v| -1.5 * v).collect(),
    );
    check_grads(
        "reshape",
        vec![rand_input(&mut rng, &shape)],
        |p| ops::square(&ops::reshape(&p[0], &[5, 3])?),
        |x| x[0].iter().map(|v| v * v).collect(),
    );
}

#[test]
fn reduction_gradients() {
    let mut rng = Rng::new(5);
    let (rows, cols) = (4, 7);
    check_grads(
        "sum_rows",
        vec![rand_input(&mut rng, &[rows, cols])],
        |p| ops::sum_rows(&p[0]),
        |x| x[0].chunks(cols).map(|r| r.iter().sum()).collect(),
    );
    check_grads(
        "sum_rows 1-D",
        vec![rand_input(&mut rng, &[cols])],
        |p| ops::sum_rows(&p[0]),
        |x| vec![x[0].iter().sum()],
    );
    check_grads(
        "sum_cols",
        vec![rand_input(&mut rng, &[2, rows, cols])],
        |p| ops::sum_cols(&p[0]),
        |x| {
            (0..cols)
                .map(|j| (0..2 * rows).map(|i| x[0][i * cols + j]).sum())
                .collect()
        },
    );
    check_grads(
        "sum_all",
        vec![rand_input(&mut rng, &[rows, cols])],
        |p| ops::sum_all(&p[0]),
        |x| vec![x[0].iter().sum()],
    );
    check_grads(
        "mean_all",
        vec![rand_input(&mut rng, &[rows, cols])],
        |p| ops::mean_all(&p[0]),
        |x| vec![x[0].iter().sum::<f64>() / (rows * cols) as f64],
    );
}

#[test]
fn softmax_gradient() {
    let mut rng = Rng::new(6);
    let cols = 9;
    check_grads(
        "softmax",
        vec![rand_input(&mut rng, &[3, cols])],
        |p| ops::softmax(&p[0]),
        |x| softmax_ref(&x[0], cols),
    );
}

#[test]
fn cross_entropy_gradient_with_ignored_rows() {
    let mut rng = Rng::new(7);
    let (rows, classes) = (6, 11);
    let targets = vec![3, ops::IGNORE_INDEX, 0, 10, ops::IGNORE_INDEX, 5];
    let t2 = targets.clone();
    check_grads(
        "cross_entropy",
        vec![rand_input(&mut rng, &[rows, classes])],
        move |p| {
            ops::cross_entropy(
                &p[0],
                &Tensor::from_i32(p[0].gpu(), &targets, &[rows])?,
                ops::IGNORE_INDEX,
            )
        },
        move |x| vec![cross_entropy_ref(&x[0], &t2, classes, ops::IGNORE_INDEX)],
    );
}

#[test]
fn chunked_lm_head_cross_entropy_gradient() {
    let mut rng = Rng::new(10);
    let (rows, dim, vocab) = (7, 5, 11);
    let head = random(&mut rng, vocab * dim);
    let targets = vec![3, ops::IGNORE_INDEX, 0, 10, 4, ops::IGNORE_INDEX, 5];
    let (h2, t2) = (to_f64(&head), targets.clone());
    let whole = ops::VocabMatrix::from(Tensor::from_f32(gpu(), &head, &[vocab, dim]).unwrap());
    // The same head in three row blocks, as a vocabulary too large to bind at once is held.
    let blocks = [0..4, 4..8, 8..11]
        .into_iter()
        .map(|r| {
            let rows = r.len();
            Tensor::from_f32(gpu(), &head[r.start * dim..r.end * dim], &[rows, dim]).unwrap()
        })
        .collect();
    let split = ops::VocabMatrix::from_blocks(blocks).unwrap();
    // Logits here reach about ±2; a soft cap of 0.8 bends most of them.
    for (chunk, head_t, softcap) in [
        (1, &whole, None),
        (3, &whole, None),
        (7, &split, None),
        (100, &whole, None),
        (3, &split, None),
        (3, &whole, Some(0.8)),
        (7, &split, Some(0.8)),
    ] {
        let (ht, tt, h2, t2) = (head_t.clone(), targets.clone(), h2.clone(), t2.clone());
        let blocks = ht.blocks().len();
        check_grads(
            &format!("lm_head_cross_entropy chunk {chunk}, {blocks} blocks, softcap {softcap:?}"),
            vec![rand_input(&mut rng, &[rows, dim])],
            move |p| ops::lm_head_cross_entropy(&p[0], &ht, &tt, chunk, softcap),
            move |x| {
                let mut logits = matmul_ref(&x[0], &h2, rows, dim, vocab, false, true);
                if let Some(c) = softcap {
                    let c = c as f64;
                    logits.iter_mut().for_each(|l| *l = c * (*l / c).tanh());
                }
                vec![cross_entropy_ref(&logits, &t2, vocab, ops::IGNORE_INDEX)]
            },
        );
    }
}

#[test]
fn row_norm_gradient() {
    let mut rng = Rng::new(8);
    let (rows, cols) = (5, 13);
    check_grads(
        "row_norm",
        vec![rand_input(&mut rng, &[rows, cols])],
        |p| ops::row_norm(&p[0]),
        |x| row_norm_ref(&x[0], rows, cols),
    );
}

#[test]
fn gradients_accumulate_across_backward_calls_and_zero_grad_clears_them() {
    let gpu = gpu();
    let w = Tensor::param(gpu, &[1.0, 2.0, 3.0], &[3]).unwrap();
    for _ in 0..3 {
        // d/dw Σ w² = 2w, three times
        ops::sum_all(&ops::square(&w).unwrap())
            .unwrap()
            .backward()
            .unwrap();
    }
    assert_eq!(
        w.grad().unwrap().to_vec_f32().unwrap(),
        vec![6.0, 12.0, 18.0]
    );
    w.zero_grad();
    assert!(w.grad().is_none());
    // A tensor used twice gets both contributions: d/dw Σ (w + w) = 2.
    ops::sum_all(&ops::add(&w, &w).unwrap())
        .unwrap()
        .backward()
        .unwrap();
    assert_eq!(w.grad().unwrap().to_vec_f32().unwrap(), vec![2.0, 2.0, 2.0]);
}

#[test]
fn frozen_tensors_get_no_gradient_and_no_grad_records_nothing() {
    let gpu = gpu();
    let x = Tensor::from_f32(gpu, &[1.0, 2.0, 3.0, 4.0], &[2, 2]).unwrap();
    let w = Tensor::param(gpu, &[0.5, 0.0, 0.0, 0.5], &[2, 2]).unwrap();
    let y = ops::matmul(&x, &w).unwrap();
    assert!(y.requires_grad() && !x.requires_grad());
    ops::sum_all(&y).unwrap().backward().unwrap();
    assert!(x.grad().is_none(), "a frozen input never holds a gradient");
    assert!(w.grad().is_some());
    {
        let _guard = dora_wgpu::no_grad();
        let y = ops::matmul(&x, &w).unwrap();
        assert!(!y.requires_grad(), "no_grad must not record");
        assert!(!dora_wgpu::is_grad_enabled());
    }
    assert!(dora_wgpu::is_grad_enabled());
    // A graph is consumed by backward: a second pass is an error, not a panic.
    let loss = ops::sum_all(&ops::matmul(&x, &w).unwrap()).unwrap();
    loss.backward().unwrap();
    assert!(loss.backward().is_err());
}

/// Moves a fresh adapter's B (zero) to random values, so every gradient is
/// non-trivial; returns them.
fn perturb_b(rng: &mut Rng, lora_b: &Tensor) -> Vec<f32> {
    let b0 = random(rng, lora_b.numel());
    let delta = Tensor::from_f32(gpu(), &b0, lora_b.shape()).unwrap();
    ops::add_assign(lora_b, &delta, 1.0).unwrap();
    b0
}

/// Runs backward of Σ y ⊙ R for a random R and returns R.
fn backward_of_weighted_sum(rng: &mut Rng, y: &Tensor) -> Vec<f32> {
    let rr = random(rng, y.numel());
    let weights = Tensor::from_f32(gpu(), &rr, y.shape()).unwrap();
    ops::sum_all(&ops::mul(y, &weights).unwrap())
        .unwrap()
        .backward()
        .unwrap();
    rr
}

/// ‖W + s·B·A‖ per row in f64, at the given A and B: the constant PEFT's
/// detached norm is during backward. `dims` = [out, in, r].
fn fixed_row_norm(w: &[f32], a: &[f32], b: &[f32], s: f64, dims: [usize; 3]) -> Vec<f64> {
    let [out_f, in_f, r] = dims;
    let ba = matmul_ref(&to_f64(b), &to_f64(a), out_f, r, in_f, false, false);
    let v: Vec<f64> = w
        .iter()
        .zip(&ba)
        .map(|(w, ba)| *w as f64 + s * ba)
        .collect();
    row_norm_ref(&v, out_f, in_f)
}

/// Each tensor's gradient against central differences of `forward` in the
/// matching argument, all others held at `point`.
fn check_against_finite_differences(
    what: &str,
    forward: &dyn Fn(&[Vec<f64>]) -> f64,
    point: &[Vec<f64>],
    tensors: &[(&str, &Tensor)],
) {
    for (i, (name, t)) in tensors.iter().enumerate() {
        let along = |v: &[f64]| {
            let mut args = point.to_vec();
            args[i] = v.to_vec();
            forward(&args)
        };
        let want = numeric_grad(&along, &point[i], 1e-6);
        let got = t.grad().unwrap().to_vec_f32().unwrap();
        assert_close(&format!("{what} d/d{name}"), &got, &want, 2e-3, 2e-4);
    }
}

/// Sizes of the dropout gradient tests: tokens, in, out, r, p, mask seed.
const DROPOUT_CASE: (usize, usize, usize, usize, f32, u32) = (5, 7, 6, 3, 0.3, 41);

/// A random base layer with a bias, a random input and adapter options with
/// dropout, for the DoRA and LoRA dropout gradient tests: (W, bias, x, base, options).
fn dropout_case(
    rng: &mut Rng,
) -> (
    Vec<f32>,
    Vec<f32>,
    Vec<f32>,
    dora_wgpu::nn::Linear,
    dora_wgpu::nn::AdapterOptions,
) {
    let (tokens, in_f, out_f, r, p, _) = DROPOUT_CASE;
    let w = random(rng, out_f * in_f);
    let bias = random(rng, out_f);
    let x = random(rng, tokens * in_f);
    let base = dora_wgpu::nn::Linear::new(
        Tensor::from_f32(gpu(), &w, &[out_f, in_f]).unwrap(),
        Some(Tensor::from_f32(gpu(), &bias, &[out_f]).unwrap()),
    )
    .unwrap();
    let options = dora_wgpu::nn::AdapterOptions {
        rank: r,
        alpha: 6.0,
        dropout: p,
        ..Default::default()
    };
    (w, bias, x, base, options)
}

/// The scaled mask the dropout kernel draws for `seed` over `shape`.
fn dropout_mask(shape: &[usize], p: f32, seed: u32) -> Vec<f64> {
    let n = shape.iter().product();
    let ones = Tensor::from_f32(gpu(), &vec![1.0; n], shape).unwrap();
    to_f64(&ops::dropout(&ones, p, seed).unwrap().to_vec_f32().unwrap())
}

#[test]
fn dora_linear_gradients_match_finite_differences() {
    // The DoRA layer as composed ops, with the row norm detached (paper §4.3).
    let gpu = gpu();
    let mut rng = Rng::new(9);
    let (tokens, in_f, out_f, r) = (4, 6, 5, 2);
    let w = random(&mut rng, out_f * in_f);
    let x = random(&mut rng, tokens * in_f);
    let base = dora_wgpu::nn::Linear::new(Tensor::from_f32(gpu, &w, &[out_f, in_f]).unwrap(), None)
        .unwrap();
    let options = dora_wgpu::nn::AdapterOptions {
        rank: r,
        alpha: 4.0,
        ..Default::default()
    };
    let layer = dora_wgpu::nn::DoraLinear::new(base, &options, 3).unwrap();
    let b0 = perturb_b(&mut rng, &layer.lora_b);
    let a0 = layer.lora_a.to_vec_f32().unwrap();
    let m0 = layer.magnitude.to_vec_f32().unwrap();
    let s = layer.scale as f64;

    let xt = Tensor::param(gpu, &x, &[tokens, in_f]).unwrap();
    let y = layer.forward(&xt).unwrap();
    let rr = backward_of_weighted_sum(&mut rng, &y);

    // f64 reference with n computed from the *evaluation point's* A and B, held fixed.
    let n_fixed = fixed_row_norm(&w, &a0, &b0, s, [out_f, in_f, r]);
    let forward = |x: &[f64], a: &[f64], b: &[f64], m: &[f64]| -> f64 {
        let base = matmul_ref(x, &to_f64(&w), tokens, in_f, out_f, false, true);
        let xa = matmul_ref(x, a, tokens, in_f, r, false, true);
        let lr = matmul_ref(&xa, b, tokens, r, out_f, false, true);
        (0..tokens * out_f)
            .map(|i| {
                let o = i % out_f;
                m[o] / n_fixed[o] * (base[i] + s * lr[i]) * rr[i] as f64
            })
            .sum()
    };
    let point = [to_f64(&x), to_f64(&a0), to_f64(&b0), to_f64(&m0)];
    let tensors = [
        ("x", &xt),
        ("A", &layer.lora_a),
        ("B", &layer.lora_b),
        ("m", &layer.magnitude),
    ];
    check_against_finite_differences(
        "DoRA",
        &|v| forward(&v[0], &v[1], &v[2], &v[3]),
        &point,
        &tensors,
    );
}

#[test]
fn dora_linear_with_dropout_gradients_match_finite_differences() {
    // The fused dropout path (PEFT's semantics: the base sees x, the adapter
    // and the (c − 1) correction see drop(x)), norm detached, with a bias.
    let gpu = gpu();
    let mut rng = Rng::new(19);
    let (tokens, in_f, out_f, r, p, seed) = DROPOUT_CASE;
    let (w, bias, x, base, options) = dropout_case(&mut rng);
    let layer = dora_wgpu::nn::DoraLinear::new(base, &options, 4).unwrap();
    let b0 = perturb_b(&mut rng, &layer.lora_b);
    let a0 = layer.lora_a.to_vec_f32().unwrap();
    let m0 = layer.magnitude.to_vec_f32().unwrap();
    let s = layer.scale as f64;
    // The mask the kernel draws for this seed: dropout of ones.
    let mask = dropout_mask(&[tokens, in_f], p, seed);
    assert!(mask.contains(&0.0) && mask.iter().any(|&k| k > 1.0));

    let xt = Tensor::param(gpu, &x, &[tokens, in_f]).unwrap();
    let y = layer.forward_train(&xt, seed).unwrap();
    let rr = backward_of_weighted_sum(&mut rng, &y);

    let n_fixed = fixed_row_norm(&w, &a0, &b0, s, [out_f, in_f, r]);
    let forward = |x: &[f64], a: &[f64], b: &[f64], m: &[f64]| -> f64 {
        let xd: Vec<f64> = x.iter().zip(&mask).map(|(x, k)| x * k).collect();
        let base = matmul_ref(x, &to_f64(&w), tokens, in_f, out_f, false, true);
        let base_d = matmul_ref(&xd, &to_f64(&w), tokens, in_f, out_f, false, true);
        let xa = matmul_ref(&xd, a, tokens, in_f, r, false, true);
        let lr = matmul_ref(&xa, b, tokens, r, out_f, false, true);
        (0..tokens * out_f)
            .map(|i| {
                let o = i % out_f;
                let c = m[o] / n_fixed[o];
                let y = base[i] + bias[o] as f64 + (c - 1.0) * base_d[i] + c * s * lr[i];
                y * rr[i] as f64
            })
            .sum()
    };
    let point = [to_f64(&x), to_f64(&a0), to_f64(&b0), to_f64(&m0)];
    let tensors = [
        ("x", &xt),
        ("A", &layer.lora_a),
        ("B", &layer.lora_b),
        ("m", &layer.magnitude),
    ];
    check_against_finite_differences(
        "DoRA with dropout",
        &|v| forward(&v[0], &v[1], &v[2], &v[3]),
        &point,
        &tensors,
    );
}

#[test]
fn lora_linear_with_dropout_gradients_match_finite_differences() {
    // The fused LoRA op: y = x·Wᵀ + bias + s·(drop(x)·Aᵀ)·Bᵀ.
    let gpu = gpu();
    let mut rng = Rng::new(23);
    let (tokens, in_f, out_f, r, p, seed) = DROPOUT_CASE;
    let (w, bias, x, base, options) = dropout_case(&mut rng);
    let layer = dora_wgpu::nn::LoraLinear::new(base, &options, 4).unwrap();
    let b0 = perturb_b(&mut rng, &layer.lora_b);
    let a0 = layer.lora_a.to_vec_f32().unwrap();
    let s = layer.scale as f64;
    let mask = dropout_mask(&[tokens, in_f], p, seed);

    let xt = Tensor::param(gpu, &x, &[tokens, in_f]).unwrap();
    let y = layer.forward_train(&xt, seed).unwrap();
    let rr = backward_of_weighted_sum(&mut rng, &y);
    let forward = |x: &[f64], a: &[f64], b: &[f64]| -> f64 {
        let xd: Vec<f64> = x.iter().zip(&mask).map(|(x, k)| x * k).collect();
        let base = matmul_ref(x, &to_f64(&w), tokens, in_f, out_f, false, true);
        let xa = matmul_ref(&xd, a, tokens, in_f, r, false, true);
        let lr = matmul_ref(&xa, b, tokens, r, out_f, false, true);
        (0..tokens * out_f)
            .map(|i| (base[i] + bias[i % out_f] as f64 + s * lr[i]) * rr[i] as f64)
            .sum()
    };
    let point = [to_f64(&x), to_f64(&a0), to_f64(&b0)];
    let tensors = [("x", &xt), ("A", &layer.lora_a), ("B", &layer.lora_b)];
    check_against_finite_differences(
        "LoRA with dropout",
        &|v| forward(&v[0], &v[1], &v[2]),
        &point,
        &tensors,
    );
}

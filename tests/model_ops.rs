//! The decoder's ops — embedding, RMSNorm, RoPE, head split/merge, causal
//! softmax and attention, row and column slicing — against f64 CPU references, and their
//! backward rules against finite differences of those references.

mod common;

use common::*;
use dora_wgpu::nn::Rng;
use dora_wgpu::ops::{self, AttentionHeads, RopeTables};
use dora_wgpu::{DType, Tensor};

fn rms_norm_ref(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let cols = w.len();
    x.chunks(cols)
        .flat_map(|row| {
            let r = 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / cols as f64 + eps).sqrt();
            row.iter().zip(w).map(move |(v, w)| w * v * r)
        })
        .collect()
}

/// rotate_half RoPE on [B, T, H*D] at positions offset.., rotating the first
/// `2 * inv_freq.len()` dimensions of each head (the rest pass through),
/// angles as transformers computes them.
fn rope_ref(
    x: &[f64],
    batch: usize,
    seq: usize,
    heads: usize,
    d: usize,
    offset: usize,
    inv_freq: &[f32],
) -> Vec<f64> {
    let half = inv_freq.len();
    let mut out = x.to_vec();
    for b in 0..batch {
        for t in 0..seq {
            for h in 0..heads {
                let base = ((b * seq + t) * heads + h) * d;
                for (k, inv) in inv_freq.iter().enumerate() {
                    let angle = ((offset + t) as f32 * inv) as f64;
                    let (c, s) = (angle.cos(), angle.sin());
                    let (x1, x2) = (x[base + k], x[base + k + half]);
                    out[base + k] = x1 * c - x2 * s;
                    out[base + k + half] = x2 * c + x1 * s;
                }
            }
        }
    }
    out
}

/// Causal GQA attention in f64: q [B, T, H*D], k, v [B, S, Hkv*D], queries
/// at offset + t, scores × `heads.scale`, each query seeing its `heads.window` latest keys.
#[allow(clippy::too_many_arguments)]
fn attention_ref(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    b: usize,
    t: usize,
    s: usize,
    heads: AttentionHeads,
    d: usize,
    offset: usize,
) -> Vec<f64> {
    let (h, hkv) = (heads.heads, heads.kv_heads);
    let mut out = vec![0.0; b * t * h * d];
    let g = h / hkv;
    for bi in 0..b {
        for hi in 0..h {
            let kh = hi / g;
            for ti in 0..t {
                let qv = &q[((bi * t + ti) * h + hi) * d..][..d];
                let visible = offset + ti + 1;
                let first = heads.window.map_or(0, |w| visible.saturating_sub(w));
                let scores: Vec<f64> = (first..visible)
                    .map(|si| {
                        let kv = &k[((bi * s + si) * hkv + kh) * d..][..d];
                        qv.iter().zip(kv).map(|(a, b)| a * b).sum::<f64>() * heads.scale as f64
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|x| (x - m).exp()).sum();
                for (si, sc) in (first..).zip(&scores) {
                    let p = (sc - m).exp() / z;
                    let vv = &v[((bi * s + si) * hkv + kh) * d..][..d];
                    for di in 0..d {
                        out[((bi * t + ti) * h + hi) * d + di] += p * vv[di];
                    }
                }
            }
        }
    }
    out
}

#[test]
fn embedding_gathers_rows_of_every_dtype() {
    let gpu = gpu();
    let mut rng = Rng::new(1);
    let (vocab, dim) = (37, 19);
    let table = random(&mut rng, vocab * dim);
    let ids = [3, 0, 36, 3, 17, 5];
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let stored = match dtype {
            DType::BF16 => round_bf16(&table),
            DType::F16 => round_f16(&table),
            _ => table.clone(),
        };
        let t = Tensor::from_f32_as(gpu, &table, &[vocab, dim], dtype).unwrap();
        let out = ops::embedding(&t, &Tensor::from_i32(gpu, &ids, &[2, 3]).unwrap()).unwrap();
        assert_eq!(out.shape(), &[2, 3, dim]);
        let want: Vec<f32> = ids
            .iter()
            .flat_map(|&i| stored[i as usize * dim..][..dim].to_vec())
            .collect();
        assert_eq!(out.to_vec_f32().unwrap(), want, "{dtype:?}");
    }
}

/// A vocabulary held in row blocks (as one too large to bind at once is):
/// the lookup and the logits equal the one-block table's.
#[test]
fn vocabulary_in_row_blocks_embeds_and_projects_like_one_table() {
    let gpu = gpu();
    let mut rng = Rng::new(11);
    let (vocab, dim) = (37, 8);
    let table = random(&mut rng, vocab * dim);
    // bf16 rows: blocks of even row counts keep whole 32-bit words.
    for dtype in [DType::F32, DType::BF16] {
        let block = |r: std::ops::Range<usize>| {
            Tensor::from_f32_as(
                gpu,
                &table[r.start * dim..r.end * dim],
                &[r.len(), dim],
                dtype,
            )
            .unwrap()
        };
        let split = ops::VocabMatrix::from_blocks(vec![block(0..10), block(10..30), block(30..37)])
            .unwrap();
        assert_eq!(split.shape(), [vocab, dim]);
        let whole = ops::VocabMatrix::from(block(0..vocab));
        let ids = Tensor::from_i32(gpu, &[36, 0, 9, 10, 29, 30, 5, 17], &[2, 4]).unwrap();
        assert_eq!(
            split.embed(&ids).unwrap().to_vec_f32().unwrap(),
            whole.embed(&ids).unwrap().to_vec_f32().unwrap(),
            "{dtype:?} lookup"
        );
        let hidden = Tensor::from_f32(gpu, &random(&mut rng, 3 * dim), &[1, 3, dim]).unwrap();
        let _g = dora_wgpu::no_grad();
        let got = split.logits(&hidden).unwrap();
        assert_eq!(got.shape(), &[1, 3, vocab]);
        let e = rel_err(
            &got.to_vec_f32().unwrap(),
            &whole.logits(&hidden).unwrap().to_vec_f32().unwrap(),
        );
        assert!(e < 1e-6, "{dtype:?} logits differ by {e:e}");
    }
    let mixed = ops::VocabMatrix::from_blocks(vec![
        Tensor::from_f32(gpu, &[0.0; 8], &[2, 4]).unwrap(),
        Tensor::from_f32(gpu, &[0.0; 6], &[2, 3]).unwrap(),
    ]);
    assert!(mixed.is_err(), "blocks of different widths");
}

#[test]
fn rms_norm_forward_and_gradient() {
    let mut rng = Rng::new(2);
    let (rows, cols) = (5, 24);
    let w = positive_input(&mut rng, &[cols]).0;
    let w64 = to_f64(&w);
    let gpu = gpu();
    let wt = Tensor::from_f32(gpu, &w, &[cols]).unwrap();
    check_grads(
        "rms_norm",
        vec![rand_input(&mut rng, &[rows, cols])],
        move |p| ops::rms_norm(&p[0], &wt, 1e-5),
        move |x| rms_norm_ref(&x[0], &w64, 1e-5),
    );
    // A bf16 weight is unpacked in the kernel.
    let x = random(&mut rng, rows * cols);
    let wb = Tensor::from_f32_as(gpu, &w, &[cols], DType::BF16).unwrap();
    let y = ops::rms_norm(
        &Tensor::from_f32(gpu, &x, &[rows, cols]).unwrap(),
        &wb,
        1e-6,
    )
    .unwrap();
    assert_close(
        "rms_norm bf16",
        &y.to_vec_f32().unwrap(),
        &rms_norm_ref(&to_f64(&x), &to_f64(&round_bf16(&w)), 1e-6),
        1e-5,
        1e-6,
    );
}

#[test]
fn rope_forward_and_gradient() {
    let mut rng = Rng::new(3);
    let (b, t, h, d, offset, theta) = (2, 5, 3, 8, 4, 10000.0f32);
    let inv: Vec<f32> = (0..d / 2)
        .map(|k| 1.0 / theta.powf((2 * k) as f32 / d as f32))
        .collect();
    let tables = RopeTables::new(gpu(), theta, d, 16).unwrap();
    check_grads(
        "rope",
        vec![rand_input(&mut rng, &[b, t, h * d])],
        move |p| ops::rope(&p[0], h, offset, &tables),
        move |x| rope_ref(&x[0], b, t, h, d, offset, &inv),
    );
    // Partial rotary (Phi-3): the first 4 of 8 dimensions rotate, with
    // cos and sin scaled as YaRN and LongRoPE scale them.
    let inv = [0.9f32, 0.05];
    let scaling = 1.25;
    let tables = RopeTables::from_inv_freq(gpu(), &inv, scaling, d, 16).unwrap();
    check_grads(
        "partial rope",
        vec![rand_input(&mut rng, &[b, t, h * d])],
        move |p| ops::rope(&p[0], h, offset, &tables),
        move |x| {
            // Scaling cos and sin by s scales the rotated dimensions by s.
            let mut y = rope_ref(&x[0], b, t, h, d, offset, &inv);
            for (i, v) in y.iter_mut().enumerate() {
                if i % d < 2 * inv.len() {
                    *v *= scaling as f64;
                }
            }
            y
        },
    );
}

#[test]
fn head_split_and_merge_with_grouped_heads() {
    let mut rng = Rng::new(4);
    let (b, t, hs, d, g) = (2, 3, 2, 4, 3);
    check_grads(
        "split_heads",
        vec![rand_input(&mut rng, &[b, t, hs * d])],
        move |p| ops::split_heads(&p[0], hs, d, g),
        move |x| {
            let mut out = Vec::new();
            for bi in 0..b {
                for h in 0..hs * g {
                    for ti in 0..t {
                        out.extend_from_slice(&x[0][((bi * t + ti) * hs + h / g) * d..][..d]);
                    }
                }
            }
            out
        },
    );
    check_grads(
        "merge_heads",
        vec![rand_input(&mut rng, &[b, hs, t, d])],
        move |p| ops::merge_heads(&p[0]),
        move |x| {
            let mut out = Vec::new();
            for bi in 0..b {
                for ti in 0..t {
                    for h in 0..hs {
                        out.extend_from_slice(&x[0][((bi * hs + h) * t + ti) * d..][..d]);
                    }
                }
            }
            out
        },
    );
}

#[test]
fn causal_softmax_masks_the_future_and_differentiates() {
    let mut rng = Rng::new(5);
    let (rows, t, s, offset, scale) = (2, 3, 5, 2, 0.7f32);
    check_grads(
        "causal_softmax",
        vec![rand_input(&mut rng, &[rows, t, s])],
        move |p| ops::causal_softmax(&p[0], scale, offset, None),
        move |x| {
            let mut out = Vec::new();
            for (r, row) in x[0].chunks(s).enumerate() {
                let visible = offset + r % t + 1;
                let m = row[..visible]
                    .iter()
                    .map(|v| v * scale as f64)
                    .fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = row[..visible]
                    .iter()
                    .map(|v| (v * scale as f64 - m).exp())
                    .sum();
                out.extend(row.iter().enumerate().map(|(j, v)| {
                    if j < visible {
                        (v * scale as f64 - m).exp() / z
                    } else {
                        0.0
                    }
                }));
            }
            out
        },
    );
}

#[test]
fn causal_gqa_attention_matches_f64_and_differentiates() {
    let mut rng = Rng::new(6);
    let (b, t, h, hkv, d) = (2, 4, 4, 2, 3);
    check_grads(
        "attention",
        vec![
            rand_input(&mut rng, &[b, t, h * d]),
            rand_input(&mut rng, &[b, t, hkv * d]),
            rand_input(&mut rng, &[b, t, hkv * d]),
        ],
        move |p| ops::causal_attention(&p[0], &p[1], &p[2], AttentionHeads::causal(h, hkv, d), 0),
        move |x| {
            attention_ref(
                &x[0],
                &x[1],
                &x[2],
                b,
                t,
                t,
                AttentionHeads::causal(h, hkv, d),
                d,
                0,
            )
        },
    );
    // Gemma's layout: its own score scale and a window shorter than the sequence.
    let (t, window) = (6, 3);
    let heads = AttentionHeads {
        scale: 0.37,
        window: Some(window),
        ..AttentionHeads::causal(h, hkv, d)
    };
    check_grads(
        "sliding-window attention",
        vec![
            rand_input(&mut rng, &[b, t, h * d]),
            rand_input(&mut rng, &[b, t, hkv * d]),
            rand_input(&mut rng, &[b, t, hkv * d]),
        ],
        move |p| ops::causal_attention(&p[0], &p[1], &p[2], heads, 0),
        move |x| attention_ref(&x[0], &x[1], &x[2], b, t, t, heads, d, 0),
    );
    // Queries after a cached prefix: 2 new positions against 5 keys.
    let (tq, s) = (2, 5);
    let q = random(&mut rng, tq * h * d);
    let k = random(&mut rng, s * hkv * d);
    let v = random(&mut rng, s * hkv * d);
    let gpu = gpu();
    // Then the same after a cache with a window: the earliest keys drop out.
    let windowed = AttentionHeads {
        window: Some(2),
        ..AttentionHeads::causal(h, hkv, d)
    };
    for (name, heads) in [
        ("attention with offset", AttentionHeads::causal(h, hkv, d)),
        ("windowed attention with offset", windowed),
    ] {
        let out = ops::causal_attention(
            &Tensor::from_f32(gpu, &q, &[1, tq, h * d]).unwrap(),
            &Tensor::from_f32(gpu, &k, &[1, s, hkv * d]).unwrap(),
            &Tensor::from_f32(gpu, &v, &[1, s, hkv * d]).unwrap(),
            heads,
            s - tq,
        )
        .unwrap();
        let want = attention_ref(
            &to_f64(&q),
            &to_f64(&k),
            &to_f64(&v),
            1,
            tq,
            s,
            heads,
            d,
            s - tq,
        );
        assert_close(name, &out.to_vec_f32().unwrap(), &want, 1e-5, 1e-6);
    }
}

#[test]
fn slicing_rows_copies_and_routes_gradients_back() {
    let mut rng = Rng::new(7);
    check_grads(
        "slice_rows",
        vec![rand_input(&mut rng, &[6, 5])],
        |p| ops::slice_rows(&p[0], 2, 3),
        |x| x[0][10..25].to_vec(),
    );
    let t = Tensor::from_f32(gpu(), &[0.0; 6], &[3, 2]).unwrap();
    assert!(ops::slice_rows(&t, 2, 2).is_err());
    // Columns, as q, k, v come out of a fused qkv projection.
    check_grads(
        "slice_cols",
        vec![rand_input(&mut rng, &[2, 3, 7])],
        |p| ops::slice_cols(&p[0], 2, 4),
        |x| x[0].chunks(7).flat_map(|row| row[2..6].to_vec()).collect(),
    );
    assert!(ops::slice_cols(&t, 1, 2).is_err());
}

/// Attention's forward and its gradients in f64, by the chain rule through
/// the softmax: with P the probabilities and g = dL/d(out),
/// dV = Pᵀg, dP = g·Vᵀ, dZ = P ⊙ (dP − Σ_s P·dP), dQ = scale·dZ·K, dK = scale·dZᵀ·Q
/// (summed over the query heads sharing a key/value head).
#[allow(clippy::too_many_arguments)]
fn attention_grads_ref(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    g: &[f64],
    (b, t, s): (usize, usize, usize),
    heads: AttentionHeads,
    d: usize,
    offset: usize,
) -> [Vec<f64>; 3] {
    let (h, hkv) = (heads.heads, heads.kv_heads);
    let group = h / hkv;
    let scale = heads.scale as f64;
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
    for bi in 0..b {
        for hi in 0..h {
            let kh = hi / group;
            for ti in 0..t {
                let qi = ((bi * t + ti) * h + hi) * d;
                let kv = |si: usize| ((bi * s + si) * hkv + kh) * d;
                let visible = offset + ti + 1;
                let first = heads.window.map_or(0, |w| visible.saturating_sub(w));
                let keys: Vec<usize> = (first..visible).collect();
                let z: Vec<f64> = keys
                    .iter()
                    .map(|&si| (0..d).map(|i| q[qi + i] * k[kv(si) + i]).sum::<f64>() * scale)
                    .collect();
                let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = z.iter().map(|x| (x - m).exp()).sum();
                let pr: Vec<f64> = z.iter().map(|x| (x - m).exp() / sum).collect();
                let dp: Vec<f64> = keys
                    .iter()
                    .map(|&si| (0..d).map(|i| g[qi + i] * v[kv(si) + i]).sum())
                    .collect();
                let row: f64 = pr.iter().zip(&dp).map(|(p, x)| p * x).sum();
                for (j, &si) in keys.iter().enumerate() {
                    let dz = pr[j] * (dp[j] - row);
                    for i in 0..d {
                        dv[kv(si) + i] += pr[j] * g[qi + i];
                        dq[qi + i] += scale * dz * k[kv(si) + i];
                        dk[kv(si) + i] += scale * dz * q[qi + i];
                    }
                }
            }
        }
    }
    [dq, dk, dv]
}

/// A context that always takes the fused attention kernels.
fn fused_attention_gpu() -> &'static dora_wgpu::Gpu {
    static GPU: std::sync::OnceLock<dora_wgpu::Gpu> = std::sync::OnceLock::new();
    GPU.get_or_init(|| {
        let options = dora_wgpu::GpuOptions {
            attention: dora_wgpu::AttentionKernels::Fused,
            ..Default::default()
        };
        dora_wgpu::Gpu::with_options(&options).expect("GPU tests need an adapter")
    })
}

#[test]
fn fused_attention_matches_f64_forward_and_backward() {
    let gpu = fused_attention_gpu();
    let mut rng = Rng::new(61);
    // (name, batch, queries, keys, heads, kv heads, head dim, scale, window)
    // Shapes cross every tile edge: several blocks of queries and chunks of
    // 64 keys, all three head-dimension classes (64, 128, 256) with partial
    // tiles, grouped-query heads, Gemma's own scale and a window, and
    // queries after a cached prefix (keys no query sees get zero gradients).
    #[allow(clippy::type_complexity)]
    let cases: [(
        &str,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        Option<f32>,
        Option<usize>,
    ); 7] = [
        ("tiny GQA", 2, 5, 5, 4, 2, 3, None, None),
        ("two key chunks, d 64", 1, 70, 70, 2, 1, 64, None, None),
        (
            "d 100, window 20",
            2,
            37,
            37,
            4,
            2,
            100,
            Some(0.37),
            Some(20),
        ),
        ("d 256", 1, 9, 9, 2, 2, 256, None, None),
        ("d 130, window 1", 1, 11, 11, 2, 1, 130, None, Some(1)),
        ("offset 77", 1, 3, 80, 2, 1, 16, None, None),
        ("offset 77, window 50", 1, 3, 80, 2, 1, 16, None, Some(50)),
    ];
    for (name, b, t, s, h, hkv, d, scale, window) in cases {
        let heads = AttentionHeads {
            scale: scale.unwrap_or(1.0 / (d as f32).sqrt()),
            window,
            ..AttentionHeads::causal(h, hkv, d)
        };
        let (q, k, v) = (
            random(&mut rng, b * t * h * d),
            random(&mut rng, b * s * hkv * d),
            random(&mut rng, b * s * hkv * d),
        );
        let g = random(&mut rng, b * t * h * d);
        let params = [(&q, h, t), (&k, hkv, s), (&v, hkv, s)]
            .map(|(x, n, len)| Tensor::param(gpu, x, &[b, len, n * d]).unwrap());
        let out = ops::causal_attention(&params[0], &params[1], &params[2], heads, s - t).unwrap();
        out.backward_with(Tensor::from_f32(gpu, &g, out.shape()).unwrap())
            .unwrap();
        let (q64, k64, v64, g64) = (to_f64(&q), to_f64(&k), to_f64(&v), to_f64(&g));
        let want = attention_ref(&q64, &k64, &v64, b, t, s, heads, d, s - t);
        assert_close(
            &format!("{name}: forward"),
            &out.to_vec_f32().unwrap(),
            &want,
            1e-5,
            1e-6,
        );
        let grads = attention_grads_ref(&q64, &k64, &v64, &g64, (b, t, s), heads, d, s - t);
        for ((p, want), input) in params.iter().zip(&grads).zip(["q", "k", "v"]) {
            let got = p.grad().unwrap().to_vec_f32().unwrap();
            assert_close(&format!("{name}: d{input}"), &got, want, 1e-4, 1e-5);
        }
    }
}

#[test]
fn the_f64_attention_gradients_agree_with_finite_differences() {
    // The reference the fused backward is held to, checked on its own.
    let mut rng = Rng::new(62);
    let (b, t, h, hkv, d) = (1, 4, 2, 1, 3);
    let heads = AttentionHeads {
        window: Some(3),
        ..AttentionHeads::causal(h, hkv, d)
    };
    let x: Vec<Vec<f64>> = [t * h * d, t * hkv * d, t * hkv * d]
        .map(|n| to_f64(&random(&mut rng, n)))
        .to_vec();
    let g = to_f64(&random(&mut rng, b * t * h * d));
    let grads = attention_grads_ref(&x[0], &x[1], &x[2], &g, (b, t, t), heads, d, 0);
    for (i, analytic) in grads.iter().enumerate() {
        let f = |xi: &[f64]| {
            let mut xs = x.clone();
            xs[i] = xi.to_vec();
            let out = attention_ref(&xs[0], &xs[1], &xs[2], b, t, t, heads, d, 0);
            out.iter().zip(&g).map(|(o, g)| o * g).sum::<f64>()
        };
        let numeric = numeric_grad(&f, &x[i], 1e-6);
        let analytic: Vec<f32> = analytic.iter().map(|&v| v as f32).collect();
        assert_close(&format!("input {i}"), &analytic, &numeric, 1e-5, 1e-6);
    }
}

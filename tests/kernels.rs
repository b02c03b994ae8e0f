//! Every kernel's forward against a plain f64 CPU reference, on random
//! inputs of awkward sizes (1, 7, 33, 257, non-multiples of every tile).

mod common;

use common::*;
use dora_wgpu::nn::Rng;
use dora_wgpu::ops::{self, Transpose};
use dora_wgpu::{DType, Gpu, GpuOptions, MatmulKernels, Tensor};

const SIZES: [usize; 5] = [1, 7, 33, 64, 257];

fn layouts() -> [(Transpose, bool, bool); 4] {
    [
        (Transpose::NN, false, false),
        (Transpose::NT, false, true),
        (Transpose::TN, true, false),
        (Transpose::TT, true, true),
    ]
}

#[test]
fn matmul_all_layouts_and_awkward_sizes_match_f64() {
    for gpu in gpu_per_matmul_family() {
        assert_ne!(gpu.matmul_kernels(), MatmulKernels::Auto);
        matmul_layouts_and_sizes(gpu);
    }
}

fn matmul_layouts_and_sizes(gpu: &Gpu) {
    let mut rng = Rng::new(1);
    for (t, ta, tb) in layouts() {
        for &m in &SIZES {
            // Odd and even K, N a multiple of 4 or not: the broadcast kernel reads
            // B in vector words when the sizes allow it.
            for &k in &[1usize, 7, 64, 257] {
                for &n in &[1usize, 8, 33, 70, 130, 300] {
                    let a = random(&mut rng, m * k);
                    let b = random(&mut rng, k * n);
                    let a_shape = if ta { [k, m] } else { [m, k] };
                    let b_shape = if tb { [n, k] } else { [k, n] };
                    let ga = Tensor::from_f32(gpu, &a, &a_shape).unwrap();
                    let gb = Tensor::from_f32(gpu, &b, &b_shape).unwrap();
                    let c = ops::matmul_ex(&ga, &gb, t).unwrap();
                    assert_eq!(c.shape(), &[m, n]);
                    let want = matmul_ref(&to_f64(&a), &to_f64(&b), m, k, n, ta, tb);
                    assert_close(
                        &format!(
                            "{:?} ({} lanes) {t:?} {m}x{k}x{n}",
                            gpu.matmul_kernels(),
                            gpu.broadcast_lanes()
                        ),
                        &c.to_vec_f32().unwrap(),
                        &want,
                        1e-5,
                        1e-5,
                    );
                }
            }
        }
    }
}

#[test]
fn matmul_batched_and_shared_weight_match_f64() {
    for gpu in gpu_per_matmul_family() {
        matmul_batched(gpu);
    }
}

fn matmul_batched(gpu: &Gpu) {
    let mut rng = Rng::new(2);
    // The second shape lets the broadcast kernel read B in vector words.
    for (t, ta, tb, (batch, m, k, n)) in layouts()
        .into_iter()
        .flat_map(|(t, ta, tb)| [(t, ta, tb, (3, 17, 40, 9)), (t, ta, tb, (2, 19, 33, 12))])
    {
        let a = random(&mut rng, batch * m * k);
        let b = random(&mut rng, batch * k * n);
        let a_shape = if ta { [batch, k, m] } else { [batch, m, k] };
        let b_shape = if tb { [batch, n, k] } else { [batch, k, n] };
        let c = ops::matmul_ex(
            &Tensor::from_f32(gpu, &a, &a_shape).unwrap(),
            &Tensor::from_f32(gpu, &b, &b_shape).unwrap(),
            t,
        )
        .unwrap();
        assert_eq!(c.shape(), &[batch, m, n]);
        let got = c.to_vec_f32().unwrap();
        for i in 0..batch {
            let want = matmul_ref(
                &to_f64(&a[i * m * k..(i + 1) * m * k]),
                &to_f64(&b[i * k * n..(i + 1) * k * n]),
                m,
                k,
                n,
                ta,
                tb,
            );
            assert_close(
                &format!("{t:?} {batch}x{m}x{k}x{n} batch {i}"),
                &got[i * m * n..(i + 1) * m * n],
                &want,
                1e-5,
                1e-5,
            );
        }
    }
    // [batch, tokens, in] x W[out, in]ᵀ: the weight is shared by every batch.
    let (k, n) = (40, 9);
    let x = random(&mut rng, 2 * 5 * k);
    let w = random(&mut rng, n * k);
    let y = ops::matmul_ex(
        &Tensor::from_f32(gpu, &x, &[2, 5, k]).unwrap(),
        &Tensor::from_f32(gpu, &w, &[n, k]).unwrap(),
        Transpose::NT,
    )
    .unwrap();
    assert_eq!(y.shape(), &[2, 5, n]);
    let want = matmul_ref(&to_f64(&x), &to_f64(&w), 10, k, n, false, true);
    assert_close("shared weight", &y.to_vec_f32().unwrap(), &want, 1e-5, 1e-5);
}

#[test]
fn matmul_with_16_bit_weights_matches_f64_of_the_rounded_weights() {
    for gpu in gpu_per_matmul_family() {
        matmul_16_bit(gpu);
    }
}

fn matmul_16_bit(gpu: &Gpu) {
    let mut rng = Rng::new(3);
    for dtype in [DType::BF16, DType::F16] {
        for (t, _, tb) in [(Transpose::NN, false, false), (Transpose::NT, false, true)] {
            // Odd and even K and N: the broadcast kernel reads two 16-bit values per word when it can.
            for &(m, k, n) in &[
                (1, 1, 1),
                (7, 33, 5),
                (65, 257, 33),
                (3, 8, 129),
                (9, 64, 136),
                (17, 30, 9),
                (5, 66, 260),
                (3, 7, 258),
                (6, 31, 264),
            ] {
                let a = random(&mut rng, m * k);
                let b = random(&mut rng, k * n);
                let b_shape = if tb { [n, k] } else { [k, n] };
                let gb = Tensor::from_f32_as(gpu, &b, &b_shape, dtype).unwrap();
                assert_eq!(gb.dtype(), dtype);
                let c =
                    ops::matmul_ex(&Tensor::from_f32(gpu, &a, &[m, k]).unwrap(), &gb, t).unwrap();
                // The kernel must unpack exactly what was stored: compare with the rounded weights.
                let rounded = if dtype == DType::BF16 {
                    round_bf16(&b)
                } else {
                    round_f16(&b)
                };
                let want = matmul_ref(&to_f64(&a), &to_f64(&rounded), m, k, n, false, tb);
                assert_close(
                    &format!("{dtype:?} {t:?} {m}x{k}x{n}"),
                    &c.to_vec_f32().unwrap(),
                    &want,
                    1e-5,
                    1e-5,
                );
                // And against the unrounded f32 weights, within the format's precision.
                let exact = matmul_ref(&to_f64(&a), &to_f64(&b), m, k, n, false, tb);
                let tol = if dtype == DType::BF16 { 1e-2 } else { 2e-3 };
                assert_close(
                    "vs f32 weights",
                    &c.to_vec_f32().unwrap(),
                    &exact,
                    tol,
                    tol * (k as f64).sqrt(),
                );
            }
        }
    }
}

/// The 16-lane broadcast kernels, which an adapter of 8 SIMD lanes (lavapipe)
/// never picks, forced on and run on every layout, size and weight type the
/// tests above give each family.
#[test]
fn broadcast_matmul_with_16_lanes_matches_f64() {
    let options = |lanes| GpuOptions {
        matmul_kernels: MatmulKernels::Broadcast,
        broadcast_lanes: Some(lanes),
        ..Default::default()
    };
    assert!(
        Gpu::with_options(&options(12)).is_err(),
        "only 8 or 16 lanes exist"
    );
    let gpu = Gpu::with_options(&options(16))
        .unwrap_or_else(|e| panic!("GPU tests need an adapter: {e}"));
    assert_eq!(gpu.matmul_kernels(), MatmulKernels::Broadcast);
    assert_eq!(gpu.broadcast_lanes(), 16);
    matmul_layouts_and_sizes(&gpu);
    matmul_batched(&gpu);
    matmul_16_bit(&gpu);
}

/// The cooperative-matrix kernel's self-test (what guards that path on a
/// real GPU) accepts kernels that agree with the f32 tiles and refuses one
/// that does not. Lavapipe has no cooperative matrices, so the candidates
/// are other kernels: the broadcast family (correct), and the broadcast
/// kernel's vector-B variant on a width it does not support (83 columns:
/// its vec4 loads of B land on the wrong columns), a genuinely wrong kernel.
#[test]
fn matmul_self_test_accepts_matching_kernels_and_refuses_a_wrong_one() {
    use dora_wgpu::shaders::MatmulKind;
    let gpu = gpu();
    let broadcast = |vector_b| MatmulKind::Broadcast {
        tall: false,
        vector_b,
        lanes: 8,
    };
    let worst = ops::matmul_self_test(gpu, broadcast(false)).expect("the broadcast kernel agrees");
    assert!(
        worst < 1e-5,
        "f32 kernels differ only in summation order: {worst}"
    );
    let why = ops::matmul_self_test(gpu, broadcast(true)).expect_err("misaligned vector loads");
    assert!(why.contains("largest difference"), "{why}");
}

/// Asking for cooperative matrices on an adapter without them (lavapipe)
/// leaves every product on the f32 kernels, with the same bits.
#[test]
fn cooperative_matrices_asked_for_without_them_change_nothing() {
    let gpu = Gpu::with_options(&GpuOptions {
        cooperative_matrix: true,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("GPU tests need an adapter: {e}"));
    let offered = gpu
        .adapter_report()
        .is_some_and(|r| r.cooperative_matrix && r.shader_f16);
    if offered {
        // A real GPU: whatever the self-test decides, the path says where it stands.
        let mut rng = Rng::new(3);
        let a = Tensor::from_f32(&gpu, &random(&mut rng, 64 * 64), &[64, 64]).unwrap();
        ops::matmul(&a, &a).unwrap().to_vec_f32().unwrap();
        assert!(gpu.uses_cooperative_matrix().is_some());
        return;
    }
    assert_eq!(gpu.uses_cooperative_matrix(), None);
    let plain = self::gpu();
    let mut rng = Rng::new(3);
    let (m, k, n) = (70, 46, 83);
    let a = random(&mut rng, m * k);
    let b = random(&mut rng, k * n);
    let product = |g: &Gpu| {
        let a = Tensor::from_f32(g, &a, &[m, k]).unwrap();
        let b = Tensor::from_f32(g, &b, &[k, n]).unwrap();
        ops::matmul(&a, &b).unwrap().to_vec_f32().unwrap()
    };
    assert_eq!(product(&gpu), product(plain));
    assert_eq!(gpu.uses_cooperative_matrix(), None);
}

#[test]
fn f16_decoding_covers_subnormals_signs_and_large_values() {
    let gpu = gpu();
    let values = [
        0.0f32, -0.0, 1.0, -2.5, 65504.0, -65504.0, 6.0e-8, -3.0e-6, 1.0e-4, 0.333, 1024.5,
    ];
    let t = Tensor::from_f32_as(gpu, &values, &[values.len()], DType::F16).unwrap();
    let wide = ops::to_f32(&t).unwrap().to_vec_f32().unwrap();
    assert_eq!(wide, round_f16(&values));
    let t = Tensor::from_f32_as(gpu, &values, &[values.len()], DType::BF16).unwrap();
    assert_eq!(
        ops::to_f32(&t).unwrap().to_vec_f32().unwrap(),
        round_bf16(&values)
    );
}

#[test]
fn row_norm_matches_f64_for_every_weight_dtype() {
    let gpu = gpu();
    let mut rng = Rng::new(4);
    for &(rows, cols) in &[(1, 1), (7, 33), (33, 257), (257, 7), (3, 1000)] {
        let w = random(&mut rng, rows * cols);
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let stored = match dtype {
                DType::BF16 => round_bf16(&w),
                DType::F16 => round_f16(&w),
                _ => w.clone(),
            };
            let t = Tensor::from_f32_as(gpu, &w, &[rows, cols], dtype).unwrap();
            let n = ops::row_norm(&t).unwrap();
            assert_close(
                &format!("row_norm {dtype:?} {rows}x{cols}"),
                &n.to_vec_f32().unwrap(),
                &row_norm_ref(&to_f64(&stored), rows, cols),
                1e-5,
                1e-6,
            );
        }
    }
}

#[test]
fn dora_recomposition_matches_f64() {
    let gpu = gpu();
    let mut rng = Rng::new(5);
    for &(out_f, in_f, r) in &[(1, 1, 1), (7, 33, 4), (65, 257, 16), (300, 20, 3)] {
        let w = random(&mut rng, out_f * in_f);
        let a = random(&mut rng, r * in_f);
        let b = random(&mut rng, out_f * r);
        let m: Vec<f32> = (0..out_f).map(|_| rng.uniform_in(0.5, 2.0)).collect();
        let s = 16.0 / r as f32;
        for dtype in [DType::F32, DType::BF16] {
            let stored = if dtype == DType::BF16 {
                round_bf16(&w)
            } else {
                w.clone()
            };
            let (merged, norms) = ops::recompose(
                &Tensor::from_f32_as(gpu, &w, &[out_f, in_f], dtype).unwrap(),
                &Tensor::from_f32(gpu, &a, &[r, in_f]).unwrap(),
                &Tensor::from_f32(gpu, &b, &[out_f, r]).unwrap(),
                &Tensor::from_f32(gpu, &m, &[out_f]).unwrap(),
                s,
            )
            .unwrap();
            // f64 reference: V = W + s·B·A, W' = m ⊙ V / ||V||_row
            let ba = matmul_ref(&to_f64(&b), &to_f64(&a), out_f, r, in_f, false, false);
            let v: Vec<f64> = stored
                .iter()
                .zip(&ba)
                .map(|(&w, ba)| w as f64 + s as f64 * ba)
                .collect();
            let n = row_norm_ref(&v, out_f, in_f);
            let want: Vec<f64> = v
                .iter()
                .enumerate()
                .map(|(i, v)| m[i / in_f] as f64 * v / n[i / in_f])
                .collect();
            let label = format!("recompose {dtype:?} {out_f}x{in_f} r{r}");
            assert_close(&label, &merged.to_vec_f32().unwrap(), &want, 1e-5, 1e-6);
            assert_close(&label, &norms.to_vec_f32().unwrap(), &n, 1e-5, 1e-6);
        }
    }
}

#[test]
fn elementwise_ops_and_broadcasts_match_f64() {
    let gpu = gpu();
    let mut rng = Rng::new(6);
    let (rows, cols) = (33, 257);
    let a = random(&mut rng, rows * cols);
    let b_full: Vec<f32> = random(&mut rng, rows * cols)
        .iter()
        .map(|v| v + 2.5)
        .collect();
    let b_row: Vec<f32> = (0..cols).map(|_| rng.uniform_in(0.5, 2.0)).collect();
    let b_per_row: Vec<f32> = (0..rows).map(|_| rng.uniform_in(0.5, 2.0)).collect();
    let ta = Tensor::from_f32(gpu, &a, &[rows, cols]).unwrap();
    // (b, its shape, which b element pairs with element i of a)
    type Index = fn(usize, usize) -> usize;
    let cases: [(&[f32], Vec<usize>, Index); 3] = [
        (&b_full, vec![rows, cols], |i, _| i),
        (&b_row, vec![cols], |i, cols| i % cols),
        (&b_per_row, vec![rows, 1], |i, cols| i / cols),
    ];
    type BinaryCase = (
        &'static str,
        fn(&Tensor, &Tensor) -> dora_wgpu::Result<Tensor>,
        fn(f64, f64) -> f64,
    );
    type UnaryCase = (
        &'static str,
        fn(&Tensor) -> dora_wgpu::Result<Tensor>,
        fn(f64) -> f64,
    );
    for (b, shape, index) in cases.iter() {
        let tb = Tensor::from_f32(gpu, b, shape).unwrap();
        let ops_list: [BinaryCase; 4] = [
            ("add", ops::add, |x, y| x + y),
            ("sub", ops::sub, |x, y| x - y),
            ("mul", ops::mul, |x, y| x * y),
            ("div", ops::div, |x, y| x / y),
        ];
        for (name, op, f) in ops_list {
            let got = op(&ta, &tb).unwrap().to_vec_f32().unwrap();
            let want: Vec<f64> = (0..a.len())
                .map(|i| f(a[i] as f64, b[index(i, cols)] as f64))
                .collect();
            assert_close(&format!("{name} b{shape:?}"), &got, &want, 1e-6, 1e-6);
        }
    }
    let unary: [UnaryCase; 4] = [
        ("silu", ops::silu, |x| x / (1.0 + (-x).exp())),
        ("gelu_tanh", ops::gelu_tanh, gelu_tanh_ref),
        ("square", ops::square, |x| x * x),
        ("exp", ops::exp, |x| x.exp()),
    ];
    for (name, op, f) in unary {
        let got = op(&ta).unwrap().to_vec_f32().unwrap();
        let want: Vec<f64> = a.iter().map(|&x| f(x as f64)).collect();
        assert_close(name, &got, &want, 1e-5, 1e-6);
    }
    let positive = Tensor::from_f32(gpu, &b_full, &[rows, cols]).unwrap();
    let want: Vec<f64> = b_full.iter().map(|&x| (x as f64).sqrt()).collect();
    assert_close(
        "sqrt",
        &ops::sqrt(&positive).unwrap().to_vec_f32().unwrap(),
        &want,
        1e-6,
        1e-6,
    );
    let want: Vec<f64> = a.iter().map(|&x| -0.75 * x as f64).collect();
    assert_close(
        "scale",
        &ops::scale(&ta, -0.75).unwrap().to_vec_f32().unwrap(),
        &want,
        1e-6,
        1e-7,
    );

    // In-place accumulation.
    let acc = ops::copy(&ta).unwrap();
    ops::add_assign(&acc, &positive, 0.5).unwrap();
    let want: Vec<f64> = a
        .iter()
        .zip(&b_full)
        .map(|(&x, &y)| x as f64 + 0.5 * y as f64)
        .collect();
    assert_close("add_assign", &acc.to_vec_f32().unwrap(), &want, 1e-6, 1e-6);
}

#[test]
fn elementwise_ops_cover_more_than_one_dispatch_row() {
    // > 65535 workgroups of 256: the kernel must rebuild its index from a 2-D grid.
    let gpu = gpu();
    let n = 65_536 * 256 + 1000;
    let data: Vec<f32> = (0..n).map(|i| (i % 1000) as f32).collect();
    let t = Tensor::from_f32(gpu, &data, &[n]).unwrap();
    let got = ops::scale(&t, 2.0).unwrap().to_vec_f32().unwrap();
    for i in [0, 1, 65_535 * 256, 65_536 * 256, n - 1] {
        assert_eq!(got[i], 2.0 * data[i], "element {i}");
    }
    assert!(got.iter().zip(&data).all(|(g, d)| *g == 2.0 * d));
}

#[test]
fn reductions_match_f64() {
    let gpu = gpu();
    let mut rng = Rng::new(7);
    // 2100 rows: column sums in 66 chunks of 32, then 3, then 1.
    for &(rows, cols) in &[(1, 1), (7, 33), (257, 3), (5, 1000), (2100, 5)] {
        let x = random(&mut rng, rows * cols);
        let t = Tensor::from_f32(gpu, &x, &[rows, cols]).unwrap();
        let want_rows: Vec<f64> = x
            .chunks(cols)
            .map(|r| r.iter().map(|&v| v as f64).sum())
            .collect();
        let want_cols: Vec<f64> = (0..cols)
            .map(|j| (0..rows).map(|i| x[i * cols + j] as f64).sum())
            .collect();
        let total: f64 = x.iter().map(|&v| v as f64).sum();
        assert_close(
            "sum_rows",
            &ops::sum_rows(&t).unwrap().to_vec_f32().unwrap(),
            &want_rows,
            1e-5,
            1e-5,
        );
        assert_close(
            "sum_cols",
            &ops::sum_cols(&t).unwrap().to_vec_f32().unwrap(),
            &want_cols,
            1e-5,
            1e-5,
        );
        assert_close(
            "sum_all",
            &ops::sum_all(&t).unwrap().to_vec_f32().unwrap(),
            &[total],
            1e-5,
            1e-4,
        );
        let mean = total / (rows * cols) as f64;
        assert_close(
            "mean_all",
            &ops::mean_all(&t).unwrap().to_vec_f32().unwrap(),
            &[mean],
            1e-5,
            1e-6,
        );
    }
}

#[test]
fn softmax_matches_f64_including_large_logits() {
    let gpu = gpu();
    let mut rng = Rng::new(8);
    for &(rows, cols) in &[(1, 1), (7, 33), (3, 1000)] {
        let x: Vec<f32> = random(&mut rng, rows * cols)
            .iter()
            .map(|v| v * 30.0 + 50.0)
            .collect();
        let y = ops::softmax(&Tensor::from_f32(gpu, &x, &[rows, cols]).unwrap()).unwrap();
        assert_close(
            "softmax",
            &y.to_vec_f32().unwrap(),
            &softmax_ref(&to_f64(&x), cols),
            1e-5,
            1e-7,
        );
    }
}

#[test]
fn cross_entropy_matches_f64_with_ignored_rows() {
    let gpu = gpu();
    let mut rng = Rng::new(9);
    for &(rows, classes) in &[(1, 2), (7, 33), (300, 257), (4, 5000)] {
        let logits: Vec<f32> = random(&mut rng, rows * classes)
            .iter()
            .map(|v| v * 8.0)
            .collect();
        let targets: Vec<i32> = (0..rows)
            .map(|i| {
                if i % 3 == 1 {
                    ops::IGNORE_INDEX
                } else {
                    (rng.next_u64() % classes as u64) as i32
                }
            })
            .collect();
        let loss = ops::cross_entropy(
            &Tensor::from_f32(gpu, &logits, &[rows, classes]).unwrap(),
            &Tensor::from_i32(gpu, &targets, &[rows]).unwrap(),
            ops::IGNORE_INDEX,
        )
        .unwrap();
        let want = cross_entropy_ref(&to_f64(&logits), &targets, classes, ops::IGNORE_INDEX);
        assert_close(
            &format!("ce {rows}x{classes}"),
            &[loss.item().unwrap()],
            &[want],
            1e-5,
            1e-6,
        );
    }
    // Every row ignored: the loss is 0, not NaN.
    let loss = ops::cross_entropy(
        &Tensor::from_f32(gpu, &[1.0, 2.0], &[1, 2]).unwrap(),
        &Tensor::from_i32(gpu, &[ops::IGNORE_INDEX], &[1]).unwrap(),
        ops::IGNORE_INDEX,
    )
    .unwrap();
    assert_eq!(loss.item().unwrap(), 0.0);
}

/// The row reductions (sums, maxima) run on subgroup operations where the
/// adapter has them, and through workgroup memory otherwise: both give the
/// f64 results, and the default context takes subgroups wherever offered.
#[test]
fn row_reductions_match_f64_with_and_without_subgroups() {
    let with = gpu();
    let offered = with.adapter_report().expect("own device").subgroups;
    assert_eq!(
        with.uses_subgroups(),
        offered && std::env::var("DORA_SUBGROUPS").as_deref() != Ok("0"),
        "subgroups are used exactly where the adapter offers them"
    );
    let without = Gpu::with_options(&GpuOptions {
        subgroups: false,
        ..Default::default()
    })
    .unwrap();
    assert!(!without.uses_subgroups());
    let mut rng = Rng::new(10);
    for gpu in [with, &without] {
        for &(rows, cols) in &[(1, 1), (5, 7), (9, 64), (3, 1000)] {
            let x: Vec<f32> = random(&mut rng, rows * cols)
                .iter()
                .map(|v| v * 20.0)
                .collect();
            let t = Tensor::from_f32(gpu, &x, &[rows, cols]).unwrap();
            let label = format!("{rows}×{cols}, subgroups {}", gpu.uses_subgroups());
            assert_close(
                &format!("softmax {label}"),
                &ops::softmax(&t).unwrap().to_vec_f32().unwrap(),
                &softmax_ref(&to_f64(&x), cols),
                1e-5,
                1e-7,
            );
            let sums: Vec<f64> = x
                .chunks(cols)
                .map(|r| r.iter().map(|&v| v as f64).sum())
                .collect();
            assert_close(
                &format!("sum_rows {label}"),
                &ops::sum_rows(&t).unwrap().to_vec_f32().unwrap(),
                &sums,
                1e-5,
                1e-4,
            );
            assert_close(
                &format!("row_norm {label}"),
                &ops::row_norm(&t).unwrap().to_vec_f32().unwrap(),
                &row_norm_ref(&to_f64(&x), rows, cols),
                1e-5,
                1e-5,
            );
        }
    }
}

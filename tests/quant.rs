//! A quantized base on the GPU: llama.cpp's blocks uploaded as stored and
//! decoded inside the kernels. The GPU decoder against gguf-py bit for bit;
//! matmul (forward x·Wᵀ and backward dy·W), the row norm, the embedding and a
//! DoRA layer over blocks against f64 on the values the CPU decoder gives
//! (itself checked against gguf-py in tests/gguf.rs).

mod common;

use common::*;
use dora_wgpu::io::gguf::blocks::dequantize;
use dora_wgpu::io::gguf::{GgmlType, GgufFile};
use dora_wgpu::nn::{AdapterOptions, DoraLinear, DoraPath, Linear, Rng};
use dora_wgpu::ops::{self, Transpose};
use dora_wgpu::{DType, Quant, Tensor};
use std::path::Path;

/// Every quantized format, as the GGUF reader names it.
fn quantized() -> Vec<(GgmlType, Quant)> {
    GgmlType::ALL
        .into_iter()
        .filter_map(|k| match k.dtype() {
            DType::Quant(q) => Some((k, q)),
            _ => None,
        })
        .collect()
}

#[test]
fn gpu_decodes_every_block_format_bit_for_bit_as_gguf_py() {
    let gpu = gpu();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf/blocks.gguf");
    let file = GgufFile::open(&path).unwrap();
    for kind in GgmlType::ALL {
        let (info, bytes) = file.tensor_bytes(&format!("{}.q", kind.name())).unwrap();
        let (_, want) = file
            .tensor_f32(&format!("{}.expected", kind.name()))
            .unwrap();
        let t = Tensor::from_le_bytes(gpu, bytes, &info.shape, kind.dtype()).unwrap();
        assert_eq!(t.dtype(), kind.dtype());
        let got = t.to_vec_f32().unwrap();
        assert_eq!(got.len(), want.len(), "{}", kind.name());
        if let Some(i) = got
            .iter()
            .zip(&want)
            .position(|(a, b)| a.to_bits() != b.to_bits())
        {
            panic!(
                "{}: value {i} decodes to {} on the GPU, {} in gguf-py",
                kind.name(),
                got[i],
                want[i]
            );
        }
    }
}

/// Random blocks for a [rows, cols] weight: random bytes (every quant, sign
/// and sub-scale pattern), with each f16 scale field set to a small normal
/// value so the weights are finite and of a sane size.
fn random_blocks(rng: &mut Rng, q: Quant, rows: usize, cols: usize) -> Vec<u8> {
    let (values, bytes) = q.block();
    let blocks = rows * cols / values;
    let mut data: Vec<u8> = (0..blocks * bytes)
        .map(|_| (rng.next_u64() >> 56) as u8)
        .collect();
    // Byte offsets of (scale, offset-or-min) fields in each block.
    let fields: &[usize] = match q {
        Quant::Q4_0 | Quant::Q5_0 | Quant::Q8_0 => &[0],
        Quant::Q4_1 | Quant::Q5_1 | Quant::Q4_K | Quant::Q5_K => &[0, 2],
        Quant::Q2_K => &[80, 82],
        Quant::Q3_K => &[108],
        Quant::Q6_K => &[208],
    };
    for block in data.chunks_exact_mut(bytes) {
        for &at in fields {
            let d = half::f16::from_f32(rng.uniform_in(0.002, 0.03));
            block[at..at + 2].copy_from_slice(&d.to_le_bytes());
        }
    }
    data
}

fn decoded(q: Quant, bytes: &[u8]) -> Vec<f32> {
    let mut out = Vec::new();
    dequantize(GgmlType::from(q), bytes, &mut out);
    out
}

/// A quantized [rows, cols] weight on the GPU and its decoded values.
fn quantized_weight(rng: &mut Rng, q: Quant, rows: usize, cols: usize) -> (Tensor, Vec<f32>) {
    let bytes = random_blocks(rng, q, rows, cols);
    let values = decoded(q, &bytes);
    assert!(values.iter().all(|v| v.is_finite()), "{}", q.name());
    let t = Tensor::from_le_bytes(gpu(), &bytes, &[rows, cols], DType::Quant(q)).unwrap();
    (t, values)
}

fn abs(v: &[f32]) -> Vec<f64> {
    v.iter().map(|x| x.abs() as f64).collect()
}

/// An f32 dot product of length k is within about k·ε of Σ|a·b| (`size`):
/// the bound used here is 1e-5 of it, far below any decoding error (a wrong
/// quant or scale moves a result by a whole weight step).
fn assert_dot_close(what: &str, got: &[f32], want: &[f64], size: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, ((&g, &w), &s)) in got.iter().zip(want).zip(size).enumerate() {
        let err = (g as f64 - w).abs();
        assert!(
            err <= 1e-5 * s + 1e-7,
            "{what}: element {i}: got {g}, want {w} (|err| {err:e}, Σ|a·b| {s:e})"
        );
    }
}

#[test]
fn matmul_over_blocks_matches_f64_forward_and_backward() {
    let mut rng = Rng::new(41);
    let (n, k) = (40, 512);
    for (_, q) in quantized() {
        let bytes = random_blocks(&mut rng, q, n, k);
        let w64 = to_f64(&decoded(q, &bytes));
        let w_abs: Vec<f64> = w64.iter().map(|v| v.abs()).collect();
        for gpu in gpu_per_matmul_family() {
            let w = Tensor::from_le_bytes(gpu, &bytes, &[n, k], DType::Quant(q)).unwrap();
            for m in [1, 3, 70] {
                // Forward: y = x·Wᵀ.
                let x = random(&mut rng, m * k);
                let xt = Tensor::from_f32(gpu, &x, &[m, k]).unwrap();
                let y = ops::matmul_ex(&xt, &w, Transpose::NT).unwrap();
                let want = matmul_ref(&to_f64(&x), &w64, m, k, n, false, true);
                let size = matmul_ref(&abs(&x), &w_abs, m, k, n, false, true);
                let what = format!("{} x·Wᵀ m={m} on {:?}", q.name(), gpu.matmul_kernels());
                assert_dot_close(&what, &y.to_vec_f32().unwrap(), &want, &size);
                // Backward through the input: dx = dy·W.
                let dy = random(&mut rng, m * n);
                let dyt = Tensor::from_f32(gpu, &dy, &[m, n]).unwrap();
                let dx = ops::matmul(&dyt, &w).unwrap();
                let want = matmul_ref(&to_f64(&dy), &w64, m, n, k, false, false);
                let size = matmul_ref(&abs(&dy), &w_abs, m, n, k, false, false);
                let what = format!("{} dy·W m={m} on {:?}", q.name(), gpu.matmul_kernels());
                assert_dot_close(&what, &dx.to_vec_f32().unwrap(), &want, &size);
            }
            // A transposed A never meets a frozen weight: refused, not miscomputed.
            let a = Tensor::from_f32(gpu, &random(&mut rng, 2 * n), &[n, 2]).unwrap();
            let err = ops::matmul_ex(&a, &w, Transpose::TN).unwrap_err();
            assert!(err.to_string().contains(q.name()), "{err}");
        }
    }
}

#[test]
fn row_norm_and_embedding_read_blocks() {
    let gpu = gpu();
    let mut rng = Rng::new(43);
    let (rows, cols) = (12, 512);
    for (_, q) in quantized() {
        let (w, values) = quantized_weight(&mut rng, q, rows, cols);
        let norms = ops::row_norm(&w).unwrap().to_vec_f32().unwrap();
        let want = row_norm_ref(&to_f64(&values), rows, cols);
        assert_close(&format!("{} row norm", q.name()), &norms, &want, 1e-5, 1e-6);

        let ids = [3, 0, 11, 3, 7];
        let idt = Tensor::from_i32(gpu, &ids, &[5]).unwrap();
        let got = ops::embedding(&w, &idt).unwrap();
        assert_eq!(got.shape(), [5, cols]);
        let want: Vec<f32> = ids
            .iter()
            .flat_map(|&i| values[i as usize * cols..(i as usize + 1) * cols].to_vec())
            .collect();
        assert_eq!(got.to_vec_f32().unwrap(), want, "{} embedding", q.name());
    }
}

/// y = (m / ‖W + s·B·A‖_row) ⊙ (x·Wᵀ + s·x·Aᵀ·Bᵀ) in f64.
fn dora_ref(x: &[f64], w: &[f64], layer: &DoraLinear, t: usize) -> Vec<f64> {
    let read = |p: &Tensor| to_f64(&p.to_vec_f32().unwrap());
    let (a, b, m) = (
        read(&layer.lora_a),
        read(&layer.lora_b),
        read(&layer.magnitude),
    );
    let (out_f, in_f) = (layer.base.out_features(), layer.base.in_features());
    let r = a.len() / in_f;
    let s = layer.scale as f64;
    let ba = matmul_ref(&b, &a, out_f, r, in_f, false, false);
    let v: Vec<f64> = w.iter().zip(&ba).map(|(w, ba)| w + s * ba).collect();
    let n = row_norm_ref(&v, out_f, in_f);
    let z = matmul_ref(x, &v, t, in_f, out_f, false, true);
    (0..t * out_f)
        .map(|i| m[i % out_f] / n[i % out_f] * z[i])
        .collect()
}

/// Output and the gradients of A, B, m and x for loss = Σ y ⊙ r.
fn outputs_and_grads(layer: &DoraLinear, x: &Tensor, r: &Tensor) -> Vec<Vec<f32>> {
    x.zero_grad();
    for p in layer.parameters() {
        p.zero_grad();
    }
    let y = layer.forward(x).unwrap();
    ops::sum_all(&ops::mul(&y, r).unwrap())
        .unwrap()
        .backward()
        .unwrap();
    let mut out = vec![y.to_vec_f32().unwrap()];
    out.extend(
        layer
            .parameters()
            .iter()
            .map(|p| p.grad().unwrap().to_vec_f32().unwrap()),
    );
    out.push(x.grad().unwrap().to_vec_f32().unwrap());
    out
}

#[test]
fn dora_over_a_quantized_base_matches_the_dequantized_base() {
    let gpu = gpu();
    let mut rng = Rng::new(47);
    let (t, in_f, out_f, rank) = (6, 256, 24, 4);
    let options = AdapterOptions {
        rank,
        alpha: 8.0,
        ..Default::default()
    };
    for (_, q) in quantized() {
        let (wq, values) = quantized_weight(&mut rng, q, out_f, in_f);
        let wf = Tensor::from_f32(gpu, &values, &[out_f, in_f]).unwrap();
        let seed = rng.next_u64();
        let mut quant = DoraLinear::new(Linear::new(wq, None).unwrap(), &options, seed).unwrap();
        let mut dense = DoraLinear::new(Linear::new(wf, None).unwrap(), &options, seed).unwrap();
        // Move both off their initial values (B ≠ 0, m ≠ ‖W‖) identically.
        for (pq, pd) in quant.parameters().iter().zip(dense.parameters()) {
            let d = random(&mut rng, pq.numel());
            let d = Tensor::from_f32(gpu, &d, pq.shape()).unwrap();
            ops::add_assign(pq, &d, 0.1).unwrap();
            ops::add_assign(&pd, &d, 0.1).unwrap();
        }
        let x = random(&mut rng, t * in_f);
        let r = Tensor::from_f32(gpu, &random(&mut rng, t * out_f), &[t, out_f]).unwrap();
        for path in [DoraPath::Factored, DoraPath::Direct] {
            quant.path = path;
            dense.path = path;
            let xq = Tensor::param(gpu, &x, &[t, in_f]).unwrap();
            let xd = Tensor::param(gpu, &x, &[t, in_f]).unwrap();
            let got = outputs_and_grads(&quant, &xq, &r);
            let want = outputs_and_grads(&dense, &xd, &r);
            let names = ["y", "dA", "dB", "dm", "dx"];
            for ((name, g), w) in names.iter().zip(&got).zip(&want) {
                let what = format!("{} {path:?} {name}", q.name());
                assert_close(&what, g, &to_f64(w), 1e-5, 1e-6);
            }
            let want = dora_ref(&to_f64(&x), &to_f64(&values), &quant, t);
            let what = format!("{} {path:?} y against f64", q.name());
            assert_close(&what, &got[0], &want, 1e-4, 1e-4);
        }
        // Merging yields a dense weight (blocks are only ever read) equal to
        // the one over the dequantized base.
        let (merged, _) = quant.merge().unwrap();
        assert_eq!(merged.dtype(), DType::F32, "{}", q.name());
        let (want, _) = dense.merge().unwrap();
        let what = format!("{} merged weight", q.name());
        assert_close(
            &what,
            &merged.to_vec_f32().unwrap(),
            &to_f64(&want.to_vec_f32().unwrap()),
            1e-6,
            1e-7,
        );
    }
}

//! Bad shapes and arguments come back as errors with a one-line message that
//! names what is wrong; nothing panics.

mod common;

use common::*;
use dora_wgpu::ops::{self, Transpose};
use dora_wgpu::{DType, Tensor};

#[test]
fn shape_mismatches_are_errors() {
    let gpu = gpu();
    let a = Tensor::from_f32(gpu, &[0.0; 6], &[2, 3]).unwrap();
    let b = Tensor::from_f32(gpu, &[0.0; 8], &[4, 2]).unwrap();
    one_line_error(
        ops::matmul(&a, &b),
        &["[2, 3]", "[4, 2]", "inner dimensions 3 and 4"],
    );
    one_line_error(
        ops::matmul_ex(&a, &b, Transpose::TN),
        &["inner dimensions 2 and 4"],
    );
    one_line_error(ops::add(&a, &b), &["cannot broadcast", "[4, 2]", "[2, 3]"]);
    one_line_error(ops::reshape(&a, &[5]), &["[2, 3]", "[5]"]);
    let v = Tensor::from_f32(gpu, &[0.0; 3], &[3]).unwrap();
    one_line_error(ops::matmul(&v, &a), &["matrices"]);
    let batched = Tensor::from_f32(gpu, &[0.0; 12], &[2, 2, 3]).unwrap();
    let other = Tensor::from_f32(gpu, &[0.0; 18], &[3, 3, 2]).unwrap();
    one_line_error(ops::matmul(&batched, &other), &["batch"]);
    one_line_error(ops::row_norm(&v), &["2-D"]);
    one_line_error(
        Tensor::from_f32(gpu, &[1.0, 2.0], &[3]),
        &["2 values", "[3]"],
    );
    one_line_error(a.item(), &["[2, 3]"]);
    one_line_error(a.backward(), &["one-element"]);
}

#[test]
fn cross_entropy_checks_targets() {
    let gpu = gpu();
    let logits = Tensor::from_f32(gpu, &[0.0; 6], &[2, 3]).unwrap();
    let wrong_count = Tensor::from_i32(gpu, &[0, 1, 2], &[3]).unwrap();
    one_line_error(
        ops::cross_entropy(&logits, &wrong_count, -100),
        &["3 targets", "2 rows"],
    );
    let float_targets = Tensor::from_f32(gpu, &[0.0, 1.0], &[2]).unwrap();
    one_line_error(ops::cross_entropy(&logits, &float_targets, -100), &["i32"]);
}

#[test]
fn dtype_misuse_is_an_error() {
    let gpu = gpu();
    let ids = Tensor::from_i32(gpu, &[1, 2, 3, 4], &[2, 2]).unwrap();
    let x = Tensor::from_f32(gpu, &[0.0; 4], &[2, 2]).unwrap();
    one_line_error(ops::matmul(&ids, &x), &["A must be f32", "i32"]);
    one_line_error(ops::matmul(&x, &ids), &["B must be f32, bf16 or f16"]);
    let half = Tensor::from_f32_as(gpu, &[0.0; 4], &[2, 2], DType::BF16).unwrap();
    one_line_error(ops::add(&half, &x), &["f32", "bf16"]);
    one_line_error(half.clone().into_param(), &["only f32"]);
    one_line_error(x.to_vec_i32(), &["f32"]);
    // A 16-bit weight cannot feed the gradient of a transposed-A product.
    let p = Tensor::param(gpu, &[0.0; 4], &[2, 2]).unwrap();
    one_line_error(ops::matmul_ex(&p, &half, Transpose::TN), &["f32 B"]);
}

#[test]
fn recompose_names_the_tensor_with_the_wrong_shape() {
    let gpu = gpu();
    let w = Tensor::from_f32(gpu, &[0.0; 12], &[3, 4]).unwrap();
    let a = Tensor::from_f32(gpu, &[0.0; 8], &[2, 4]).unwrap();
    let b = Tensor::from_f32(gpu, &[0.0; 6], &[3, 2]).unwrap();
    let m = Tensor::from_f32(gpu, &[1.0; 3], &[3]).unwrap();
    let bad_a = Tensor::from_f32(gpu, &[0.0; 10], &[2, 5]).unwrap();
    let bad_b = Tensor::from_f32(gpu, &[0.0; 4], &[2, 2]).unwrap();
    let bad_m = Tensor::from_f32(gpu, &[1.0; 4], &[4]).unwrap();
    one_line_error(
        ops::recompose(&w, &bad_a, &b, &m, 1.0),
        &["lora_A", "[2, 5]"],
    );
    one_line_error(
        ops::recompose(&w, &a, &bad_b, &m, 1.0),
        &["lora_B", "[2, 2]", "[3, 2]"],
    );
    one_line_error(
        ops::recompose(&w, &a, &b, &bad_m, 1.0),
        &["magnitude", "[4]", "[3]"],
    );
    assert!(ops::recompose(&w, &a, &b, &m, 1.0).is_ok());
}

#[test]
fn layers_reject_bad_arguments() {
    use dora_wgpu::nn::{AdapterOptions, DoraLinear, Linear};
    let gpu = gpu();
    let w = Tensor::from_f32(gpu, &[0.0; 12], &[3, 4]).unwrap();
    let bias = Tensor::from_f32(gpu, &[0.0; 4], &[4]).unwrap();
    one_line_error(Linear::new(w.clone(), Some(bias)), &["bias", "[4]", "[3]"]);
    let trainable = Tensor::param(gpu, &[0.0; 12], &[3, 4]).unwrap();
    one_line_error(Linear::new(trainable, None), &["frozen"]);
    let base = Linear::new(w, None).unwrap();
    let zero_rank = AdapterOptions {
        rank: 0,
        ..Default::default()
    };
    one_line_error(DoraLinear::new(base.clone(), &zero_rank, 0), &["rank"]);
    let bad_dropout = AdapterOptions {
        dropout: 1.0,
        ..Default::default()
    };
    one_line_error(DoraLinear::new(base, &bad_dropout, 0), &["dropout"]);
}

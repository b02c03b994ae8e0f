//! Mean cross-entropy with an ignore index, and its fused backward.

use super::{rows_cols, VocabMatrix};
use crate::autograd::record;
use crate::error::{shape_err, Result};
use crate::kernels::elementwise::binary;
use crate::kernels::loss::CrossEntropy;
use crate::kernels::{BinaryOp, Broadcast};
use crate::tensor::{DType, Tensor};

/// Targets equal to this (PyTorch's default) are left out of the loss.
pub const IGNORE_INDEX: i32 = -100;

/// Mean over counted rows of `-log softmax(logits)[target]`.
/// `logits` is [..., classes] f32, `targets` i32 with one entry per row;
/// rows with target `ignore_index` (or any negative target) are skipped.
/// Returns a [1] tensor (0 when no row counts).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor, ignore_index: i32) -> Result<Tensor> {
    logits.expect_f32("cross_entropy", "logits")?;
    let (rows, _) = rows_cols(logits);
    if targets.dtype() != DType::I32 {
        shape_err!(
            "cross_entropy: targets must be i32, got {}",
            targets.dtype().name()
        );
    }
    if targets.numel() != rows {
        shape_err!(
            "cross_entropy: {} targets for {rows} rows of logits {:?}",
            targets.numel(),
            logits.shape()
        );
    }
    let (loss, saved) = CrossEntropy::forward(logits, targets, ignore_index, None)?;
    Ok(record(loss, "cross_entropy", &[logits], move |g, _| {
        Ok(vec![Some(saved.backward(g)?)])
    }))
}

/// Mean cross-entropy of the logits `hidden · headᵀ` over the rows whose
/// target is not ignored, computed `chunk_rows` rows at a time: [rows, vocab]
/// logits, and their gradient, exist for one chunk at a time only. When a
/// gradient will be needed, each chunk's contribution to dL/d(hidden) is
/// computed right there, while its logits exist (the loss is a graph's last
/// node, so only a scalar can still multiply it): backward scales a saved
/// [rows, dim] tensor instead of computing every chunk's logits again.
/// `hidden` [rows, dim] f32; `head` [vocab, dim] is frozen (f32, bf16 or f16:
/// the LM head or tied embedding, in one block or several). Chunks are cut
/// smaller where [chunk_rows, vocab] logits would exceed half the device's
/// binding limit (Gemma 3's 262k vocabulary on a 128 MiB device).
/// `softcap` (Gemma's `final_logit_softcapping`) caps every logit to
/// `c·tanh(x / c)` inside the loss kernels, forward and backward.
pub fn lm_head_cross_entropy(
    hidden: &Tensor,
    head: &VocabMatrix,
    targets: &[i32],
    chunk_rows: usize,
    softcap: Option<f32>,
) -> Result<Tensor> {
    hidden.expect_f32("lm_head_cross_entropy", "hidden states")?;
    let &[rows, dim] = hidden.shape() else {
        shape_err!(
            "lm_head_cross_entropy: hidden states must be [rows, dim], got {:?}",
            hidden.shape()
        );
    };
    if head.cols() != dim {
        shape_err!(
            "lm_head_cross_entropy: head {:?} does not take {dim}-wide hidden states",
            head.shape()
        );
    }
    if head.blocks().iter().any(|(_, b)| b.requires_grad()) {
        shape_err!(
            "lm_head_cross_entropy: the head is frozen; pass a tensor that is not trainable"
        );
    }
    if targets.len() != rows {
        shape_err!(
            "lm_head_cross_entropy: {} targets for {rows} rows",
            targets.len()
        );
    }
    if let Some(c) = softcap.filter(|c| !(c.is_finite() && *c > 0.0)) {
        shape_err!("lm_head_cross_entropy: the soft cap must be a positive number, got {c}");
    }
    let gpu = hidden.gpu().clone();
    let limits = gpu.limits();
    let limit = limits
        .max_storage_buffer_binding_size
        .min(limits.max_buffer_size) as usize;
    let chunk_rows = chunk_rows.min(limit / 2 / (4 * head.rows()).max(1)).max(1);
    let total = targets.iter().filter(|&&t| t >= 0).count();
    // Chunks that score something, with their share of the mean.
    let chunks: Vec<(usize, usize, f32)> = (0..rows)
        .step_by(chunk_rows)
        .map(|start| {
            let len = chunk_rows.min(rows - start);
            let count = targets[start..start + len]
                .iter()
                .filter(|&&t| t >= 0)
                .count();
            (start, len, count as f32 / total.max(1) as f32)
        })
        .filter(|c| c.2 > 0.0)
        .collect();
    let loss = Tensor::zeros(&gpu, &[1], DType::F32)?;
    let wants_grad = crate::autograd::is_grad_enabled() && hidden.requires_grad();
    // dL/d(hidden) for an incoming gradient of 1.
    let dhidden = if wants_grad {
        Some(Tensor::zeros(&gpu, &[rows, dim], DType::F32)?)
    } else {
        None
    };
    for &(start, len, share) in &chunks {
        let logits = head.logits_raw(&copy_rows(hidden, start, len)?)?;
        let t = Tensor::from_i32(&gpu, &targets[start..start + len], &[len])?;
        let (mean, saved) = CrossEntropy::forward(&logits, &t, IGNORE_INDEX, softcap)?;
        super::add_assign(&loss, &mean, share)?;
        if let Some(dhidden) = &dhidden {
            // The chunk's mean carries `share` of the total.
            let dlogits = saved.backward(&Tensor::from_f32(&gpu, &[share], &[1])?)?;
            drop(saved);
            let dh = head.backward_raw(&dlogits)?;
            let row_bytes = 4 * dim as u64;
            gpu.copy(
                dh.buf(),
                0,
                dhidden.buf(),
                start as u64 * row_bytes,
                len as u64 * row_bytes,
            );
        }
    }
    let Some(dhidden) = dhidden else {
        return Ok(loss);
    };
    Ok(record(
        loss,
        "lm_head_cross_entropy",
        &[hidden],
        move |g, _| {
            // dhidden · g, with g the one-element incoming gradient.
            let scaled = binary(&dhidden, g, BinaryOp::Mul, Broadcast::PerRow)?;
            Ok(vec![Some(scaled)])
        },
    ))
}

/// Rows start..start + len of a 2-D f32 tensor, copied (not recorded).
fn copy_rows(x: &Tensor, start: usize, len: usize) -> Result<Tensor> {
    let dim = x.last_dim();
    let row_bytes = 4 * dim as u64;
    let c = Tensor::empty(x.gpu(), &[len, dim], DType::F32)?;
    x.gpu().copy(
        x.buf(),
        start as u64 * row_bytes,
        c.buf(),
        0,
        len as u64 * row_bytes,
    );
    Ok(c)
}

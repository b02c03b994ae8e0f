//! Mean cross-entropy with an ignore index, and its fused backward.

use super::{groups, groups_for_elements, launch, rows_cols};
use crate::autograd::record;
use crate::error::{shape_err, Result};
use crate::shaders::Kernel;
use crate::tensor::{DType, Tensor};

/// Targets equal to this (PyTorch's default) are left out of the loss.
pub const IGNORE_INDEX: i32 = -100;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    classes: u32,
    ignore_index: i32,
    _pad: u32,
}

/// Mean over counted rows of `-log softmax(logits)[target]`.
/// `logits` is [..., classes] f32, `targets` i32 with one entry per row;
/// rows with target `ignore_index` (or any negative target) are skipped.
/// Returns a [1] tensor (0 when no row counts).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor, ignore_index: i32) -> Result<Tensor> {
    logits.expect_f32("cross_entropy", "logits")?;
    let (rows, classes) = rows_cols(logits);
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
    let gpu = logits.gpu();
    let params = Params {
        rows: rows as u32,
        classes: classes as u32,
        ignore_index,
        _pad: 0,
    };
    let row_loss = Tensor::empty(gpu, &[rows.max(1)], DType::F32)?;
    let lse = Tensor::empty(gpu, &[rows.max(1)], DType::F32)?;
    // stats = [mean loss, counted rows]; the loss is a [1] view of its first element.
    let stats = Tensor::empty(gpu, &[2], DType::F32)?;
    launch(
        Kernel::CrossEntropyRows,
        &params,
        &[logits, targets, &row_loss, &lse],
        groups(rows),
    )?;
    launch(
        Kernel::CrossEntropyMean,
        &params,
        &[targets, &row_loss, &stats],
        [1, 1, 1],
    )?;
    let loss = Tensor::from_parts(gpu, stats.0.buffer.clone(), &[1], DType::F32, None);
    let (saved_logits, saved_targets) = (logits.clone(), targets.clone());
    Ok(record(loss, "cross_entropy", &[logits], move |g, _| {
        let dlogits = Tensor::empty(g.gpu(), saved_logits.shape(), DType::F32)?;
        launch(
            Kernel::CrossEntropyBackward,
            &params,
            &[&saved_logits, &saved_targets, &lse, &stats, g, &dlogits],
            groups_for_elements(rows * classes),
        )?;
        Ok(vec![Some(dlogits)])
    }))
}

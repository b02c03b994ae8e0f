//! Cross-entropy over rows of logits (loss.wgsl): per-row loss and
//! log-sum-exp, their mean over counted rows, and the logits' gradient.

use super::params::{kernel_params, Params};
use super::{groups, groups_for_elements, launch, rows_cols};
use super::{Access, Family, Kernel, ParamsLayout};
use crate::dtype::DType;
use crate::error::Result;
use crate::tensor::Tensor;
use Access::{Read, ReadWrite};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    CrossEntropyRows,
    CrossEntropyMean,
    CrossEntropyBackward,
}

kernel_params! {
    pub(crate) struct LossParams {
        rows: u32,
        classes: u32,
        ignore_index: i32,
        /// Logits read as `softcap·tanh(x / softcap)`; 0 for none.
        softcap: f32,
    }
}

impl Family for Loss {
    fn entry(&self) -> &'static str {
        match self {
            Loss::CrossEntropyRows => "ce_rows",
            Loss::CrossEntropyMean => "ce_mean",
            Loss::CrossEntropyBackward => "ce_backward",
        }
    }
    fn bindings(&self) -> &'static [(u32, Access)] {
        match self {
            Loss::CrossEntropyRows => &[(1, Read), (2, Read), (3, ReadWrite), (4, ReadWrite)],
            Loss::CrossEntropyMean => &[(2, Read), (3, ReadWrite), (5, ReadWrite)],
            Loss::CrossEntropyBackward => &[
                (1, Read),
                (2, Read),
                (4, ReadWrite),
                (5, ReadWrite),
                (6, Read),
                (7, ReadWrite),
            ],
        }
    }
    fn params(&self) -> ParamsLayout {
        LossParams::layout()
    }
    fn body(&self) -> &'static str {
        include_str!("loss.wgsl")
    }
    fn reduces_rows(&self) -> bool {
        matches!(self, Loss::CrossEntropyRows | Loss::CrossEntropyMean)
    }
}

pub(super) fn variants() -> Vec<Kernel> {
    [
        Loss::CrossEntropyRows,
        Loss::CrossEntropyMean,
        Loss::CrossEntropyBackward,
    ]
    .map(Kernel::from)
    .to_vec()
}

/// What the cross-entropy backward needs from its forward.
pub(crate) struct CrossEntropy {
    logits: Tensor,
    targets: Tensor,
    lse: Tensor,
    /// [mean loss, counted rows]
    stats: Tensor,
    params: LossParams,
}

impl CrossEntropy {
    /// The mean loss over counted rows as a [1] view, and what backward
    /// needs. `logits` [rows, classes] f32, `targets` i32, one per row.
    pub(crate) fn forward(
        logits: &Tensor,
        targets: &Tensor,
        ignore_index: i32,
        softcap: Option<f32>,
    ) -> Result<(Tensor, CrossEntropy)> {
        let (rows, classes) = rows_cols(logits);
        let gpu = logits.gpu();
        let params = LossParams {
            rows: rows as u32,
            classes: classes as u32,
            ignore_index,
            softcap: softcap.unwrap_or(0.0),
        };
        let row_loss = Tensor::empty(gpu, &[rows.max(1)], DType::F32)?;
        let lse = Tensor::empty(gpu, &[rows.max(1)], DType::F32)?;
        let stats = Tensor::empty(gpu, &[2], DType::F32)?;
        launch(
            Loss::CrossEntropyRows,
            &params,
            &[logits, targets, &row_loss, &lse],
            groups(rows),
        )?;
        launch(
            Loss::CrossEntropyMean,
            &params,
            &[targets, &row_loss, &stats],
            [1, 1, 1],
        )?;
        let loss = stats.prefix_view(&[1]);
        let saved = CrossEntropy {
            logits: logits.clone(),
            targets: targets.clone(),
            lse,
            stats,
            params,
        };
        Ok((loss, saved))
    }

    /// dlogits = g · (softmax − onehot) / count for counted rows, 0 elsewhere.
    pub(crate) fn backward(&self, g: &Tensor) -> Result<Tensor> {
        let dlogits = Tensor::empty(g.gpu(), self.logits.shape(), DType::F32)?;
        let n = (self.params.rows * self.params.classes) as usize;
        launch(
            Loss::CrossEntropyBackward,
            &self.params,
            &[
                &self.logits,
                &self.targets,
                &self.lse,
                &self.stats,
                g,
                &dlogits,
            ],
            groups_for_elements(n),
        )?;
        Ok(dlogits)
    }
}

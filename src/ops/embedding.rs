//! The vocabulary-sized matrices: the token embedding table and the LM head,
//! [vocab, hidden], frozen (adapters sit on the linear projections). A
//! [`VocabMatrix`] holds one as blocks of whole rows, so that a table larger
//! than the device binds at once (Gemma 3's 262k × 640 in bf16 is 335 MB;
//! lavapipe and many GL drivers bind 128 MiB) still loads.

use crate::error::{shape_err, Result};
use crate::gpu::Gpu;
use crate::kernels::columns::{copy_cols as copy_cols_raw, ColumnParams};
use crate::kernels::embedding::embed_block;
use crate::tensor::{DType, Tensor};

fn check_ids(ids: &Tensor) -> Result<()> {
    if ids.dtype() != DType::I32 {
        shape_err!("embedding: ids must be i32, got {}", ids.dtype().name());
    }
    Ok(())
}

/// Rows of `table` [vocab, dim] (any float dtype) for each id in `ids` (i32,
/// any shape): returns [..ids.shape, dim] in f32.
pub fn embedding(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let &[vocab, dim] = table.shape() else {
        shape_err!(
            "embedding: table must be [vocab, dim], got {:?}",
            table.shape()
        );
    };
    check_ids(ids)?;
    if table.requires_grad() {
        shape_err!("embedding: trainable embedding tables are not supported");
    }
    let shape: Vec<usize> = [ids.shape(), &[dim]].concat();
    let out = Tensor::empty(table.gpu(), &shape, DType::F32)?;
    embed_block(table, 0, vocab, ids, &out)?;
    Ok(out)
}

/// A frozen [rows, cols] matrix held as blocks of whole rows, each at most
/// half the device's per-binding limit (the pool may round a buffer up).
#[derive(Clone, Debug)]
pub struct VocabMatrix {
    /// Each block with the index of its first row.
    blocks: Vec<(usize, Tensor)>,
    rows: usize,
    cols: usize,
}

impl From<Tensor> for VocabMatrix {
    /// One block: the whole matrix.
    fn from(t: Tensor) -> VocabMatrix {
        let (rows, cols) = (t.shape()[0], t.shape().get(1).copied().unwrap_or(1));
        VocabMatrix {
            blocks: vec![(0, t)],
            rows,
            cols,
        }
    }
}

impl VocabMatrix {
    /// Uploads a [rows, cols] matrix from its little-endian bytes, split into
    /// as few row blocks as the device's binding limit allows.
    pub fn upload(gpu: &Gpu, bytes: &[u8], shape: &[usize], dtype: DType) -> Result<VocabMatrix> {
        let &[rows, cols] = shape else {
            shape_err!("a vocabulary matrix must be [rows, cols], got {shape:?}");
        };
        let row_bytes = dtype.file_bytes(cols);
        if bytes.len() != rows * row_bytes {
            shape_err!(
                "{} bytes do not hold a {} matrix of shape {shape:?}",
                bytes.len(),
                dtype.name()
            );
        }
        let limits = gpu.limits();
        let limit = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size) as usize;
        // An even row count keeps 16-bit blocks in whole 32-bit words.
        let per_block = (limit / 2 / row_bytes.max(1)) & !1;
        if per_block == 0 {
            shape_err!(
                "a row of {row_bytes} bytes exceeds half of {}'s {limit}-byte binding limit",
                gpu.adapter_name()
            );
        }
        let blocks = (0..rows)
            .step_by(per_block)
            .map(|first| {
                let n = per_block.min(rows - first);
                let chunk = &bytes[first * row_bytes..(first + n) * row_bytes];
                Ok((first, Tensor::from_le_bytes(gpu, chunk, &[n, cols], dtype)?))
            })
            .collect::<Result<_>>()?;
        Ok(VocabMatrix { blocks, rows, cols })
    }

    /// A matrix from row blocks given in order (all [_, cols], one dtype).
    pub fn from_blocks(blocks: Vec<Tensor>) -> Result<VocabMatrix> {
        let Some(first) = blocks.first() else {
            shape_err!("a vocabulary matrix needs at least one block");
        };
        let (cols, dtype) = (first.last_dim(), first.dtype());
        let mut rows = 0;
        let mut placed = Vec::with_capacity(blocks.len());
        for b in blocks {
            if b.shape().len() != 2 || b.last_dim() != cols || b.dtype() != dtype {
                shape_err!(
                    "vocabulary blocks must all be [rows, {cols}] {}, got {:?} {}",
                    dtype.name(),
                    b.shape(),
                    b.dtype().name()
                );
            }
            let n = b.shape()[0];
            placed.push((rows, b));
            rows += n;
        }
        Ok(VocabMatrix {
            blocks: placed,
            rows,
            cols,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    pub fn dtype(&self) -> DType {
        self.blocks[0].1.dtype()
    }

    pub fn gpu(&self) -> &Gpu {
        self.blocks[0].1.gpu()
    }

    /// The blocks with the index of each one's first row.
    pub fn blocks(&self) -> &[(usize, Tensor)] {
        &self.blocks
    }

    /// Embedding lookup: row `id` for each id of `ids` (i32), [..ids.shape, cols] in f32.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        check_ids(ids)?;
        let shape: Vec<usize> = [ids.shape(), &[self.cols]].concat();
        let out = Tensor::empty(self.gpu(), &shape, DType::F32)?;
        for (first, block) in &self.blocks {
            embed_block(block, *first, self.rows, ids, &out)?;
        }
        Ok(out)
    }

    /// hidden [.., cols] · selfᵀ: [.., rows]. Recorded for one block; the
    /// product over several blocks (inference only) is not differentiable.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        if let [(_, only)] = &self.blocks[..] {
            return super::matmul_ex(hidden, only, super::Transpose::NT);
        }
        if crate::autograd::is_grad_enabled() && hidden.requires_grad() {
            shape_err!(
                "logits over a vocabulary held in {} blocks are not differentiable; train through lm_head_cross_entropy",
                self.blocks.len()
            );
        }
        let lead = &hidden.shape()[..hidden.shape().len().saturating_sub(1)];
        let n = crate::tensor::numel(lead);
        let flat = super::reshape(hidden, &[n, self.cols])?;
        let out = self.logits_raw(&flat)?;
        super::reshape(&out, &[lead, &[self.rows]].concat())
    }

    /// [n, cols] → [n, rows], unrecorded: each block's product placed in its columns.
    pub(crate) fn logits_raw(&self, hidden: &Tensor) -> Result<Tensor> {
        use crate::kernels::matmul::{matmul_raw, Transpose};
        if let [(_, only)] = &self.blocks[..] {
            return matmul_raw(hidden, only, Transpose::NT, 1.0, 0.0, None);
        }
        let n = hidden.shape()[0];
        let out = Tensor::empty(hidden.gpu(), &[n, self.rows], DType::F32)?;
        for (first, block) in &self.blocks {
            let part = matmul_raw(hidden, block, Transpose::NT, 1.0, 0.0, None)?;
            let len = block.shape()[0];
            copy_cols_raw(
                &part,
                &out,
                ColumnParams {
                    rows: n as u32,
                    len: len as u32,
                    src_cols: len as u32,
                    src_start: 0,
                    dst_cols: self.rows as u32,
                    dst_start: *first as u32,
                },
            )?;
        }
        Ok(out)
    }

    /// g [n, rows] · self: [n, cols], unrecorded (the backward of `logits_raw`).
    pub(crate) fn backward_raw(&self, g: &Tensor) -> Result<Tensor> {
        use crate::kernels::matmul::{matmul_raw, Transpose};
        if let [(_, only)] = &self.blocks[..] {
            return matmul_raw(g, only, Transpose::NN, 1.0, 0.0, None);
        }
        let n = g.shape()[0];
        let mut sum: Option<Tensor> = None;
        for (first, block) in &self.blocks {
            let len = block.shape()[0];
            let part = Tensor::empty(g.gpu(), &[n, len], DType::F32)?;
            copy_cols_raw(
                g,
                &part,
                ColumnParams {
                    rows: n as u32,
                    len: len as u32,
                    src_cols: self.rows as u32,
                    src_start: *first as u32,
                    dst_cols: len as u32,
                    dst_start: 0,
                },
            )?;
            let dh = matmul_raw(&part, block, Transpose::NN, 1.0, 0.0, None)?;
            match &sum {
                None => sum = Some(dh),
                Some(s) => super::add_assign(s, &dh, 1.0)?,
            }
        }
        Ok(sum.expect("a matrix has at least one block"))
    }
}

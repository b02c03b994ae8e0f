//! A GPU tensor: a pooled buffer, a shape and a dtype, plus (when it takes
//! part in training) its autograd node. Row-major, always contiguous.

use std::sync::{Arc, Mutex};

use half::{bf16, f16};

pub use crate::dtype::{DType, Quant};
use crate::error::{arg_err, shape_err, Error, Result};
use crate::gpu::{Gpu, GpuBuffer};

/// The backward rule of one recorded op: given dL/d(output) and which inputs
/// need a gradient, returns dL/d(input) for each input (None where not needed).
pub(crate) type BackwardFn =
    Box<dyn FnOnce(&Tensor, &[bool]) -> Result<Vec<Option<Tensor>>> + Send>;

pub(crate) struct GradFn {
    pub name: &'static str,
    pub inputs: Vec<Tensor>,
    pub backward: BackwardFn,
}

/// What a tensor that takes part in training carries; `autograd` builds and
/// walks these.
pub(crate) enum Node {
    /// A trainable leaf and its accumulated gradient.
    Param { grad: Mutex<Option<Tensor>> },
    /// The result of a recorded op; `None` once backward has used it.
    Op { grad_fn: Mutex<Option<GradFn>> },
}

/// A tensor on the GPU. Cloning is cheap and shares the buffer.
#[derive(Clone)]
pub struct Tensor(pub(crate) Arc<TensorInner>);

pub(crate) struct TensorInner {
    pub gpu: Gpu,
    pub buffer: Arc<GpuBuffer>,
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub node: Option<Node>,
}

pub(crate) fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    pub(crate) fn from_parts(
        gpu: &Gpu,
        buffer: Arc<GpuBuffer>,
        shape: &[usize],
        dtype: DType,
        node: Option<Node>,
    ) -> Tensor {
        Tensor(Arc::new(TensorInner {
            gpu: gpu.clone(),
            buffer,
            shape: shape.to_vec(),
            dtype,
            node,
        }))
    }

    /// An uninitialised tensor for a kernel to write into.
    pub(crate) fn empty(gpu: &Gpu, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let buf = gpu.alloc(dtype.storage_bytes(numel(shape)), false)?;
        Ok(Tensor::from_parts(gpu, Arc::new(buf), shape, dtype, None))
    }

    fn upload(gpu: &Gpu, bytes: &[u8], n: usize, shape: &[usize], dtype: DType) -> Result<Tensor> {
        if numel(shape) != n {
            shape_err!(
                "{n} values do not fill a tensor of shape {shape:?} ({} elements)",
                numel(shape)
            );
        }
        let buf = gpu.upload(bytes)?;
        Ok(Tensor::from_parts(gpu, Arc::new(buf), shape, dtype, None))
    }

    /// Uploads little-endian values of `dtype` as stored in a file (16-bit
    /// types stay packed two per word, blocks stay blocks).
    pub fn from_le_bytes(gpu: &Gpu, bytes: &[u8], shape: &[usize], dtype: DType) -> Result<Tensor> {
        if let DType::Quant(_) = dtype {
            let cols = shape.last().copied().unwrap_or(1);
            if !cols.is_multiple_of(dtype.block_values())
                || bytes.len() != dtype.file_bytes(numel(shape))
            {
                shape_err!(
                    "{} bytes are not a {} tensor of shape {shape:?} (rows of whole {}-value blocks)",
                    bytes.len(),
                    dtype.name(),
                    dtype.block_values()
                );
            }
            let buf = gpu.upload(bytes)?;
            return Ok(Tensor::from_parts(gpu, Arc::new(buf), shape, dtype, None));
        }
        let size = dtype.file_bytes(1);
        if !bytes.len().is_multiple_of(size) {
            shape_err!(
                "{} bytes are not whole {} values",
                bytes.len(),
                dtype.name()
            );
        }
        Tensor::upload(gpu, bytes, bytes.len() / size, shape, dtype)
    }

    /// Uploads f32 values.
    pub fn from_f32(gpu: &Gpu, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        Tensor::upload(
            gpu,
            bytemuck::cast_slice(data),
            data.len(),
            shape,
            DType::F32,
        )
    }

    /// Uploads bf16 values (kept packed two per word on the GPU).
    pub fn from_bf16(gpu: &Gpu, data: &[bf16], shape: &[usize]) -> Result<Tensor> {
        Tensor::upload(
            gpu,
            bytemuck::cast_slice(data),
            data.len(),
            shape,
            DType::BF16,
        )
    }

    /// Uploads f16 values (kept packed two per word on the GPU).
    pub fn from_f16(gpu: &Gpu, data: &[f16], shape: &[usize]) -> Result<Tensor> {
        Tensor::upload(
            gpu,
            bytemuck::cast_slice(data),
            data.len(),
            shape,
            DType::F16,
        )
    }

    /// Uploads f32 values converted to `dtype` (round to nearest even).
    pub fn from_f32_as(gpu: &Gpu, data: &[f32], shape: &[usize], dtype: DType) -> Result<Tensor> {
        match dtype {
            DType::F32 => Tensor::from_f32(gpu, data, shape),
            DType::BF16 => {
                let v: Vec<bf16> = data.iter().map(|&x| bf16::from_f32(x)).collect();
                Tensor::from_bf16(gpu, &v, shape)
            }
            DType::F16 => {
                let v: Vec<f16> = data.iter().map(|&x| f16::from_f32(x)).collect();
                Tensor::from_f16(gpu, &v, shape)
            }
            DType::I32 | DType::Quant(_) => {
                arg_err!("from_f32_as: cannot store floats as {}", dtype.name())
            }
        }
    }

    /// Uploads i32 values (token ids, targets).
    pub fn from_i32(gpu: &Gpu, data: &[i32], shape: &[usize]) -> Result<Tensor> {
        Tensor::upload(
            gpu,
            bytemuck::cast_slice(data),
            data.len(),
            shape,
            DType::I32,
        )
    }

    /// A tensor of zeros, cleared on the GPU.
    pub fn zeros(gpu: &Gpu, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let buf = gpu.zeros_buffer(dtype.storage_bytes(numel(shape)))?;
        Ok(Tensor::from_parts(gpu, Arc::new(buf), shape, dtype, None))
    }

    /// A trainable f32 leaf: backward accumulates its gradient.
    pub fn param(gpu: &Gpu, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        Tensor::from_f32(gpu, data, shape)?.into_param()
    }

    /// Turns a freshly made f32 tensor into a trainable leaf (shares its buffer).
    pub fn into_param(self) -> Result<Tensor> {
        if self.dtype() != DType::F32 {
            arg_err!(
                "only f32 tensors can be trained, not {}",
                self.dtype().name()
            );
        }
        Ok(Tensor::from_parts(
            self.gpu(),
            self.0.buffer.clone(),
            self.shape(),
            DType::F32,
            Some(Node::Param {
                grad: Mutex::new(None),
            }),
        ))
    }

    pub fn shape(&self) -> &[usize] {
        &self.0.shape
    }

    pub fn dtype(&self) -> DType {
        self.0.dtype
    }

    pub fn numel(&self) -> usize {
        numel(&self.0.shape)
    }

    pub fn gpu(&self) -> &Gpu {
        &self.0.gpu
    }

    pub(crate) fn buf(&self) -> &GpuBuffer {
        &self.0.buffer
    }

    /// Size of the last dimension (1 for a scalar).
    pub fn last_dim(&self) -> usize {
        self.0.shape.last().copied().unwrap_or(1)
    }

    /// A stable identity while the tensor is alive (used by the autograd walk).
    pub(crate) fn id(&self) -> usize {
        Arc::as_ptr(&self.0) as usize
    }

    /// True for trainable leaves and for results computed from them.
    pub fn requires_grad(&self) -> bool {
        self.0.node.is_some()
    }

    pub fn is_param(&self) -> bool {
        matches!(self.0.node, Some(Node::Param { .. }))
    }

    pub(crate) fn grad_fn(&self) -> Option<&Mutex<Option<GradFn>>> {
        match &self.0.node {
            Some(Node::Op { grad_fn }) => Some(grad_fn),
            _ => None,
        }
    }

    /// The accumulated gradient of a trainable leaf (None before any backward).
    pub fn grad(&self) -> Option<Tensor> {
        match &self.0.node {
            Some(Node::Param { grad }) => grad.lock().unwrap().clone(),
            _ => None,
        }
    }

    /// Drops the accumulated gradient of a trainable leaf.
    pub fn zero_grad(&self) {
        if let Some(Node::Param { grad }) = &self.0.node {
            *grad.lock().unwrap() = None;
        }
    }

    pub(crate) fn param_grad_slot(&self) -> Option<&Mutex<Option<Tensor>>> {
        match &self.0.node {
            Some(Node::Param { grad }) => Some(grad),
            _ => None,
        }
    }

    /// The same values cut from the graph: no gradient flows through it.
    pub fn detach(&self) -> Tensor {
        Tensor::from_parts(
            self.gpu(),
            self.0.buffer.clone(),
            self.shape(),
            self.dtype(),
            None,
        )
    }

    /// The same elements seen with another shape of equal size, unrecorded
    /// (the kernels' reshape; `ops::reshape` is the recorded one).
    pub(crate) fn view(&self, shape: &[usize]) -> Tensor {
        debug_assert_eq!(numel(shape), self.numel());
        self.prefix_view(shape)
    }

    /// The first elements of this tensor's buffer seen with a smaller shape:
    /// no copy and no gradient (a KV cache's filled rows).
    pub(crate) fn prefix_view(&self, shape: &[usize]) -> Tensor {
        debug_assert!(numel(shape) <= self.numel());
        Tensor::from_parts(self.gpu(), self.0.buffer.clone(), shape, self.dtype(), None)
    }

    /// True when another handle (a clone, or a view of the same buffer) can see this data.
    pub(crate) fn shares_buffer(&self) -> bool {
        Arc::strong_count(&self.0) > 1 || Arc::strong_count(&self.0.buffer) > 1
    }

    /// Downloads the values of a tensor that is not block-quantized as f32
    /// (16-bit types widened on the host); `to_vec_f32`, in
    /// `kernels::elementwise`, decodes blocks first.
    pub(crate) fn download_f32(&self) -> Result<Vec<f32>> {
        let n = self.numel();
        let bytes = self
            .gpu()
            .read(self.buf(), self.dtype().storage_bytes(n).max(4))?;
        Ok(match self.dtype() {
            DType::F32 => bytemuck::pod_collect_to_vec::<u8, f32>(&bytes)[..n].to_vec(),
            DType::BF16 => bytemuck::pod_collect_to_vec::<u8, bf16>(&bytes)[..n]
                .iter()
                .map(|x| x.to_f32())
                .collect(),
            DType::F16 => bytemuck::pod_collect_to_vec::<u8, f16>(&bytes)[..n]
                .iter()
                .map(|x| x.to_f32())
                .collect(),
            DType::I32 => bytemuck::pod_collect_to_vec::<u8, i32>(&bytes)[..n]
                .iter()
                .map(|&x| x as f32)
                .collect(),
            DType::Quant(_) => unreachable!("blocks are decoded by to_vec_f32"),
        })
    }

    /// Downloads i32 values.
    pub fn to_vec_i32(&self) -> Result<Vec<i32>> {
        if self.dtype() != DType::I32 {
            arg_err!("to_vec_i32 on a {} tensor", self.dtype().name());
        }
        let bytes = self
            .gpu()
            .read(self.buf(), 4 * self.numel().max(1) as u64)?;
        Ok(bytemuck::pod_collect_to_vec::<u8, i32>(&bytes)[..self.numel()].to_vec())
    }

    /// The single value of a one-element tensor.
    pub fn item(&self) -> Result<f32> {
        if self.numel() != 1 {
            shape_err!(
                "item() needs one element, tensor has shape {:?}",
                self.shape()
            );
        }
        Ok(self.to_vec_f32()?[0])
    }

    /// Fails unless the tensor is f32 (what every trained path needs).
    pub(crate) fn expect_f32(&self, op: &str, what: &str) -> Result<()> {
        if self.dtype() != DType::F32 {
            return Err(Error::InvalidArgument(format!(
                "{op}: {what} must be f32, got {}",
                self.dtype().name()
            )));
        }
        Ok(())
    }

    /// Fails unless both tensors live on the same GPU context.
    pub(crate) fn expect_same_gpu(&self, other: &Tensor, op: &str) -> Result<()> {
        if !Arc::ptr_eq(&self.gpu().inner, &other.gpu().inner) {
            arg_err!("{op}: tensors belong to different GPU contexts");
        }
        Ok(())
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor({:?}, {}{})",
            self.shape(),
            self.dtype().name(),
            if self.requires_grad() { ", grad" } else { "" }
        )
    }
}

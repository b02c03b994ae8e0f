//! A GPU tensor: a pooled buffer, a shape and a dtype, plus (when it takes
//! part in training) its autograd node. Row-major, always contiguous.

use std::sync::{Arc, Mutex};

use half::{bf16, f16};

use crate::autograd::{GradFn, Node};
use crate::error::{arg_err, shape_err, Error, Result};
use crate::gpu::{Gpu, GpuBuffer};

/// Element types. Everything trained is f32; frozen weights may be stored as
/// bf16 or f16, packed two per `u32`, or as llama.cpp's quantized blocks,
/// and are decoded inside the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    BF16,
    F16,
    I32,
    Quant(Quant),
}

/// llama.cpp's block formats (ggml's `block_q4_0` ...), held on the GPU
/// exactly as a GGUF file stores them. A block never spans two rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum Quant {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
}

impl Quant {
    pub const ALL: [Quant; 10] = [
        Quant::Q4_0,
        Quant::Q4_1,
        Quant::Q5_0,
        Quant::Q5_1,
        Quant::Q8_0,
        Quant::Q2_K,
        Quant::Q3_K,
        Quant::Q4_K,
        Quant::Q5_K,
        Quant::Q6_K,
    ];

    /// (values per block, bytes per block), as ggml defines them.
    pub fn block(self) -> (usize, usize) {
        match self {
            Quant::Q4_0 => (32, 18),
            Quant::Q4_1 => (32, 20),
            Quant::Q5_0 => (32, 22),
            Quant::Q5_1 => (32, 24),
            Quant::Q8_0 => (32, 34),
            Quant::Q2_K => (256, 84),
            Quant::Q3_K => (256, 110),
            Quant::Q4_K => (256, 144),
            Quant::Q5_K => (256, 176),
            Quant::Q6_K => (256, 210),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Quant::Q4_0 => "q4_0",
            Quant::Q4_1 => "q4_1",
            Quant::Q5_0 => "q5_0",
            Quant::Q5_1 => "q5_1",
            Quant::Q8_0 => "q8_0",
            Quant::Q2_K => "q2_k",
            Quant::Q3_K => "q3_k",
            Quant::Q4_K => "q4_k",
            Quant::Q5_K => "q5_k",
            Quant::Q6_K => "q6_k",
        }
    }
}

impl DType {
    /// Bytes of `n` elements as stored on the GPU (16-bit types and blocks
    /// round up to whole words).
    pub fn storage_bytes(self, n: usize) -> u64 {
        (self.file_bytes(n) as u64).next_multiple_of(4)
    }

    /// Bytes of `n` elements as stored in a file (blocks: `n` rounded up to
    /// whole blocks).
    pub fn file_bytes(self, n: usize) -> usize {
        match self {
            DType::F32 | DType::I32 => 4 * n,
            DType::BF16 | DType::F16 => 2 * n,
            DType::Quant(q) => {
                let (values, bytes) = q.block();
                n.div_ceil(values) * bytes
            }
        }
    }

    /// The dtype a weight derived from one of this dtype is held in (a
    /// merged weight): itself, or f32 for blocks, which are only ever read.
    pub fn dense(self) -> DType {
        match self {
            DType::Quant(_) => DType::F32,
            other => other,
        }
    }

    /// Elements per storage unit: 1, or a block's values.
    pub fn block_values(self) -> usize {
        match self {
            DType::Quant(q) => q.block().0,
            _ => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::I32 => "i32",
            DType::Quant(q) => q.name(),
        }
    }

    /// True for the types a weight operand of a kernel may have.
    pub fn is_float(self) -> bool {
        !matches!(self, DType::I32)
    }
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

    /// Downloads the values as f32 (16-bit types are widened on the host,
    /// blocks decoded on the GPU by the kernels' own decoder).
    pub fn to_vec_f32(&self) -> Result<Vec<f32>> {
        if let DType::Quant(_) = self.dtype() {
            let _g = crate::autograd::no_grad();
            return crate::ops::to_f32(self)?.to_vec_f32();
        }
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
            DType::Quant(_) => unreachable!("decoded above"),
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

//! wgpu plumbing only: the context, buffer pool, pipeline cache, command
//! batching and readback. Nothing here knows about tensors' meaning.

mod batch;
mod context;
pub(crate) mod cooperative;
pub(crate) mod matmul_tiles;
mod pipeline;
mod pool;

pub(crate) use context::BROADCAST_LANES;
#[cfg(test)]
pub(crate) use context::MAX_STORAGE_BINDINGS;
pub use context::{
    describe_adapters, list_adapters, AdapterReport, AttentionKernels, Gpu, GpuOptions, KernelTime,
    MatmulKernels,
};
pub use matmul_tiles::{MatmulAutotune, MatmulTile, MatmulTileCache};
pub use pipeline::Access;
pub(crate) use pipeline::Program;
pub use pool::{MemoryStats, PoolLimits};

use crate::error::{Error, Result};
use batch::PARAM_BYTES;

/// Largest workgroup count per dispatch dimension that every backend accepts.
pub(crate) const MAX_GROUPS_PER_DIM: u32 = 65_535;

/// A storage buffer owned by one tensor; it goes back to the pool on drop.
pub(crate) struct GpuBuffer {
    buffer: Option<wgpu::Buffer>,
    gpu: Gpu,
}

impl GpuBuffer {
    pub fn raw(&self) -> &wgpu::Buffer {
        self.buffer.as_ref().expect("buffer present until drop")
    }
}

impl Drop for GpuBuffer {
    fn drop(&mut self) {
        if let Some(b) = self.buffer.take() {
            if let Ok(mut pool) = self.gpu.inner.pool.lock() {
                pool.give_back(b);
            }
        }
    }
}

/// Splits a 1-D count of workgroups into a 2-D grid within the per-dimension limit.
/// Kernels rebuild the linear id as `wid.x + wid.y * nwg.x`.
pub(crate) fn grid(workgroups: u32) -> [u32; 3] {
    if workgroups <= MAX_GROUPS_PER_DIM {
        [workgroups.max(1), 1, 1]
    } else {
        [
            MAX_GROUPS_PER_DIM,
            workgroups.div_ceil(MAX_GROUPS_PER_DIM),
            1,
        ]
    }
}

impl Gpu {
    /// A storage buffer of at least `bytes` bytes, from the pool when possible.
    /// `host_write`: the caller will fill it with `queue.write_buffer`.
    pub(crate) fn alloc(&self, bytes: u64, host_write: bool) -> Result<GpuBuffer> {
        let class = pool::size_class(bytes);
        if bytes > self.inner.limits.max_buffer_size
            || bytes > self.inner.limits.max_storage_buffer_binding_size
        {
            return Err(Error::Device(format!(
                "a buffer of {bytes} bytes exceeds {}'s limit of {} bytes per storage binding",
                self.inner.info.name,
                self.inner
                    .limits
                    .max_storage_buffer_binding_size
                    .min(self.inner.limits.max_buffer_size)
            )));
        }
        let mut pool = self.inner.pool.lock().unwrap();
        let pooled = pool.take(class, host_write);
        let buffer = match pooled {
            Some(b) => b,
            None => {
                let class = class.min(self.inner.limits.max_buffer_size);
                pool.make_room(class).map_err(Error::Device)?;
                drop(pool);
                let b = self.inner.device.create_buffer(&wgpu::BufferDescriptor {
                    label: None,
                    size: class,
                    usage: wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::COPY_SRC
                        | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                self.inner.pool.lock().unwrap().created(b.size());
                b
            }
        };
        Ok(GpuBuffer {
            buffer: Some(buffer),
            gpu: self.clone(),
        })
    }

    /// A buffer holding `data` (padded with zeros to a multiple of 4 bytes).
    pub(crate) fn upload(&self, data: &[u8]) -> Result<GpuBuffer> {
        let buf = self.alloc(data.len() as u64, true)?;
        let whole = data.len() / 4 * 4;
        if whole > 0 {
            self.inner.queue.write_buffer(buf.raw(), 0, &data[..whole]);
        }
        if whole < data.len() {
            let mut tail = [0u8; 4];
            tail[..data.len() - whole].copy_from_slice(&data[whole..]);
            self.inner
                .queue
                .write_buffer(buf.raw(), whole as u64, &tail);
        }
        Ok(buf)
    }

    /// A buffer of `bytes` zero bytes, cleared on the GPU.
    pub(crate) fn zeros_buffer(&self, bytes: u64) -> Result<GpuBuffer> {
        let buf = self.alloc(bytes, false)?;
        let mut batch = self.inner.batch.lock().unwrap();
        batch.encoder(&self.inner.device).clear_buffer(
            buf.raw(),
            0,
            Some(bytes.next_multiple_of(4)),
        );
        Ok(buf)
    }

    /// Records a buffer-to-buffer copy into the batch (offsets and size in
    /// bytes, multiples of 4).
    pub(crate) fn copy(
        &self,
        src: &GpuBuffer,
        src_offset: u64,
        dst: &GpuBuffer,
        dst_offset: u64,
        bytes: u64,
    ) {
        let mut batch = self.inner.batch.lock().unwrap();
        batch.encoder(&self.inner.device).copy_buffer_to_buffer(
            src.raw(),
            src_offset,
            dst.raw(),
            dst_offset,
            bytes.next_multiple_of(4),
        );
    }

    /// Records one compute dispatch. `params` is the kernel's uniform struct;
    /// `buffers` bind at 1.. in the order of `kernel.bindings()`.
    pub(crate) fn dispatch(
        &self,
        kernel: &dyn Program,
        params: &[u8],
        buffers: &[&GpuBuffer],
        workgroups: [u32; 3],
    ) -> Result<()> {
        let profiling = self.is_profiling();
        let seconds = self.record_dispatch(kernel, params, buffers, workgroups, profiling)?;
        if let Some(seconds) = seconds {
            let key = if std::env::var_os("DORA_WGPU_PROFILE_GRID").is_some() {
                format!("{} {workgroups:?}", kernel.label())
            } else {
                kernel.label()
            };
            self.record_kernel_time(&key, seconds);
        }
        Ok(())
    }

    /// Runs one dispatch on its own and returns its time: GPU timestamps
    /// where the device has them, else the wall clock around its submission
    /// (the matmul tile tuning's measurement).
    pub(crate) fn time_dispatch(
        &self,
        kernel: &dyn Program,
        params: &[u8],
        buffers: &[&GpuBuffer],
        workgroups: [u32; 3],
    ) -> Result<f64> {
        Ok(self
            .record_dispatch(kernel, params, buffers, workgroups, true)?
            .unwrap_or(0.0))
    }

    /// Records one dispatch; `timed` submits it alone, waits for it and
    /// returns its time (None for an empty grid).
    fn record_dispatch(
        &self,
        kernel: &dyn Program,
        params: &[u8],
        buffers: &[&GpuBuffer],
        workgroups: [u32; 3],
        timed: bool,
    ) -> Result<Option<f64>> {
        debug_assert_eq!(buffers.len(), kernel.bindings().len(), "{}", kernel.label());
        if params.len() as u64 > PARAM_BYTES {
            return Err(Error::InvalidArgument(format!(
                "{}: parameter struct of {} bytes",
                kernel.label(),
                params.len()
            )));
        }
        if workgroups.iter().any(|&g| g > MAX_GROUPS_PER_DIM) {
            return Err(Error::InvalidArgument(format!(
                "{}: {workgroups:?} workgroups exceed {MAX_GROUPS_PER_DIM} per dimension",
                kernel.label()
            )));
        }
        let pipeline = self
            .inner
            .pipelines
            .get(&self.inner.device, kernel, self.inner.subgroups);
        if timed {
            self.synchronize()?; // only this dispatch is timed
        }
        let mut batch = self.inner.batch.lock().unwrap();
        if batch.is_full() {
            batch.submit(&self.inner.queue);
            self.inner.pool.lock().unwrap().batch_submitted();
        }
        let offset = batch.push_params(params);
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &batch.params_buffer,
                offset: 0,
                size: wgpu::BufferSize::new(PARAM_BYTES),
            }),
        }];
        // A pooled buffer may be rounded up past the binding limit; a tensor
        // never is (alloc refuses it), so binding up to the limit covers it.
        let most = self.inner.limits.max_storage_buffer_binding_size;
        for (&(binding, _), b) in kernel.bindings().iter().zip(buffers) {
            entries.push(wgpu::BindGroupEntry {
                binding,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: b.raw(),
                    offset: 0,
                    size: wgpu::BufferSize::new(b.raw().size().min(most)),
                }),
            });
        }
        let bind_group = self
            .inner
            .device
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &pipeline.layout,
                entries: &entries,
            });
        if workgroups.contains(&0) {
            return Ok(None); // empty tensor: nothing to run
        }
        let timer = self.inner.pass_timer.as_ref().filter(|_| timed);
        let encoder = batch.encoder(&self.inner.device);
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: None,
            timestamp_writes: timer.map(|t| wgpu::ComputePassTimestampWrites {
                query_set: &t.query_set,
                beginning_of_pass_write_index: Some(0),
                end_of_pass_write_index: Some(1),
            }),
        });
        pass.set_pipeline(&pipeline.pipeline);
        pass.set_bind_group(0, &bind_group, &[offset]);
        pass.dispatch_workgroups(workgroups[0], workgroups[1], workgroups[2]);
        if timed {
            drop(pass);
            if let Some(t) = timer {
                encoder.resolve_query_set(&t.query_set, 0..2, &t.resolved, 0);
                encoder.copy_buffer_to_buffer(&t.resolved, 0, &t.readback, 0, 16);
            }
            drop(batch);
            let seconds = match timer {
                Some(t) => {
                    self.flush();
                    let ticks = self.map_and_read(&t.readback, 16)?;
                    let at =
                        |i: usize| u64::from_le_bytes(ticks[8 * i..8 * i + 8].try_into().unwrap());
                    at(1).saturating_sub(at(0)) as f64 * t.period_ns * 1e-9
                }
                None => {
                    let started = std::time::Instant::now();
                    self.synchronize()?;
                    started.elapsed().as_secs_f64()
                }
            };
            return Ok(Some(seconds));
        }
        Ok(None)
    }

    /// Copies the first `bytes` bytes of a buffer to the host. Submits the batch
    /// and waits: the only place the host waits on the GPU.
    pub(crate) fn read(&self, src: &GpuBuffer, bytes: u64) -> Result<Vec<u8>> {
        let padded = bytes.next_multiple_of(4).max(4);
        let staging = self.inner.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: padded,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        {
            let mut batch = self.inner.batch.lock().unwrap();
            batch.encoder(&self.inner.device).copy_buffer_to_buffer(
                src.raw(),
                0,
                &staging,
                0,
                padded,
            );
        }
        self.flush();
        self.map_and_read(&staging, bytes)
    }

    /// Waits for the submitted work, then copies the first `bytes` bytes of a
    /// MAP_READ buffer to the host and unmaps it again.
    fn map_and_read(&self, staging: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        rx.recv()
            .map_err(|_| Error::Device("readback never completed".into()))?
            .map_err(|e| Error::Device(format!("readback failed: {e}")))?;
        let view = staging
            .get_mapped_range(..)
            .map_err(|e| Error::Device(format!("readback failed: {e:?}")))?;
        let out = view[..bytes as usize].to_vec();
        drop(view);
        staging.unmap();
        Ok(out)
    }
}

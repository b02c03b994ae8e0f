//! The command batch: many dispatches recorded into one encoder and submitted
//! together. Each dispatch's small parameter struct is staged on the host and
//! uploaded with one write per submit into a uniform buffer read at a dynamic
//! offset, so recording a dispatch never waits on the GPU.

/// Largest parameter struct a kernel may take.
pub(crate) const PARAM_BYTES: u64 = 256;
/// Dispatches per submit before the batch flushes by itself.
const PARAM_SLOTS: u64 = 1024;

pub(crate) struct Batch {
    encoder: Option<wgpu::CommandEncoder>,
    params: Vec<u8>,
    pub params_buffer: wgpu::Buffer,
    stride: u64,
    /// Submits so far (for tests and benchmarks of batching).
    pub submits: u64,
}

impl Batch {
    pub fn new(device: &wgpu::Device, offset_alignment: u32) -> Batch {
        let stride = PARAM_BYTES.next_multiple_of(offset_alignment as u64);
        let params_buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("kernel params"),
            size: stride * PARAM_SLOTS,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Batch {
            encoder: None,
            params: Vec::new(),
            params_buffer,
            stride,
            submits: 0,
        }
    }

    pub fn encoder(&mut self, device: &wgpu::Device) -> &mut wgpu::CommandEncoder {
        self.encoder.get_or_insert_with(|| {
            device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("dora-wgpu batch"),
            })
        })
    }

    pub fn is_full(&self) -> bool {
        self.params.len() as u64 >= self.stride * PARAM_SLOTS
    }

    /// Stages one parameter struct; returns its dynamic offset.
    pub fn push_params(&mut self, bytes: &[u8]) -> u32 {
        debug_assert!(bytes.len() as u64 <= PARAM_BYTES && !self.is_full());
        let offset = self.params.len();
        self.params.extend_from_slice(bytes);
        self.params.resize(offset + self.stride as usize, 0);
        offset as u32
    }

    /// Uploads the staged parameters and submits the encoder, if anything was recorded.
    pub fn submit(&mut self, queue: &wgpu::Queue) {
        let encoder = self.encoder.take();
        if !self.params.is_empty() {
            queue.write_buffer(&self.params_buffer, 0, &self.params);
            self.params.clear();
        }
        let encoder = match encoder {
            Some(e) => e,
            None => return,
        };
        queue.submit(Some(encoder.finish()));
        self.submits += 1;
    }
}

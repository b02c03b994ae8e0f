//! A pool of storage buffers bucketed by size class, and the memory statistics
//! it keeps. Creating buffers is slow on every backend; reusing them is free.
//!
//! A buffer freed while a batch is still being recorded may still be read by
//! that batch. `queue.write_buffer` runs at the start of the *next* submit, so
//! such a buffer must not take a host upload until the batch is submitted; it
//! may be reused at once as a kernel output, since GPU work runs in order.

use std::collections::HashMap;

/// Bytes of GPU buffers held by one context.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Bytes in buffers that tensors hold right now.
    pub live_bytes: u64,
    /// Highest `live_bytes` since creation or the last reset.
    pub peak_live_bytes: u64,
    /// Bytes in freed buffers kept for reuse.
    pub pooled_bytes: u64,
    /// `live_bytes + pooled_bytes`: what the device really holds.
    pub allocated_bytes: u64,
    /// Highest `allocated_bytes` since creation or the last reset.
    pub peak_allocated_bytes: u64,
}

#[derive(Default)]
pub(crate) struct BufferPool {
    /// Free buffers safe for any use, by size class.
    free: HashMap<u64, Vec<wgpu::Buffer>>,
    /// Freed during the batch being recorded: kernel outputs only until submit.
    recent: HashMap<u64, Vec<wgpu::Buffer>>,
    stats: MemoryStats,
}

/// Rounds a request up to its size class: at most 12.5% waste, 256-byte minimum.
pub(crate) fn size_class(bytes: u64) -> u64 {
    let bytes = bytes.max(256);
    let floor_pow2 = 1u64 << (63 - bytes.leading_zeros());
    let step = (floor_pow2 / 8).max(256);
    bytes.div_ceil(step) * step
}

impl BufferPool {
    /// A pooled buffer of exactly `class` bytes, or None if the caller must create one.
    /// `host_write` says whether the buffer will be filled by `queue.write_buffer`.
    pub fn take(&mut self, class: u64, host_write: bool) -> Option<wgpu::Buffer> {
        let mut found = self.free.get_mut(&class).and_then(Vec::pop);
        if found.is_none() && !host_write {
            found = self.recent.get_mut(&class).and_then(Vec::pop);
        }
        if found.is_some() {
            self.stats.pooled_bytes -= class;
            self.stats.live_bytes += class;
            self.update_peaks();
        }
        found
    }

    /// Records a buffer the caller has just created.
    pub fn created(&mut self, class: u64) {
        self.stats.live_bytes += class;
        self.update_peaks();
    }

    /// Takes a buffer back from a dropped tensor.
    pub fn give_back(&mut self, buffer: wgpu::Buffer) {
        let class = buffer.size();
        self.stats.live_bytes -= class;
        self.stats.pooled_bytes += class;
        self.recent.entry(class).or_default().push(buffer);
    }

    /// The batch has been submitted: everything freed so far may take uploads.
    pub fn batch_submitted(&mut self) {
        for (class, mut bufs) in self.recent.drain() {
            self.free.entry(class).or_default().append(&mut bufs);
        }
    }

    /// Destroys the free buffers that are safe to destroy.
    pub fn release_free(&mut self) {
        for (class, bufs) in self.free.drain() {
            self.stats.pooled_bytes -= class * bufs.len() as u64;
            for b in bufs {
                b.destroy();
            }
        }
        self.stats.allocated_bytes = self.stats.live_bytes + self.stats.pooled_bytes;
    }

    pub fn stats(&self) -> MemoryStats {
        MemoryStats {
            allocated_bytes: self.stats.live_bytes + self.stats.pooled_bytes,
            ..self.stats
        }
    }

    pub fn reset_peak(&mut self) {
        self.stats.peak_live_bytes = self.stats.live_bytes;
        self.stats.peak_allocated_bytes = self.stats.live_bytes + self.stats.pooled_bytes;
    }

    fn update_peaks(&mut self) {
        let s = &mut self.stats;
        s.peak_live_bytes = s.peak_live_bytes.max(s.live_bytes);
        s.peak_allocated_bytes = s.peak_allocated_bytes.max(s.live_bytes + s.pooled_bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_round_up_with_bounded_waste() {
        assert_eq!(size_class(1), 256);
        assert_eq!(size_class(256), 256);
        assert_eq!(size_class(257), 512);
        for bytes in [1000u64, 4097, 65_537, 1 << 20, 3_000_001, 123_456_789] {
            let c = size_class(bytes);
            assert!(
                c >= bytes && c as f64 <= bytes as f64 * 1.125 + 256.0,
                "{bytes} -> {c}"
            );
            assert_eq!(size_class(c), c, "a class maps to itself");
        }
    }
}

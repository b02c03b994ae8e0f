//! A pool of storage buffers bucketed by size class, and the memory statistics
//! it keeps. Creating buffers is slow on every backend; reusing them is free.
//!
//! A buffer freed while a batch is still being recorded may still be read by
//! that batch. `queue.write_buffer` runs at the start of the *next* submit, so
//! such a buffer must not take a host upload until the batch is submitted; it
//! may be reused at once as a kernel output, since GPU work runs in order.

use std::collections::BTreeMap;

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

/// How much the pool may hold beyond what tensors use.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PoolLimits {
    /// Idle buffers are kept while everything held stays within
    /// `(1 + idle_fraction) ×` the working set (the most bytes tensors have
    /// held at once in this and the previous peak window, e.g. training
    /// step); beyond that the least recently freed go first.
    pub idle_fraction: f64,
    /// A hard cap on all bytes held; a request beyond it is an error.
    pub max_bytes: Option<u64>,
}

impl Default for PoolLimits {
    fn default() -> Self {
        PoolLimits {
            idle_fraction: 0.25,
            max_bytes: None,
        }
    }
}

/// A freed buffer with the tick it was freed at (for least-recently-freed eviction).
struct Idle {
    buffer: wgpu::Buffer,
    freed_at: u64,
}

#[derive(Default)]
pub(crate) struct BufferPool {
    /// Free buffers safe for any use, by size class.
    free: BTreeMap<u64, Vec<Idle>>,
    /// Freed during the batch being recorded: kernel outputs only until submit.
    recent: BTreeMap<u64, Vec<Idle>>,
    stats: MemoryStats,
    /// Most live bytes in the last peak window (see [`BufferPool::reset_peak`])
    /// and the current one: the base of the budget.
    working_set: u64,
    limits: PoolLimits,
    tick: u64,
}

/// Rounds a request up to its size class: at most 12.5% waste, 256-byte minimum.
pub(crate) fn size_class(bytes: u64) -> u64 {
    let bytes = bytes.max(256);
    let floor_pow2 = 1u64 << (63 - bytes.leading_zeros());
    let step = (floor_pow2 / 8).max(256);
    bytes.div_ceil(step) * step
}

/// A pooled buffer up to this much larger than asked for may serve a request:
/// nearby sequence lengths then share buffers instead of adding classes.
const REUSE_SLACK: f64 = 1.25;

/// The smallest idle buffer of at least `class` bytes and at most
/// `class × REUSE_SLACK`, most recently freed first.
fn take_near(map: &mut BTreeMap<u64, Vec<Idle>>, class: u64) -> Option<wgpu::Buffer> {
    let most = (class as f64 * REUSE_SLACK) as u64;
    let (&size, _) = map.range_mut(class..=most).find(|(_, v)| !v.is_empty())?;
    let list = map.get_mut(&size)?;
    let idle = list.pop();
    if list.is_empty() {
        map.remove(&size);
    }
    idle.map(|i| i.buffer)
}

impl BufferPool {
    /// A pooled buffer for a request of size class `class`, or None if the
    /// caller must create one (after [`BufferPool::make_room`]).
    /// `host_write` says whether the buffer will be filled by `queue.write_buffer`.
    pub fn take(&mut self, class: u64, host_write: bool) -> Option<wgpu::Buffer> {
        let mut found = take_near(&mut self.free, class);
        if found.is_none() && !host_write {
            found = take_near(&mut self.recent, class);
        }
        let size = found.as_ref()?.size();
        self.stats.pooled_bytes -= size;
        self.stats.live_bytes += size;
        self.update_peaks();
        found
    }

    /// Frees idle buffers so that a new buffer of `class` bytes fits the
    /// budget; fails with the numbers when even an empty pool cannot hold it
    /// under `max_bytes`.
    pub fn make_room(&mut self, class: u64) -> std::result::Result<(), String> {
        let live_after = self.stats.live_bytes + class;
        if let Some(max) = self.limits.max_bytes {
            if live_after > max {
                return Err(format!(
                    "the GPU memory limit of {:.1} MB is reached: {:.1} MB in use and {:.1} MB more requested",
                    max as f64 / 1e6,
                    self.stats.live_bytes as f64 / 1e6,
                    class as f64 / 1e6
                ));
            }
        }
        self.shrink_to_budget(class);
        Ok(())
    }

    /// Records a buffer the caller has just created.
    pub fn created(&mut self, size: u64) {
        self.stats.live_bytes += size;
        self.update_peaks();
    }

    /// Takes a buffer back from a dropped tensor; idle buffers beyond the
    /// budget are let go, least recently freed first.
    pub fn give_back(&mut self, buffer: wgpu::Buffer) {
        let size = buffer.size();
        self.stats.live_bytes -= size;
        self.stats.pooled_bytes += size;
        self.tick += 1;
        let idle = Idle {
            buffer,
            freed_at: self.tick,
        };
        self.recent.entry(size).or_default().push(idle);
        self.shrink_to_budget(0);
    }

    /// Lets idle buffers go, oldest first, until the pool fits its budget
    /// with `extra` more bytes about to be created.
    fn shrink_to_budget(&mut self, extra: u64) {
        let budget = self.budget(self.stats.live_bytes + extra);
        while self.stats.live_bytes + self.stats.pooled_bytes + extra > budget {
            if !self.evict_oldest() {
                break;
            }
        }
    }

    /// The batch has been submitted: everything freed so far may take uploads.
    pub fn batch_submitted(&mut self) {
        // Every list stays oldest first (so `pop` takes the most recently
        // freed): whatever is recent was freed after everything already free.
        for (class, mut bufs) in std::mem::take(&mut self.recent) {
            self.free.entry(class).or_default().append(&mut bufs);
        }
    }

    /// Lets go of every idle buffer and starts a new working set from what
    /// tensors hold now: for phase changes (evaluation, checkpoints) whose
    /// buffer sizes differ from the steps before.
    pub fn trim(&mut self) {
        while self.evict_oldest() {}
        self.working_set = self.stats.live_bytes;
    }

    /// Destroys the free buffers that are safe to destroy.
    pub fn release_free(&mut self) {
        for (size, bufs) in std::mem::take(&mut self.free) {
            self.stats.pooled_bytes -= size * bufs.len() as u64;
            for b in bufs {
                b.buffer.destroy();
            }
        }
    }

    pub fn stats(&self) -> MemoryStats {
        MemoryStats {
            allocated_bytes: self.stats.live_bytes + self.stats.pooled_bytes,
            ..self.stats
        }
    }

    pub fn limits(&self) -> PoolLimits {
        self.limits
    }

    pub fn set_limits(&mut self, limits: PoolLimits) {
        self.limits = limits;
    }

    /// Starts a new peak measurement; the window that ends becomes the
    /// working set the budget allows for, so memory a past phase needed
    /// (one long batch) is not kept for ever.
    pub fn reset_peak(&mut self) {
        self.working_set = self.stats.peak_live_bytes.max(self.stats.live_bytes);
        self.shrink_to_budget(0);
        self.stats.peak_live_bytes = self.stats.live_bytes;
        self.stats.peak_allocated_bytes = self.stats.live_bytes + self.stats.pooled_bytes;
    }

    /// What the pool may hold in all, with `live` bytes in use.
    fn budget(&self, live: u64) -> u64 {
        let working_set = self.working_set.max(live);
        let soft = (working_set as f64 * (1.0 + self.limits.idle_fraction)) as u64;
        self.limits.max_bytes.map_or(soft, |max| soft.min(max))
    }

    /// Drops the least recently freed idle buffer; false when none is left.
    /// Dropping (not destroying) is safe for buffers a pending batch still
    /// reads: wgpu frees the memory once that work is done.
    fn evict_oldest(&mut self) -> bool {
        let oldest = |map: &BTreeMap<u64, Vec<Idle>>| {
            map.iter()
                .filter_map(|(&size, v)| v.first().map(|i| (i.freed_at, size)))
                .min()
        };
        let (in_free, candidate) = match (oldest(&self.free), oldest(&self.recent)) {
            (Some(f), Some(r)) if r < f => (false, r),
            (Some(f), _) => (true, f),
            (None, Some(r)) => (false, r),
            (None, None) => return false,
        };
        let map = if in_free {
            &mut self.free
        } else {
            &mut self.recent
        };
        let size = candidate.1;
        if let Some(list) = map.get_mut(&size) {
            list.remove(0);
            if list.is_empty() {
                map.remove(&size);
            }
        }
        self.stats.pooled_bytes -= size;
        true
    }

    fn update_peaks(&mut self) {
        let s = &mut self.stats;
        s.peak_live_bytes = s.peak_live_bytes.max(s.live_bytes);
        s.peak_allocated_bytes = s.peak_allocated_bytes.max(s.live_bytes + s.pooled_bytes);
        self.working_set = self.working_set.max(s.live_bytes);
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

//! Examples into padded micro-batches: truncation to the maximum sequence
//! length, a per-epoch shuffle that depends only on (seed, epoch), and a data
//! position that is one counter, so a resumed run sees the same batches.

use crate::ops::IGNORE_INDEX;
use crate::text::data::Example;

/// One micro-batch: token ids [batch, seq] and next-token targets [batch, seq]
/// (row-major), right-padded to the longest example. Padding and unscored
/// positions carry the ignore index; with causal attention, right padding
/// never changes what a real token sees.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub ids: Vec<i32>,
    pub targets: Vec<i32>,
    pub batch: usize,
    pub seq: usize,
    /// Real (non-padding) input tokens.
    pub tokens: usize,
    /// Targets that count in the loss.
    pub scored: usize,
}

impl Batch {
    /// Pads `examples` on the right into one batch (pad id 0, ignored).
    pub fn from_examples(examples: &[&Example]) -> Batch {
        let seq = examples
            .iter()
            .map(|e| e.ids.len())
            .max()
            .unwrap_or(0)
            .saturating_sub(1)
            .max(1);
        let batch = examples.len();
        let mut ids = vec![0i32; batch * seq];
        let mut targets = vec![IGNORE_INDEX; batch * seq];
        let (mut tokens, mut scored) = (0, 0);
        for (row, ex) in examples.iter().enumerate() {
            // Inputs are positions 0..len−1; position t predicts token t + 1.
            let n = ex.ids.len().saturating_sub(1);
            for (t, &id) in ex.ids[..n].iter().enumerate() {
                ids[row * seq + t] = id as i32;
            }
            for (t, target) in ex.targets().into_iter().enumerate() {
                targets[row * seq + t] = target;
            }
            tokens += n;
            scored += ex.scored_count();
        }
        Batch {
            ids,
            targets,
            batch,
            seq,
            tokens,
            scored,
        }
    }
}

/// What [`prepare`] changed, for one warning line each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrepareReport {
    pub truncated: usize,
    pub dropped: usize,
}

/// Truncates examples to `max_seq_len` tokens and drops those left with no
/// scored target (they would add nothing but a division by zero).
pub fn prepare(examples: Vec<Example>, max_seq_len: usize) -> (Vec<Example>, PrepareReport) {
    let mut report = PrepareReport::default();
    let mut kept = Vec::with_capacity(examples.len());
    for mut ex in examples {
        if ex.ids.len() > max_seq_len {
            ex.ids.truncate(max_seq_len);
            ex.scored.truncate(max_seq_len);
            report.truncated += 1;
        }
        if ex.ids.len() < 2 || ex.scored_count() == 0 {
            report.dropped += 1;
            continue;
        }
        kept.push(ex);
    }
    (kept, report)
}

/// An endless stream of micro-batches over a fixed set of examples: epoch
/// after epoch, each a permutation of the examples (identity without
/// shuffling), cut into consecutive groups of `batch_size` that may span two
/// epochs. The whole state is the count of micro-batches already taken.
pub struct Batcher {
    examples: Vec<Example>,
    batch_size: usize,
    shuffle: bool,
    seed: u64,
    position: u64,
}

impl Batcher {
    pub fn new(examples: Vec<Example>, batch_size: usize, shuffle: bool, seed: u64) -> Batcher {
        Batcher {
            examples,
            batch_size,
            shuffle,
            seed,
            position: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.examples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// Micro-batches taken so far (the data position a checkpoint stores).
    pub fn position(&self) -> u64 {
        self.position
    }

    pub fn set_position(&mut self, position: u64) {
        self.position = position;
    }

    /// The example index at stream position `i`.
    fn index_at(&self, i: u64) -> usize {
        let n = self.examples.len() as u64;
        let (epoch, offset) = (i / n, (i % n) as usize);
        if self.shuffle {
            permutation(self.examples.len(), self.seed, epoch)[offset]
        } else {
            offset
        }
    }

    /// The next micro-batch (`None` only when there are no examples).
    pub fn next_batch(&mut self) -> Option<Batch> {
        if self.examples.is_empty() {
            return None;
        }
        let start = self.position * self.batch_size as u64;
        let picked: Vec<&Example> = (0..self.batch_size as u64)
            .map(|k| &self.examples[self.index_at(start + k)])
            .collect();
        let batch = Batch::from_examples(&picked);
        self.position += 1;
        Some(batch)
    }
}

/// A Fisher–Yates permutation of 0..n from a SplitMix64 stream seeded by
/// (seed, epoch), so any epoch's order can be rebuilt without replaying the others.
fn permutation(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = crate::nn::Rng::new(seed ^ epoch.wrapping_mul(0xA076_1D64_78BD_642F));
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(len: usize, first_scored: usize) -> Example {
        Example {
            ids: (0..len as u32).map(|i| i + 10).collect(),
            scored: (0..len).map(|t| t >= first_scored && t > 0).collect(),
        }
    }

    #[test]
    fn batches_pad_on_the_right_with_ignored_targets() {
        let (a, b) = (example(4, 2), example(2, 1));
        let batch = Batch::from_examples(&[&a, &b]);
        assert_eq!((batch.batch, batch.seq), (2, 3));
        assert_eq!(batch.ids, vec![10, 11, 12, 10, 0, 0]);
        assert_eq!(batch.targets, vec![-100, 12, 13, 11, -100, -100]);
        assert_eq!((batch.tokens, batch.scored), (4, 3));
    }

    #[test]
    fn every_epoch_is_a_permutation_and_positions_replay() {
        let examples: Vec<Example> = (0..7).map(|i| example(3 + i, 1)).collect();
        let mut b = Batcher::new(examples.clone(), 3, true, 42);
        let seen: Vec<Batch> = (0..7).map(|_| b.next_batch().unwrap()).collect();
        // 21 picks = 3 epochs of 7: each epoch holds every example once.
        let lens: Vec<usize> = seen
            .iter()
            .flat_map(|x| {
                (0..x.batch).map(|r| {
                    let row = &x.ids[r * x.seq..(r + 1) * x.seq];
                    row.iter().take_while(|&&v| v != 0).count()
                })
            })
            .collect();
        for epoch in lens.chunks(7) {
            let mut e = epoch.to_vec();
            e.sort();
            assert_eq!(e, (2..9).collect::<Vec<_>>());
        }
        let mut again = Batcher::new(examples, 3, true, 42);
        again.set_position(4);
        assert_eq!(again.next_batch().unwrap(), seen[4]);
    }

    #[test]
    fn prepare_truncates_and_drops_unscored() {
        let (kept, report) = prepare(vec![example(10, 1), example(10, 9), example(3, 1)], 5);
        assert_eq!(
            report,
            PrepareReport {
                truncated: 2,
                dropped: 1
            }
        );
        assert_eq!(kept.len(), 2);
        assert!(kept.iter().all(|e| e.ids.len() <= 5));
    }
}

//! What a training step will hold on the GPU, estimated before the first
//! step: so a run that cannot fit fails at once, in one line, with the
//! options that would fit, instead of after minutes of loading or with a
//! device error mid-step.

use crate::io::hf::ModelConfig;

/// Bytes one optimizer step needs, by kind.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MemoryEstimate {
    /// Frozen weights as loaded (their own dtypes), and everything else
    /// already on the GPU when training starts.
    pub resident: u64,
    /// Adapter parameters, their gradients and AdamW's two moments (f32).
    pub adapter_and_optimizer: u64,
    /// Activations kept for backward at the peak of one micro-batch.
    pub activations: u64,
    /// The largest single buffer of the step (attention scores or a chunk of
    /// LM-head logits), to check against the adapter's per-buffer limit.
    pub largest_buffer: u64,
}

impl MemoryEstimate {
    pub fn total(&self) -> u64 {
        self.resident + self.adapter_and_optimizer + self.activations
    }
}

/// The shape of one micro-batch and what it keeps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepShape {
    pub batch: usize,
    pub seq_len: usize,
    pub grad_checkpoint: bool,
    /// Rows of LM-head logits computed at once.
    pub loss_chunk_rows: usize,
    /// Attention through the fused kernels (`ops::attention_is_fused`),
    /// which keep no per-head copies and no [queries, keys] matrices.
    pub fused_attention: bool,
}

/// Estimates a step from the model's sizes: `resident` bytes already on the
/// GPU (weights, adapters), `trainable` adapter parameters. The activation
/// count follows what the decoder records for backward, per token and layer:
/// the norms' inputs and outputs, the q/k/v/o products and their per-head
/// copies, the attention probabilities (heads × keys per token), the MLP's
/// four intermediate vectors. Fused attention keeps neither the copies nor
/// the probabilities, only one log-sum-exp per head and token. With gradient checkpointing only each layer's input
/// is kept, plus one layer recomputed during backward.
pub fn estimate_step_memory(
    c: &ModelConfig,
    shape: &StepShape,
    resident: u64,
    trainable: usize,
) -> MemoryEstimate {
    let f32_bytes = 4u64;
    let (d, f) = (c.hidden_size as u64, c.intermediate_size as u64);
    let dq = (c.num_attention_heads * c.head_dim) as u64;
    let dkv = (c.num_key_value_heads * c.head_dim) as u64;
    let (heads, t) = (c.num_attention_heads as u64, shape.seq_len as u64);
    let tokens = (shape.batch * shape.seq_len) as u64;
    // LoRA and DoRA layers are single recorded ops that keep their input and
    // output (and x·Aᵀ), with or without dropout: its mask is regenerated.
    // One layer's [B·H, T, T] scores, which the fused kernels never hold.
    let scores = if shape.fused_attention {
        0
    } else {
        heads * t * tokens
    };
    let (per_token_layer, attention) = if shape.fused_attention {
        // q, k, v, roped q and k, the output; and the log-sum-exps.
        (7 * d + 3 * dq + 3 * dkv + 4 * f, heads * tokens)
    } else {
        // Also q and the repeated k and v split per head, the per-head
        // output; probabilities kept for backward, plus the scores they came
        // from while both exist.
        (7 * d + 6 * dq + 3 * dkv + 4 * f, 2 * scores)
    };
    let layer = (per_token_layer * tokens + attention) * f32_bytes;
    let layers = c.num_hidden_layers as u64;
    let kept = if shape.grad_checkpoint {
        layers * d * tokens * f32_bytes + layer
    } else {
        layers * layer
    };
    // Backward holds one layer's gradients besides what forward kept. With
    // fused attention and checkpointing about half of that at once (measured
    // on the tiny Llama: the recomputed layer's activations are freed as its
    // backward proceeds, and no per-head gradients are ever held).
    let backward = if shape.fused_attention && shape.grad_checkpoint {
        layer / 2
    } else {
        layer
    };
    let rows = (shape.loss_chunk_rows as u64).min(tokens);
    // Logits, their softmax gradient and the final hidden states.
    let head = 2 * rows * c.vocab_size as u64 * f32_bytes + 2 * tokens * d * f32_bytes;
    MemoryEstimate {
        resident,
        adapter_and_optimizer: 4 * trainable as u64 * f32_bytes,
        activations: kept + backward + head,
        largest_buffer: scores.max(rows * c.vocab_size as u64) * f32_bytes,
    }
}

/// Bytes as a short human figure (MB under a GB, else GB).
pub fn format_bytes(bytes: u64) -> String {
    if bytes < 1_000_000_000 {
        format!("{:.1} MB", bytes as f64 / 1e6)
    } else {
        format!("{:.2} GB", bytes as f64 / 1e9)
    }
}

//! `eval`: token-weighted mean negative log-likelihood over a JSONL file.

use crate::autograd::no_grad;
use crate::error::{arg_err, Error, Result};
use crate::nn::Llama;
use crate::ops;
use crate::tensor::Tensor;
use crate::text::data::Example;

/// Rows of logits computed at once: bounds the [rows, vocab] buffer.
const LOGIT_CHUNK_ROWS: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct EvalReport {
    /// Mean negative log-likelihood per scored token (nats).
    pub loss: f64,
    /// exp(loss).
    pub ppl: f64,
    /// Scored tokens.
    pub tokens: usize,
}

/// Scores every example (one forward each, no gradients) and averages the
/// negative log-likelihood over all scored tokens of all examples.
pub fn evaluate(model: &Llama, examples: &[Example]) -> Result<EvalReport> {
    let _g = no_grad();
    let gpu = model.embed_tokens.gpu();
    let (mut total, mut tokens) = (0.0, 0);
    for (i, ex) in examples.iter().enumerate() {
        model.check_token_ids(&format!("example {}", i + 1), &ex.ids)?;
        if ex.ids.len() < 2 || ex.scored_count() == 0 {
            continue;
        }
        let inputs: Vec<i32> = ex.ids[..ex.ids.len() - 1]
            .iter()
            .map(|&i| i as i32)
            .collect();
        let n = inputs.len();
        let hidden = model.forward_hidden(&Tensor::from_i32(gpu, &inputs, &[1, n])?, None)?;
        let hidden = ops::reshape(&hidden, &[n, model.config.hidden_size])?;
        let (nll, count) = model.nll_sum(&hidden, &ex.targets(), LOGIT_CHUNK_ROWS)?;
        total += nll;
        tokens += count;
    }
    if tokens == 0 {
        arg_err!(
            "no example has a token to score (each needs at least two tokens and a scored one)"
        );
    }
    let loss = total / tokens as f64;
    if !loss.is_finite() {
        return Err(Error::NotFinite(format!(
            "the evaluation loss is not finite ({loss}) over {tokens} tokens: the model or adapter produces NaN or infinite logits"
        )));
    }
    Ok(EvalReport {
        loss,
        ppl: loss.exp(),
        tokens,
    })
}

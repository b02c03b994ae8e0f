//! `generate`: sampling with a KV cache, streaming text as it is produced.

use crate::autograd::no_grad;
use crate::error::{arg_err, Result};
use crate::nn::{Llama, Rng};
use crate::ops;
use crate::tensor::Tensor;
use crate::text::Tokenizer;

/// How to pick each next token. Temperature 0 is greedy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    pub max_tokens: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            max_tokens: 256,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

/// Picks a token from logits: argmax at temperature 0, else nucleus sampling.
fn pick(logits: &[f32], s: &Sampling, rng: &mut Rng) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |b, (i, &v)| if v > b.1 { (i, v) } else { b },
            )
            .0
    };
    if s.temperature <= 0.0 {
        return argmax() as u32;
    }
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i, (((l - max) / s.temperature) as f64).exp()))
        .collect();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total: f64 = probs.iter().map(|p| p.1).sum();
    // Keep the smallest set whose mass reaches top_p.
    let mut kept = 0.0;
    let mut cut = probs.len();
    for (i, p) in probs.iter().enumerate() {
        kept += p.1 / total;
        if kept >= s.top_p as f64 {
            cut = i + 1;
            break;
        }
    }
    let mass: f64 = probs[..cut].iter().map(|p| p.1).sum();
    let mut u = rng.uniform() * mass;
    for p in &probs[..cut] {
        u -= p.1;
        if u <= 0.0 {
            return p.0 as u32;
        }
    }
    probs[cut - 1].0 as u32
}

/// Continues `prompt_ids`, calling `on_text` with each piece of decoded text
/// as soon as it is complete. Stops at an end-of-sequence token or after
/// `max_tokens`. Returns the new token ids.
pub fn generate(
    model: &Llama,
    tokenizer: &Tokenizer,
    prompt_ids: &[u32],
    sampling: &Sampling,
    mut on_text: impl FnMut(&str),
) -> Result<Vec<u32>> {
    if prompt_ids.is_empty() {
        arg_err!("generate: the prompt encodes to no tokens");
    }
    if !(sampling.top_p > 0.0 && sampling.top_p <= 1.0) {
        arg_err!("generate: top_p must be in (0, 1], got {}", sampling.top_p);
    }
    crate::text::data::check_vocabulary(prompt_ids, tokenizer, model.config.vocab_size)?;
    let _g = no_grad();
    let gpu = model.embed_tokens.gpu();
    let capacity =
        (prompt_ids.len() + sampling.max_tokens).min(model.config.max_position_embeddings);
    let mut cache = model.new_cache(capacity)?;
    let mut rng = Rng::new(sampling.seed);
    let stop = tokenizer.eos_token_ids();
    let mut stream = tokenizer.decode_stream(true);
    let mut input: Vec<i32> = prompt_ids.iter().map(|&i| i as i32).collect();
    let mut out = Vec::new();
    while out.len() < sampling.max_tokens && cache.len() + input.len() <= capacity {
        let n = input.len();
        let hidden =
            model.forward_hidden(&Tensor::from_i32(gpu, &input, &[1, n])?, Some(&mut cache))?;
        let last = ops::slice_rows(
            &ops::reshape(&hidden, &[n, model.config.hidden_size])?,
            n - 1,
            1,
        )?;
        let next = pick(&model.logits(&last)?.to_vec_f32()?, sampling, &mut rng);
        if stop.contains(&next) {
            break;
        }
        out.push(next);
        if let Some(text) = stream.step(next)? {
            on_text(&text);
        }
        input = vec![next as i32];
    }
    let rest = stream.finish()?;
    if !rest.is_empty() {
        on_text(&rest);
    }
    Ok(out)
}

//! Learning-rate schedules, step for step as Hugging Face transformers'
//! `get_constant_schedule_with_warmup` and `get_cosine_schedule_with_warmup`
//! (so a run here and a PEFT run with the same settings see the same rates).

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Constant,
    Cosine,
}

impl std::str::FromStr for Schedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Schedule, String> {
        match s {
            "constant" => Ok(Schedule::Constant),
            "cosine" => Ok(Schedule::Cosine),
            _ => Err(format!(
                "unknown schedule {s:?}; expected constant or cosine"
            )),
        }
    }
}

/// The rate for optimizer step `step` (0-based: the steps taken before this
/// one) of `total`. Warmup rises linearly from 0 — step 0 of a warmup has rate
/// 0, as in transformers — then the rate stays or follows half a cosine to 0.
pub fn learning_rate(
    schedule: Schedule,
    base: f32,
    step: usize,
    warmup: usize,
    total: usize,
) -> f32 {
    let factor = if step < warmup {
        step as f64 / warmup.max(1) as f64
    } else {
        match schedule {
            Schedule::Constant => 1.0,
            Schedule::Cosine => {
                let progress = (step - warmup) as f64 / total.saturating_sub(warmup).max(1) as f64;
                (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
            }
        }
    };
    (base as f64 * factor) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_to_zero() {
        let lr = |s| learning_rate(Schedule::Cosine, 1.0, s, 2, 6);
        assert_eq!(lr(0), 0.0);
        assert_eq!(lr(1), 0.5);
        assert_eq!(lr(2), 1.0);
        assert!((lr(4) - 0.5).abs() < 1e-7);
        assert!(lr(6).abs() < 1e-7);
        assert_eq!(learning_rate(Schedule::Constant, 3.0, 9, 0, 10), 3.0);
    }
}

//! A one-line progress display for terminals: redrawn in place on a TTY,
//! printed as plain lines at intervals when stderr is a file or a pipe
//! (the binary's own: the library reports steps through `Trainer::run`'s callback).

use std::io::{IsTerminal, Write};

use dora_wgpu::train::StepStats;

pub struct ProgressLine {
    tty: bool,
    /// Without a TTY, print every this-many steps.
    every: usize,
    drawn: bool,
}

impl ProgressLine {
    pub fn new(iters: usize) -> ProgressLine {
        ProgressLine {
            tty: std::io::stderr().is_terminal(),
            every: (iters / 20).max(1),
            drawn: false,
        }
    }

    /// `step 37/200 [#####.....] loss 2.3412 | 1234 tok/s | lr 4.8e-3 | ETA 0:43`
    pub fn render(s: &StepStats) -> String {
        const WIDTH: usize = 20;
        let filled = (s.step * WIDTH) / s.iters.max(1);
        let bar: String = (0..WIDTH)
            .map(|i| if i < filled { '#' } else { '.' })
            .collect();
        format!(
            "step {}/{} [{bar}] loss {:.4} | {:.0} tok/s | lr {:.2e} | ETA {}",
            s.step,
            s.iters,
            s.loss,
            s.tokens_per_s,
            s.lr,
            clock(s.eta_s)
        )
    }

    pub fn update(&mut self, s: &StepStats) {
        let mut err = std::io::stderr();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{}", Self::render(s));
            let _ = err.flush();
            self.drawn = true;
        } else if s.step.is_multiple_of(self.every) || s.step == s.iters || s.step == 1 {
            let _ = writeln!(err, "{}", Self::render(s));
        }
    }

    /// Prints a line of its own (e.g. a validation loss) without tearing the bar.
    pub fn println(&mut self, line: &str) {
        if self.tty && self.drawn {
            eprint!("\r\x1b[2K");
            self.drawn = false;
        }
        println!("{line}");
    }

    /// Ends the in-place line.
    pub fn finish(&mut self) {
        if self.tty && self.drawn {
            eprintln!();
            self.drawn = false;
        }
    }
}

/// Seconds as m:ss or h:mm:ss.
pub fn clock(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

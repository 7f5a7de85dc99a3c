//! What a training run shows while it runs: a progress bar (step, steps/s, ε spent, losses) when
//! stderr is a terminal, one plain line per logging interval otherwise (CI logs, `nohup`).
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
}

impl Progress {
    /// Progress over steps `start..total`.
    pub fn new(start: u64, total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr_with_hz(4));
            bar.set_style(
                ProgressStyle::with_template("{bar:30} {pos}/{len} steps · {per_sec} · {elapsed_precise} (eta {eta}) · {msg}")
                    .expect("progress template is valid"),
            );
            bar.set_position(start);
            bar.reset_eta();
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        Progress { bar, total }
    }

    /// Moves to `step` (steps done so far).
    pub fn set_step(&self, step: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(step);
        }
    }

    /// Reports a logging interval: the bar's message, or a line on stderr.
    pub fn report(&self, step: u64, summary: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(summary.to_string()),
            None => eprintln!("step {step}/{}: {summary}", self.total),
        }
    }

    /// A message that must stay visible (a warning, why the run stopped).
    pub fn println(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.println(message),
            None => eprintln!("{message}"),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

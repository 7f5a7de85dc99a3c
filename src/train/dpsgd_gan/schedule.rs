//! When G steps: after every n_D D steps, n_D fixed or adaptive (docs/algorithms.md §4). The adaptive
//! schedule starts at n_D = 1 and climbs the ladder 1, 2, 5, 10, 20, 50, 100, 200, 500, ... when an
//! exponential moving average (β = 0.99) of D's accuracy on a fresh generated batch, measured
//! before each G step, falls to 0.6 or below, at least 200 G steps after the last move. It reads
//! generated data only, so it costs no privacy. Its state is part of the checkpoint, so that a
//! resumed run takes the same G steps.
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The EMA's weight on its past.
pub const ACCURACY_EMA_BETA: f64 = 0.99;
/// D's smoothed accuracy on generated data at or below which n_D moves up.
pub const ACCURACY_THRESHOLD: f64 = 0.6;
/// G steps between two moves at the least.
pub const MIN_G_STEPS_BETWEEN_MOVES: u64 = 200;

/// n_D over the run, as config.json records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum GStepSchedule {
    Fixed { d_steps_per_g_step: u64 },
    Adaptive,
}

impl std::str::FromStr for GStepSchedule {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s == "adaptive" {
            return Ok(GStepSchedule::Adaptive);
        }
        match s.parse::<u64>() {
            Ok(n) if n >= 1 => Ok(GStepSchedule::Fixed { d_steps_per_g_step: n }),
            _ => Err(Error::Invalid(format!("--d-steps-per-g-step must be a whole number of at least 1 or `adaptive`, got {s:?}"))),
        }
    }
}

impl std::fmt::Display for GStepSchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GStepSchedule::Fixed { d_steps_per_g_step } => write!(f, "{d_steps_per_g_step}"),
            GStepSchedule::Adaptive => write!(f, "adaptive"),
        }
    }
}

/// The rung above `n` on the ladder 1, 2, 5, 10, 20, 50, ...
pub fn next_rung(n: u64) -> u64 {
    let mut decade = 1u64;
    while decade.saturating_mul(10) <= n {
        decade *= 10;
    }
    match n / decade {
        0 | 1 => 2 * decade,
        2..=4 => 5 * decade,
        _ => 10 * decade,
    }
}

/// Where the schedule stands: saved in every checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleState {
    pub schedule: GStepSchedule,
    /// The current n_D.
    pub d_steps_per_g_step: u64,
    /// D steps since the last G step.
    pub d_steps_since_g_step: u64,
    /// The EMA of D's accuracy on generated data; `None` before the first measurement, which
    /// then starts it (no bias toward either side of the threshold).
    pub accuracy_ema: Option<f64>,
    /// G steps taken when n_D last moved (0 at the start).
    pub g_steps_at_last_move: u64,
}

impl ScheduleState {
    pub fn new(schedule: GStepSchedule) -> Self {
        let n = match schedule {
            GStepSchedule::Fixed { d_steps_per_g_step } => d_steps_per_g_step,
            GStepSchedule::Adaptive => 1,
        };
        ScheduleState { schedule, d_steps_per_g_step: n, d_steps_since_g_step: 0, accuracy_ema: None, g_steps_at_last_move: 0 }
    }

    /// Counts a D step; whether a G step is due after it.
    pub fn d_step_taken(&mut self) -> bool {
        self.d_steps_since_g_step += 1;
        if self.d_steps_since_g_step >= self.d_steps_per_g_step {
            self.d_steps_since_g_step = 0;
            true
        } else {
            false
        }
    }

    /// Whether the schedule reads D's accuracy on generated data (a host sync per G step).
    pub fn needs_accuracy(&self) -> bool {
        self.schedule == GStepSchedule::Adaptive
    }

    /// Takes D's accuracy on the generated batch of the G step about to run, with `g_steps` G
    /// steps taken before it; moves n_D up when the rule says so. Whether it moved.
    pub fn observe_accuracy(&mut self, accuracy: f64, g_steps: u64) -> bool {
        if !self.needs_accuracy() {
            return false;
        }
        let ema = match self.accuracy_ema {
            None => accuracy,
            Some(ema) => ACCURACY_EMA_BETA * ema + (1.0 - ACCURACY_EMA_BETA) * accuracy,
        };
        self.accuracy_ema = Some(ema);
        if ema <= ACCURACY_THRESHOLD && g_steps.saturating_sub(self.g_steps_at_last_move) >= MIN_G_STEPS_BETWEEN_MOVES {
            self.d_steps_per_g_step = next_rung(self.d_steps_per_g_step);
            self.g_steps_at_last_move = g_steps;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ladder_goes_one_two_five() {
        let mut n = 1;
        let rungs: Vec<u64> = (0..9)
            .map(|_| {
                n = next_rung(n);
                n
            })
            .collect();
        assert_eq!(rungs, [2, 5, 10, 20, 50, 100, 200, 500, 1000]);
        assert_eq!(next_rung(3), 5);
        assert_eq!(next_rung(7), 10);
    }

    #[test]
    fn a_fixed_schedule_steps_g_every_n_d_steps() {
        let mut s = ScheduleState::new("5".parse().unwrap());
        let due: Vec<u64> = (1..=20).filter(|_| s.d_step_taken()).collect();
        assert_eq!(due.len(), 4);
        assert!(!s.observe_accuracy(0.0, 1000), "a fixed schedule never moves");
        assert_eq!(s.d_steps_per_g_step, 5);
        assert!("0".parse::<GStepSchedule>().is_err() && "x".parse::<GStepSchedule>().is_err());
        assert_eq!("adaptive".parse::<GStepSchedule>().unwrap(), GStepSchedule::Adaptive);
    }

    #[test]
    fn the_adaptive_schedule_moves_when_the_ema_falls_and_not_sooner_than_200_g_steps() {
        let mut s = ScheduleState::new(GStepSchedule::Adaptive);
        assert_eq!(s.d_steps_per_g_step, 1);
        // D wins at first: accuracy 1, no move however long.
        for g in 0..300 {
            assert!(!s.observe_accuracy(1.0, g));
        }
        // D's accuracy drops to 0.5: the EMA crosses 0.6 after log(0.2)/log(0.99) ≈ 160 G steps.
        let moved: Vec<u64> = (300..1000).filter(|&g| s.observe_accuracy(0.5, g)).collect();
        assert!(moved[0] > 300 + 150 && moved[0] < 300 + 170, "first move at {}", moved[0]);
        assert!(moved.windows(2).all(|w| w[1] - w[0] == MIN_G_STEPS_BETWEEN_MOVES), "{moved:?}");
        assert_eq!(s.d_steps_per_g_step, [1, 2, 5, 10, 20][moved.len()]);
    }
}

//! The accountant of one run: composes heterogeneous privacy-spending steps under RDP (orders add
//! up, Mironov 2017 Prop. 1), reports ε at the run's δ, refuses any step that would go past the
//! budget, and is saved in every checkpoint as JSON.
//!
//! The state is the history alone, (mechanism, count) with consecutive equal mechanisms merged; the
//! total RDP at order α is Σ count·RDP_mechanism(α), recomputed in that order from the history.
//! So a loaded checkpoint gives bit-for-bit the ε the saved run had, and nothing derived is trusted
//! from a file.
use serde::{Deserialize, Serialize};

use super::conversion::{self, check_delta, Conversion, Guarantee};
use super::gswgan::{self, GsWganRun};
use super::rdp::{self, Orders};
use crate::{Error, Result};

/// One privacy-spending step.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Mechanism {
    /// A DP-SGD step: the Gaussian mechanism on a Poisson sample.
    SubsampledGaussian { sample_rate: f64, noise_multiplier: f64 },
    /// One GS-WGAN generator iteration as published: B compositions of the Gaussian amplified by
    /// subsampling without replacement (see [`gswgan`]).
    GsWganAsPublished(GsWganRun),
    /// One GS-WGAN generator iteration counted once: the joint-convexity bound for selecting one of
    /// k slices, ln(1 + (e^{(α−1)αB/(2σ²)} − 1)/k)/(α − 1) (see [`gswgan`]); its best order is
    /// usually below 2, so its accountant takes [`Orders::Fine`].
    GsWganPerStep(GsWganRun),
}

impl Mechanism {
    pub fn check(&self) -> Result<()> {
        match self {
            Mechanism::SubsampledGaussian { sample_rate, noise_multiplier } => rdp::check_mechanism(*sample_rate, *noise_multiplier),
            Mechanism::GsWganAsPublished(run) | Mechanism::GsWganPerStep(run) => run.check(),
        }
    }

    /// RDP of one such step at order `alpha`.
    pub fn rdp(&self, alpha: f64) -> Result<f64> {
        match self {
            Mechanism::SubsampledGaussian { sample_rate, noise_multiplier } => {
                rdp::rdp_subsampled_gaussian(*sample_rate, *noise_multiplier, alpha)
            }
            Mechanism::GsWganAsPublished(run) => {
                Ok(run.batch_size as f64 * gswgan::per_query_rdp(run.noise_multiplier, run.sampling_ratio(), alpha)?)
            }
            Mechanism::GsWganPerStep(run) => gswgan::per_step_rdp(run, alpha),
        }
    }
}

/// `count` consecutive steps of one mechanism, with its per-step RDP at the accountant's orders.
#[derive(Clone, Debug, PartialEq)]
struct Entry {
    mechanism: Mechanism,
    count: u64,
    unit_rdp: Vec<f64>,
}

/// What is saved: the configuration and the history, nothing derived.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    orders: Orders,
    conversion: Conversion,
    delta: f64,
    /// ε_max; `None` for a run without a budget (the accountant still counts).
    epsilon_budget: Option<f64>,
    history: Vec<(Mechanism, u64)>,
}

/// See the module documentation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Record", into = "Record")]
pub struct Accountant {
    orders: Orders,
    order_values: Vec<f64>,
    conversion: Conversion,
    delta: f64,
    epsilon_budget: Option<f64>,
    history: Vec<Entry>,
}

impl Accountant {
    /// An accountant with no steps yet. `epsilon_budget`, when given, is the ε at `delta` that no
    /// step may push the run past.
    pub fn new(orders: Orders, conversion: Conversion, delta: f64, epsilon_budget: Option<f64>) -> Result<Self> {
        check_delta(delta)?;
        if let Some(budget) = epsilon_budget {
            if budget.is_nan() || budget <= 0.0 {
                return Err(Error::Invalid(format!("the ε budget must be positive, got {budget}")));
            }
        }
        Ok(Accountant { orders, order_values: orders.values(), conversion, delta, epsilon_budget, history: Vec::new() })
    }

    /// The steps so far, consecutive equal mechanisms merged.
    pub fn history(&self) -> Vec<(Mechanism, u64)> {
        self.history.iter().map(|e| (e.mechanism, e.count)).collect()
    }

    /// The (ε, δ) spent so far. No steps: ε = 0 (nothing was released), order NaN.
    pub fn spent(&self) -> Result<Guarantee> {
        self.spent_with(self.conversion)
    }

    /// The (ε, δ) spent so far under the other conversion, for reports; the budget is always
    /// checked with the run's own.
    pub fn spent_with(&self, conversion: Conversion) -> Result<Guarantee> {
        Self::guarantee_of(&self.history, &self.order_values, self.delta, conversion)
    }

    /// What ε would be after `count` more steps of `mechanism`; an error if that passes the budget.
    /// The state is never changed.
    pub fn check_budget(&self, mechanism: Mechanism, count: u64) -> Result<Guarantee> {
        let history = self.with_steps(mechanism, count)?;
        let after = Self::guarantee_of(&history, &self.order_values, self.delta, self.conversion)?;
        match self.epsilon_budget {
            Some(budget) if after.epsilon.is_nan() || after.epsilon > budget => Err(Error::PrivacyBudget(format!(
                "{} would spend ε = {:.4}, past the budget ε = {budget}, at δ = {} (order {})",
                if count == 1 { "it".to_string() } else { format!("{count} more steps") },
                after.epsilon,
                self.delta,
                after.order
            ))),
            _ => Ok(after),
        }
    }

    /// Records `count` steps of `mechanism` if they stay within the budget and returns the new
    /// (ε, δ); otherwise returns the error and leaves the accountant exactly as it was.
    pub fn try_step(&mut self, mechanism: Mechanism, count: u64) -> Result<Guarantee> {
        let after = self.check_budget(mechanism, count)?;
        self.history = self.with_steps(mechanism, count)?;
        Ok(after)
    }

    /// The accountant after `count` (possibly 0) more steps of `mechanism`, whatever the budget:
    /// what a run's checkpoint must hold after that many steps, to check one against.
    pub fn after(mut self, mechanism: Mechanism, count: u64) -> Result<Self> {
        if count > 0 {
            self.history = self.with_steps(mechanism, count)?;
        }
        Ok(self)
    }

    /// The history with `count` more steps of `mechanism` appended (merged into the last entry when
    /// it is the same mechanism).
    fn with_steps(&self, mechanism: Mechanism, count: u64) -> Result<Vec<Entry>> {
        if count == 0 {
            return Err(Error::Invalid("a step count must be at least 1".into()));
        }
        mechanism.check()?;
        let mut history = self.history.clone();
        match history.last_mut() {
            Some(last) if last.mechanism == mechanism => {
                last.count = last.count.checked_add(count).ok_or_else(|| Error::Invalid("step count overflows u64".into()))?;
            }
            _ => {
                let unit_rdp = self.order_values.iter().map(|&a| mechanism.rdp(a)).collect::<Result<Vec<f64>>>()?;
                history.push(Entry { mechanism, count, unit_rdp });
            }
        }
        Ok(history)
    }

    fn guarantee_of(history: &[Entry], orders: &[f64], delta: f64, conversion: Conversion) -> Result<Guarantee> {
        if history.is_empty() {
            return Ok(Guarantee { epsilon: 0.0, delta, order: f64::NAN });
        }
        let total: Vec<f64> = (0..orders.len()).map(|i| history.iter().map(|e| e.count as f64 * e.unit_rdp[i]).sum()).collect();
        conversion::epsilon(orders, &total, delta, conversion)
    }

    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| Error::Invalid(format!("accountant as JSON: {e}")))
    }

    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::Invalid(format!("accountant state is not valid JSON for this version: {e}")))
    }
}

impl TryFrom<Record> for Accountant {
    type Error = Error;
    /// Rebuilds the derived RDP from the history, validating every field as a fresh run would.
    fn try_from(r: Record) -> Result<Self> {
        let mut acc = Accountant::new(r.orders, r.conversion, r.delta, r.epsilon_budget)?;
        for (mechanism, count) in r.history {
            let history = acc.with_steps(mechanism, count)?;
            acc.history = history;
        }
        Ok(acc)
    }
}

impl From<Accountant> for Record {
    fn from(a: Accountant) -> Record {
        Record {
            orders: a.orders,
            conversion: a.conversion,
            delta: a.delta,
            epsilon_budget: a.epsilon_budget,
            history: a.history.into_iter().map(|e| (e.mechanism, e.count)).collect(),
        }
    }
}

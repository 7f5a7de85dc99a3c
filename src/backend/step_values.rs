//! The values of a training step that change from one step to the next: the step of its noise
//! keys, its SGD learning rate, its moving average's decay, Adam's bias corrections, the keys of
//! its public draws and its batches' record indices. Gathered in one place, a device can keep them in memory: a CUDA step's
//! kernels then read them from there instead of from their launch parameters, so a CUDA graph
//! captured from one step replays as the next once the next step's values are written in
//! (`backend::cuda::StepBlock`). On the CPU they change nothing: every op reads its arguments.
//!
//! A step's values are laid out as u32 words (f32 as their bits): a fixed header, then the Adam
//! corrections, the draw keys, the batches' indices and the weight rows. Two steps of a run have the same [`StepLayout`], so a captured step's
//! launches find the next step's values where they found its own.
//!
//! While values are bound on a thread ([`bind`]), every op whose per-step value (a noise key's
//! step, an SGD learning rate, a moving average's decay, Adam's bias corrections, a public draw's
//! keys, a gather's indices)
//! equals the bound value of that kind reads it from the bound device words, if there are any. A
//! strict binding, which a capture uses, refuses an op whose per-step value is not bound, naming
//! it, on every backend: a replay would repeat that value, and a noise step repeated is noise
//! reused. So the CPU backend checks that a step's plan of values is complete before a GPU
//! captures it.
use std::cell::RefCell;

use crate::backend::AdamParams;
use crate::error::{Error, Result};

/// One step's per-step values (`None` or empty: the step has none of that kind). A launch finds its
/// value among them by value, so values of one kind must differ while a step is bound ([`bind`]);
/// a replay then reads each from the place the capture found it in, whatever its value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepValues {
    /// The step of every noise key the step uses (its keys differ only in their tensor index).
    pub noise_step: Option<u64>,
    /// The learning rate of the step's SGD updates.
    pub sgd_lr: Option<f32>,
    /// The decay of the step's moving averages (a released generator's EMA).
    pub ema_decay: Option<f32>,
    /// Adam's `(step_size, bias2_sqrt)` ([`AdamParams::bias_corrections`]) of each Adam update the
    /// step takes, in order (a step may update several optimizers, or one several times).
    pub adam_corrections: Vec<(f32, f32)>,
    /// Philox key words 0 and 1 of each public draw's members, in the order the step draws them
    /// (all distinct: a launch finds its keys by value).
    pub draw_keys: Vec<[u32; 2]>,
    /// The record indices of each of the step's batches, in order.
    pub batch_indices: Vec<Vec<u32>>,
    /// Rows of the weight table `[[1], [0]]` that a batch padded to a fixed size gathers its
    /// examples' weights from: 0 for an example of the batch, 1 for a padding row (weight 0).
    pub example_weight_rows: Vec<u32>,
}

/// What a [`StepValues`] holds, which fixes where each value sits among its words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepLayout {
    pub noise_step: bool,
    pub sgd_lr: bool,
    pub ema_decay: bool,
    pub adam_corrections: usize,
    pub draw_keys: usize,
    /// The length of each batch.
    pub batch_indices: Vec<usize>,
    pub example_weight_rows: usize,
}

/// Word offsets of the header's values (present or not, the header keeps its size).
pub const NOISE_STEP_WORD: usize = 0;
pub const SGD_LR_WORD: usize = 2;
pub const EMA_DECAY_WORD: usize = 3;
/// Where the list of Adam corrections starts, two words each.
pub const ADAM_CORRECTIONS_WORD: usize = 4;

/// The rows of the weight table a padded batch gathers its examples' weights from: `[[1], [0]]`.
pub const WEIGHT_TABLE_ROWS: u32 = 2;

impl StepLayout {
    /// The words a step's values take.
    pub fn words(&self) -> usize {
        self.example_weight_rows_word() + self.example_weight_rows
    }

    /// Where the draw keys start.
    pub fn draw_keys_word(&self) -> usize {
        ADAM_CORRECTIONS_WORD + 2 * self.adam_corrections
    }

    /// Where batch `i`'s indices start.
    pub fn batch_indices_word(&self, i: usize) -> usize {
        self.draw_keys_word() + 2 * self.draw_keys + self.batch_indices[..i].iter().sum::<usize>()
    }

    /// Where the example weight rows start.
    pub fn example_weight_rows_word(&self) -> usize {
        self.batch_indices_word(self.batch_indices.len())
    }
}

/// Device memory holding a bound step's words (a CUDA `StepBlock`).
#[derive(Clone, Copy, Debug)]
pub struct DeviceWords {
    /// Which device's launches read them (its backend's address, for identity only).
    pub device: *const (),
    /// The device address of word 0.
    pub base: u64,
    /// Every batch index held is below it: a gather reads the words' indices only from a table
    /// of at least this many rows.
    pub index_bound: u32,
}

struct Binding {
    values: StepValues,
    strict: bool,
    words: Option<DeviceWords>,
}

thread_local! {
    static BOUND: RefCell<Option<Binding>> = const { RefCell::new(None) };
}

/// Runs `f` with `values` bound on the thread (see the module doc): ops find their per-step values
/// among them, and read them from `words` when given; `strict` refuses ops whose per-step value is
/// not among them. Bindings do not nest.
pub fn bind<R>(values: &StepValues, strict: bool, words: Option<DeviceWords>, f: impl FnOnce() -> Result<R>) -> Result<R> {
    values.check()?;
    BOUND.with(|b| {
        let mut b = b.borrow_mut();
        if b.is_some() {
            return Err(Error::Invalid("a step's values are already bound on this thread".into()));
        }
        *b = Some(Binding { values: values.clone(), strict, words });
        Ok(())
    })?;
    let result = f();
    BOUND.with(|b| b.borrow_mut().take());
    result
}

/// Under a strict binding, an error naming `what` unless `found` finds it among the bound values.
fn require(what: impl FnOnce() -> String, found: impl FnOnce(&StepValues) -> bool) -> Result<()> {
    BOUND.with(|b| match b.borrow().as_ref() {
        Some(binding) if binding.strict && !found(&binding.values) => {
            Err(Error::Invalid(format!("{} is not among the step's bound values: a replay of the captured step would repeat it", what())))
        }
        _ => Ok(()),
    })
}

/// Ops' checks of their per-step values against a strict binding (no-ops otherwise).
pub(crate) fn require_noise_step(step: u64) -> Result<()> {
    require(|| format!("a noise key's step {step}"), |v| v.noise_step_word(step).is_some())
}

pub(crate) fn require_sgd_lr(lr: f32) -> Result<()> {
    require(|| format!("an SGD learning rate {lr}"), |v| v.sgd_lr_word(lr).is_some())
}

pub(crate) fn require_adam_corrections(hp: &AdamParams, t: u64) -> Result<()> {
    let c = hp.bias_corrections(t);
    require(|| format!("Adam's bias corrections at t = {t}"), |v| v.adam_corrections_word(c).is_some())
}

pub(crate) fn require_ema_decay(decay: f32) -> Result<()> {
    require(|| format!("a moving average's decay {decay}"), |v| v.ema_decay_word(decay).is_some())
}

pub(crate) fn require_draw_keys(keys: &[[u32; 2]]) -> Result<()> {
    require(|| format!("the keys of a public draw of {} members", keys.len()), |v| v.draw_keys_word(keys).is_some())
}

/// A gather's indices must be the batch's (from a table at least as long as the bound words'
/// index bound) or the example weight rows.
pub(crate) fn require_gather(indices: &[u32], table_rows: usize) -> Result<()> {
    let bound = BOUND.with(|b| b.borrow().as_ref().and_then(|b| b.words).map_or(0, |w| w.index_bound as usize));
    require(
        || format!("a gather of {} rows from a table of {table_rows}", indices.len()),
        |v| v.gather_word(indices, table_rows, bound).is_some(),
    )
}

/// The device address a launch on `device` reads a per-step value from: the bound words' address
/// of the word `word` finds, or 0 (the value travels in the launch parameters).
pub(crate) fn device_address(device: *const (), word: impl FnOnce(&StepValues, &DeviceWords) -> Option<usize>) -> u64 {
    BOUND.with(|b| {
        let b = b.borrow();
        let Some((values, words)) = b.as_ref().and_then(|b| b.words.as_ref().map(|w| (&b.values, w))) else { return 0 };
        if !std::ptr::eq(words.device, device) {
            return 0;
        }
        word(values, words).map_or(0, |w| words.base + 4 * w as u64)
    })
}

impl AdamParams {
    /// Adam's bias corrections at step `t` (1-based) folded into the step size, in f64:
    /// `(lr / (1 − β1ᵗ), sqrt(1 − β2ᵗ))`, what the update kernels take.
    pub fn bias_corrections(&self, t: u64) -> (f32, f32) {
        // βᵗ underflows to 0 long before t leaves i32's range.
        let t = t.min(i32::MAX as u64) as i32;
        let bias1 = 1.0 - (self.beta1 as f64).powi(t);
        let bias2 = 1.0 - (self.beta2 as f64).powi(t);
        ((self.lr as f64 / bias1) as f32, bias2.sqrt() as f32)
    }
}

impl StepValues {
    pub fn layout(&self) -> StepLayout {
        StepLayout {
            noise_step: self.noise_step.is_some(),
            sgd_lr: self.sgd_lr.is_some(),
            ema_decay: self.ema_decay.is_some(),
            adam_corrections: self.adam_corrections.len(),
            draw_keys: self.draw_keys.len(),
            batch_indices: self.batch_indices.iter().map(Vec::len).collect(),
            example_weight_rows: self.example_weight_rows.len(),
        }
    }

    /// Refuses weight rows outside the weight table's two rows: what any step's values, bound or
    /// replayed, must satisfy.
    pub fn check_placeable(&self) -> Result<()> {
        if let Some(bad) = self.example_weight_rows.iter().find(|&&r| r >= WEIGHT_TABLE_ROWS) {
            return Err(Error::Invalid(format!("example weight row {bad} is past the weight table's {WEIGHT_TABLE_ROWS} rows")));
        }
        Ok(())
    }

    /// [`StepValues::check_placeable`], and refuses values a launch, which finds its value by
    /// value, could not tell apart: two draws with the same key words, two equal Adam corrections,
    /// two equal batches, a batch equal to the weight rows. What a bound step's values (a
    /// capture's) must satisfy; a replay reads each value from its place, and its values may
    /// coincide.
    pub fn check(&self) -> Result<()> {
        self.check_placeable()?;
        if has_repeats(&self.draw_keys) {
            return Err(Error::Invalid("a step's public draws share a key: each draw needs its own".into()));
        }
        let corrections: Vec<(u32, u32)> = self.adam_corrections.iter().map(|&(a, b)| (a.to_bits(), b.to_bits())).collect();
        if has_repeats(&corrections) {
            return Err(Error::Invalid(
                "two of a step's Adam updates have equal bias corrections: a launch could not tell them apart".into(),
            ));
        }
        if has_repeats(&self.batch_indices) {
            return Err(Error::Invalid("two of a step's batches are equal: a gather could not tell them apart".into()));
        }
        if self.batch_indices.iter().any(|b| !b.is_empty() && *b == self.example_weight_rows) {
            return Err(Error::Invalid("a step's batch indices equal its example weight rows: a gather could not tell them apart".into()));
        }
        Ok(())
    }

    /// The values as words, laid out as [`StepValues::layout`] says (absent ones 0).
    pub fn words(&self) -> Vec<u32> {
        let mut words = vec![0u32; ADAM_CORRECTIONS_WORD];
        let step = self.noise_step.unwrap_or(0);
        words[NOISE_STEP_WORD] = step as u32;
        words[NOISE_STEP_WORD + 1] = (step >> 32) as u32;
        words[SGD_LR_WORD] = self.sgd_lr.unwrap_or(0.0).to_bits();
        words[EMA_DECAY_WORD] = self.ema_decay.unwrap_or(0.0).to_bits();
        words.extend(self.adam_corrections.iter().flat_map(|&(step_size, bias2_sqrt)| [step_size.to_bits(), bias2_sqrt.to_bits()]));
        words.extend(self.draw_keys.iter().flatten());
        words.extend(self.batch_indices.iter().flatten());
        words.extend(&self.example_weight_rows);
        words
    }

    /// The word a noise key at `step` reads its step from, if the step's noise step is `step`.
    pub fn noise_step_word(&self, step: u64) -> Option<usize> {
        (self.noise_step == Some(step)).then_some(NOISE_STEP_WORD)
    }

    /// The word an SGD update at `lr` reads it from (compared bit for bit).
    pub fn sgd_lr_word(&self, lr: f32) -> Option<usize> {
        (self.sgd_lr.map(f32::to_bits) == Some(lr.to_bits())).then_some(SGD_LR_WORD)
    }

    /// The word a moving average at `decay` reads it from (compared bit for bit).
    pub fn ema_decay_word(&self, decay: f32) -> Option<usize> {
        (self.ema_decay.map(f32::to_bits) == Some(decay.to_bits())).then_some(EMA_DECAY_WORD)
    }

    /// The word Adam's bias corrections `(step_size, bias2_sqrt)` are read from (bit for bit).
    pub fn adam_corrections_word(&self, corrections: (f32, f32)) -> Option<usize> {
        let bits = |(a, b): (f32, f32)| (a.to_bits(), b.to_bits());
        let i = self.adam_corrections.iter().position(|&c| bits(c) == bits(corrections))?;
        Some(ADAM_CORRECTIONS_WORD + 2 * i)
    }

    /// The word where the keys of one launch's members start, if they lie in the step's draw keys
    /// in that order.
    pub fn draw_keys_word(&self, keys: &[[u32; 2]]) -> Option<usize> {
        let first = self.draw_keys.iter().position(|k| Some(k) == keys.first())?;
        (self.draw_keys[first..].starts_with(keys)).then_some(self.layout().draw_keys_word() + 2 * first)
    }

    /// The word where the batch whose indices are `indices` starts, if the step has one.
    pub fn batch_indices_word(&self, indices: &[u32]) -> Option<usize> {
        let i = self.batch_indices.iter().position(|b| !indices.is_empty() && b == indices)?;
        Some(self.layout().batch_indices_word(i))
    }

    /// The word where the example weight rows start, if they are `indices`.
    pub fn example_weight_rows_word(&self, indices: &[u32]) -> Option<usize> {
        (!indices.is_empty() && self.example_weight_rows == indices).then_some(self.layout().example_weight_rows_word())
    }

    /// The word a gather of `indices` from a table of `table_rows` rows reads them from: a batch's
    /// indices (checked below `index_bound`, so only from a table at least that long) or the
    /// weight rows (from a table at least as long as the weight table).
    pub fn gather_word(&self, indices: &[u32], table_rows: usize, index_bound: usize) -> Option<usize> {
        let batch = self.batch_indices_word(indices).filter(|_| table_rows >= index_bound);
        batch.or_else(|| self.example_weight_rows_word(indices).filter(|_| table_rows >= WEIGHT_TABLE_ROWS as usize))
    }
}

/// Whether two of `items` are equal.
fn has_repeats<T: Ord + Clone>(items: &[T]) -> bool {
    let mut sorted = items.to_vec();
    sorted.sort_unstable();
    sorted.windows(2).any(|w| w[0] == w[1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> StepValues {
        StepValues {
            noise_step: Some(0x1_0000_0007),
            sgd_lr: Some(0.15),
            ema_decay: Some(0.75),
            adam_corrections: vec![(0.25, 0.5), (0.125, 0.625), (0.375, 0.75)],
            draw_keys: vec![[1, 2], [3, 4], [5, 6]],
            batch_indices: vec![vec![9, 8, 7], vec![6, 5]],
            example_weight_rows: vec![0, 0, 1, 0],
        }
    }

    #[test]
    fn words_follow_the_layout_and_each_value_is_found_where_it_was_written() {
        let v = values();
        let w = v.words();
        assert_eq!(w.len(), v.layout().words());
        // Three corrections, so that their 2 × 3 words differ from 2 + 3.
        assert_eq!(v.layout().words(), 4 + 6 + 6 + 5 + 4);
        let at = |word: Option<usize>| word.expect("found");
        let step = at(v.noise_step_word(0x1_0000_0007));
        assert_eq!((w[step], w[step + 1]), (7, 1));
        assert_eq!(f32::from_bits(w[at(v.sgd_lr_word(0.15))]), 0.15);
        assert_eq!(f32::from_bits(w[at(v.ema_decay_word(0.75))]), 0.75);
        for c in [(0.25, 0.5), (0.125, 0.625), (0.375, 0.75)] {
            let adam = at(v.adam_corrections_word(c));
            assert_eq!((f32::from_bits(w[adam]), f32::from_bits(w[adam + 1])), c);
        }
        let keys = at(v.draw_keys_word(&[[3, 4], [5, 6]]));
        assert_eq!(&w[keys..keys + 4], &[3, 4, 5, 6]);
        for batch in [&[9, 8, 7][..], &[6, 5]] {
            let indices = at(v.batch_indices_word(batch));
            assert_eq!(&w[indices..indices + batch.len()], batch);
        }
        let weights = at(v.example_weight_rows_word(&[0, 0, 1, 0]));
        assert_eq!(&w[weights..], &[0, 0, 1, 0]);
        // A gather finds a batch only in a table the indices were checked against, the weight
        // rows only in one of at least two rows.
        let indices = at(v.batch_indices_word(&[6, 5]));
        assert_eq!(v.gather_word(&[6, 5], 10, 10), Some(indices));
        assert_eq!(v.gather_word(&[6, 5], 9, 10), None);
        assert_eq!(v.gather_word(&[0, 0, 1, 0], 2, 10), Some(weights));
        assert_eq!(v.gather_word(&[0, 0, 1, 0], 1, 10), None);
    }

    /// A value the step does not hold is not found: the launch keeps it in its parameters (and a
    /// captured step refuses it).
    #[test]
    fn values_the_step_does_not_hold_are_not_found() {
        let v = values();
        assert_eq!(v.noise_step_word(7), None);
        assert_eq!(v.sgd_lr_word(f32::from_bits(0.15f32.to_bits() + 1)), None);
        assert_eq!(v.ema_decay_word(f32::from_bits(0.75f32.to_bits() + 1)), None);
        assert_eq!(v.adam_corrections_word((0.25, f32::from_bits(0.5f32.to_bits() + 1))), None);
        assert_eq!(v.adam_corrections_word((0.25, 0.625)), None, "halves of two corrections");
        assert_eq!(v.draw_keys_word(&[[3, 4], [1, 2]]), None, "keys out of order");
        assert_eq!(v.draw_keys_word(&[[5, 6], [7, 8]]), None, "keys past the end");
        assert_eq!(v.batch_indices_word(&[9, 8]), None);
        assert_eq!(v.batch_indices_word(&[9, 8, 7, 6, 5]), None, "two batches in a row");
        let empty = StepValues::default();
        assert_eq!(empty.noise_step_word(0), None);
        assert_eq!(empty.sgd_lr_word(0.0), None);
        assert_eq!(empty.ema_decay_word(0.0), None);
        assert_eq!(empty.adam_corrections_word((0.0, 0.0)), None);
        assert_eq!(empty.batch_indices_word(&[]), None);
    }

    #[test]
    fn values_a_launch_could_not_tell_apart_or_place_are_refused() {
        assert!(values().check().is_ok());
        let v = StepValues { draw_keys: vec![[1, 2], [3, 4], [1, 2]], ..values() };
        assert!(v.check().unwrap_err().to_string().contains("share a key"));
        assert!(v.check_placeable().is_ok(), "a replay reads each key from its place");
        let v = StepValues { adam_corrections: vec![(0.25, 0.5), (0.125, 0.5), (0.25, 0.5)], ..values() };
        assert!(v.check().unwrap_err().to_string().contains("equal bias corrections"));
        assert!(v.check_placeable().is_ok());
        let v = StepValues { batch_indices: vec![vec![3, 1], vec![2], vec![3, 1]], ..values() };
        assert!(v.check().unwrap_err().to_string().contains("two of a step's batches are equal"));
        assert!(v.check_placeable().is_ok());
        let v = StepValues { example_weight_rows: vec![0, 2], ..values() };
        assert!(v.check().unwrap_err().to_string().contains("past the weight table"));
        assert!(v.check_placeable().unwrap_err().to_string().contains("past the weight table"));
        let v = StepValues { batch_indices: vec![vec![5], vec![0, 1]], example_weight_rows: vec![0, 1], ..values() };
        assert!(v.check().unwrap_err().to_string().contains("could not tell them apart"));
    }

    #[test]
    fn bias_corrections_are_the_f64_formula() {
        let hp = AdamParams { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-7, weight_decay: 0.0 };
        // At t = 1: lr / (1 − β1) and sqrt(1 − β2), from the f32 hyper-parameters as given.
        let (step, b2) = hp.bias_corrections(1);
        let (beta1, beta2) = (hp.beta1 as f64, hp.beta2 as f64);
        assert!((step as f64 / (hp.lr as f64 / (1.0 - beta1)) - 1.0).abs() < 1e-7, "{step}");
        assert!((b2 as f64 / (1.0 - beta2).sqrt() - 1.0).abs() < 1e-7, "{b2}");
        let (step_size, bias2_sqrt) = hp.bias_corrections(3);
        assert_eq!(step_size, (1e-3f32 as f64 / (1.0 - 0.9f32 as f64 * 0.9f32 as f64 * 0.9f32 as f64)) as f32);
        assert_eq!(bias2_sqrt, (1.0 - (0.999f32 as f64).powi(3)).sqrt() as f32);
        // Far past i32's range the corrections are 1, not garbage from a wrapped exponent.
        assert_eq!(hp.bias_corrections(1 << 40), (1e-3, 1.0));
        assert_eq!(hp.bias_corrections(u64::MAX), (1e-3, 1.0));
    }
}

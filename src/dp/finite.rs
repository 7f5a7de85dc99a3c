//! Refusing a private update that is not finite, without a host sync per step.
//!
//! [`clip_factors`](super::clip::clip_factors) gives an example whose gradient norm is NaN or
//! infinite a NaN factor, and GS-WGAN's sanitiser a NaN row, so such an example makes the whole
//! update NaN instead of entering it unclipped. Each step then leaves a one-element flag on the
//! device, 0 or NaN; a run keeps the flags and reads them together where it reads the device anyway
//! (logging, grids, checkpoints), failing with the first bad step before anything of it is written.
use crate::backend::{ops, BinaryOp, UnaryOp};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// `[1]`: 0 when every element of `tensors` is finite, NaN otherwise (`0·x` is NaN exactly for a
/// NaN or infinite `x`, and a sum of zeros stays 0), computed where the tensors live.
pub fn nonfinite_flag(tensors: &[&Tensor]) -> Result<Tensor> {
    let _range = crate::profile::range("nonfinite_flag");
    let mut flag: Option<Tensor> = None;
    for t in tensors {
        let zeros = ops::unary(UnaryOp::Affine { scale: 0.0, shift: 0.0 }, t)?;
        let summed = ops::sum_to(&zeros, &vec![1; t.rank()])?.reshape(&[1])?;
        flag = Some(match flag {
            None => summed,
            Some(f) => ops::binary(BinaryOp::Add, &f, &summed)?,
        });
    }
    flag.ok_or_else(|| Error::Invalid("a finiteness flag of no tensors".into()))
}

/// Flags kept before they are read: reading them costs one sync however many there are, and past
/// this many they are read anyway, so memory stays bounded whatever the logging interval.
const MAX_PENDING: usize = 1024;

/// The flags of the steps since the last read, each with its step (1-based) and what it covers.
pub struct FiniteChecks {
    pending: Vec<(u64, Tensor)>,
    what: &'static str,
}

impl FiniteChecks {
    /// `what`: the update the flags cover, for the error ("the discriminator's private gradient").
    pub fn new(what: &'static str) -> Self {
        FiniteChecks { pending: Vec::new(), what }
    }

    /// Keeps step `step`'s flag (from [`nonfinite_flag`]); reads all of them if there are many.
    pub fn push(&mut self, step: u64, flag: Tensor) -> Result<()> {
        self.pending.push((step, flag));
        if self.pending.len() >= MAX_PENDING {
            return self.verify();
        }
        Ok(())
    }

    /// Reads the kept flags (one copy to the host) and fails with the first step whose update was
    /// not finite. Call it before writing anything that depends on those steps.
    pub fn verify(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let flags: Vec<&Tensor> = self.pending.iter().map(|(_, f)| f).collect();
        let values = ops::concat(&flags, 0)?.to_vec()?;
        let bad = self.pending.iter().zip(values).find(|(_, v)| !v.is_finite()).map(|((step, _), _)| *step);
        self.pending.clear();
        match bad {
            Some(step) => Err(Error::NonFinite { step, what: self.what.to_string() }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Device;

    fn tensor(values: Vec<f32>) -> Tensor {
        let n = values.len();
        Tensor::from_vec(values, &[1, n], &Device::Cpu).unwrap()
    }

    #[test]
    fn the_first_step_with_a_nan_or_an_infinity_is_named() {
        let finite = tensor(vec![1e30, -3.0, 0.0]);
        assert_eq!(nonfinite_flag(&[&finite, &finite]).unwrap().to_vec().unwrap(), [0.0]);
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            assert!(nonfinite_flag(&[&finite, &tensor(vec![2.0, bad])]).unwrap().item().unwrap().is_nan(), "{bad}");
        }
        let mut checks = FiniteChecks::new("the update");
        for step in 1..=5 {
            let t = if step >= 3 { tensor(vec![f32::NAN]) } else { finite.clone() };
            checks.push(step, nonfinite_flag(&[&t]).unwrap()).unwrap();
        }
        let err = checks.verify().unwrap_err();
        assert!(matches!(err, Error::NonFinite { step: 3, .. }), "{err}");
        assert!(err.to_string().starts_with("step 3: the update holds a NaN"), "{err}");
        assert!(checks.verify().is_ok(), "read flags are not read again");
    }

    /// Flags wait for the caller's read until MAX_PENDING of them are kept; that many are read at
    /// once, so a run that logs rarely still stops at a bad step within MAX_PENDING steps.
    #[test]
    fn flags_are_read_at_the_latest_when_max_pending_are_kept() {
        let nan = nonfinite_flag(&[&tensor(vec![f32::NAN])]).unwrap();
        let mut checks = FiniteChecks::new("the update");
        for step in 1..MAX_PENDING as u64 {
            checks.push(step, nan.clone()).unwrap_or_else(|e| panic!("step {step} read early: {e}"));
        }
        let err = checks.push(MAX_PENDING as u64, nan.clone()).unwrap_err();
        assert!(matches!(err, Error::NonFinite { step: 1, .. }), "{err}");
        assert!(checks.verify().is_ok(), "every kept flag was read");
    }
}

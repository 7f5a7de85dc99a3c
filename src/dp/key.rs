//! A run's secret key: the one source of every random choice the privacy proof relies on (the
//! Gaussian noise, which records form a batch, GS-WGAN's choice of discriminator).
//!
//! The proof assumes those choices are unknown to whoever sees the output. A key derived from the
//! run's `--seed` (a 64-bit number that runs print, reproductions fix and results quote) would let
//! anyone replay every batch and every noise draw under both neighbouring data sets, and ε would be
//! infinite. So a private run draws 256 bits from the operating system's CSPRNG when it starts
//! and keeps them only in its checkpoint (the run directory is private), never in config.json, a
//! log or anything released; a resumed run reads them back and continues bit for bit.
//!
//! `--replayable-noise` derives the key from the seed instead, for research replays and tests: the
//! run then says, everywhere its results go, that it is not private.
//!
//! The seed keeps governing only what the proof does not rely on: initial weights, latent codes and
//! labels of generated batches, grids, released samples.
use std::fmt;

use rand::rngs::OsRng;
use rand::{Rng, SeedableRng, TryRngCore};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use super::noise::{NoiseMode, NoiseSource};
use crate::error::{Error, Result};

/// What a secret stream is used for; each has its own subkey, so draws for one never shift or
/// reveal another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum SecretPurpose {
    /// The Gaussian noise (the subkey is the noise generator's key).
    Noise = 1,
    /// Which records form a batch (Poisson membership, or the permutation of a shuffled epoch).
    Batches = 2,
    /// GS-WGAN's choice of discriminator at each iteration.
    Selection = 3,
}

/// Where a run's key comes from, as its config.json records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeySource {
    /// Drawn from the operating system when the run started; kept only in its checkpoint.
    #[serde(rename = "secret")]
    Secret,
    /// `--replayable-noise`: derived from the seed, so the run is not private.
    #[serde(rename = "replayable-from-seed-not-private")]
    Replayable,
}

impl KeySource {
    pub fn from_flag(replayable_noise: bool) -> Self {
        if replayable_noise {
            KeySource::Replayable
        } else {
            KeySource::Secret
        }
    }

    pub fn is_private(self) -> bool {
        self == KeySource::Secret
    }

    /// What a run with this key must say wherever its results go, if anything.
    pub fn warning(self) -> Option<&'static str> {
        match self {
            KeySource::Secret => None,
            KeySource::Replayable => Some(
                "NOT PRIVATE: --replayable-noise derived the noise and batches from the seed; anyone who knows the seed can \
                 replay them, so the (ε, δ) guarantee does not hold",
            ),
        }
    }

    /// The key of a new run: drawn from the OS, or the seed's replayable one.
    pub fn new_key(self, seed: u64) -> Result<RunKey> {
        RunKey::for_run(seed, self == KeySource::Replayable)
    }

    /// Checks that a checkpoint's key is of this kind (a replayable run's key is the seed's).
    pub fn check(self, key: &RunKey, seed: u64) -> Result<()> {
        let matches = match self {
            KeySource::Secret => !key.is_replayable(),
            KeySource::Replayable => *key == RunKey::replayable(seed),
        };
        if matches {
            Ok(())
        } else {
            Err(Error::Invalid(format!("the checkpoint's run key is not the {self:?} key config.json records")))
        }
    }
}

/// ChaCha20's stream for deriving a replayable key from a seed: distinct from the streams
/// `train::replay::stream` derives public keys from (1 to 5) and from the seed's stream 0, which
/// initialises weights, so a replayable key is never the first bits of any public stream.
const REPLAYABLE_KEY_STREAM: u64 = 0x6470_6761_6e2d_6b65; // "dpgan-ke"

/// A run's 256-bit secret. `Debug` never prints it; [`RunKey::to_hex`] is for the checkpoint only.
#[derive(Clone, PartialEq, Eq)]
pub struct RunKey {
    bytes: [u8; 32],
    replayable: bool,
}

impl fmt::Debug for RunKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunKey").field("replayable", &self.replayable).finish_non_exhaustive()
    }
}

impl RunKey {
    /// 256 bits from the operating system's CSPRNG.
    pub fn generate() -> Result<Self> {
        let mut bytes = [0u8; 32];
        OsRng
            .try_fill_bytes(&mut bytes)
            .map_err(|e| Error::Invalid(format!("cannot draw the run's secret key from the operating system: {e}")))?;
        Ok(RunKey { bytes, replayable: false })
    }

    /// The key `--replayable-noise` uses: a function of the seed, so anyone who knows the seed can
    /// replay the run's noise and batches. Not private.
    pub fn replayable(seed: u64) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        rng.set_stream(REPLAYABLE_KEY_STREAM);
        RunKey { bytes: rng.random(), replayable: true }
    }

    /// A fresh secret key, or the seed's replayable one.
    pub fn for_run(seed: u64, replayable: bool) -> Result<Self> {
        if replayable {
            Ok(Self::replayable(seed))
        } else {
            Self::generate()
        }
    }

    /// Whether the key is derived from the seed (and the run therefore not private).
    pub fn is_replayable(&self) -> bool {
        self.replayable
    }

    /// The stream for `purpose` at `index` (a step, an epoch, an iteration).
    pub fn stream(&self, purpose: SecretPurpose, index: u64) -> ChaCha20Rng {
        let mut rng = ChaCha20Rng::from_seed(self.subkey(purpose));
        rng.set_stream(index);
        rng
    }

    /// The run's noise generator, keyed by the noise subkey.
    pub fn noise(&self, mode: NoiseMode) -> NoiseSource {
        NoiseSource::from_key(self.subkey(SecretPurpose::Noise), mode)
    }

    fn subkey(&self, purpose: SecretPurpose) -> [u8; 32] {
        let mut keys = ChaCha20Rng::from_seed(self.bytes);
        keys.set_stream(purpose as u64);
        keys.random()
    }

    /// The key as 64 hex digits, with a `replayable:` prefix for a seed-derived key: the form a
    /// checkpoint stores.
    pub fn to_hex(&self) -> String {
        let hex: String = self.bytes.iter().map(|b| format!("{b:02x}")).collect();
        if self.replayable {
            format!("replayable:{hex}")
        } else {
            hex
        }
    }

    /// Reads [`RunKey::to_hex`]'s form back.
    pub fn from_hex(text: &str) -> Result<Self> {
        let (replayable, hex) = match text.strip_prefix("replayable:") {
            Some(hex) => (true, hex),
            None => (false, text),
        };
        let bad = || Error::Invalid("the checkpoint's run key is not 64 hex digits".into());
        if hex.len() != 64 || !hex.is_ascii() {
            return Err(bad());
        }
        let mut bytes = [0u8; 32];
        for (b, pair) in bytes.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| bad())?;
            *b = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
        }
        Ok(RunKey { bytes, replayable })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::replay::{stream, Purpose};

    #[test]
    fn generated_keys_differ_and_round_trip_through_hex() {
        let (a, b) = (RunKey::generate().unwrap(), RunKey::generate().unwrap());
        assert_ne!(a, b);
        assert!(!a.is_replayable());
        assert_eq!(RunKey::from_hex(&a.to_hex()).unwrap(), a);
        let r = RunKey::replayable(3);
        assert_eq!(RunKey::from_hex(&r.to_hex()).unwrap(), r);
        assert!(RunKey::from_hex("00").is_err());
        assert!(RunKey::from_hex(&"g".repeat(64)).is_err());
    }

    #[test]
    fn debug_says_the_kind_of_key_and_not_the_key() {
        let key = RunKey::replayable(1);
        let shown = format!("{key:?}");
        assert!(!shown.contains(&key.to_hex()[11..27]), "{shown}");
        assert!(shown.contains("replayable: true"), "{shown}");
        assert!(format!("{:?}", RunKey::generate().unwrap()).contains("replayable: false"));
    }

    #[test]
    fn a_checkpoint_key_must_be_the_kind_config_records() {
        let (secret, seed) = (RunKey::generate().unwrap(), 3);
        assert!(KeySource::Secret.check(&secret, seed).is_ok());
        assert!(KeySource::Replayable.check(&RunKey::replayable(seed), seed).is_ok());
        // A secret run never resumes on a key anyone with the seed can rebuild, and a replayable
        // run's key is its own seed's.
        assert!(KeySource::Secret.check(&RunKey::replayable(seed), seed).is_err());
        assert!(KeySource::Replayable.check(&secret, seed).is_err());
        assert!(KeySource::Replayable.check(&RunKey::replayable(seed + 1), seed).is_err());
    }

    #[test]
    fn replayable_keys_follow_the_seed_and_no_public_stream() {
        assert_eq!(RunKey::replayable(7), RunKey::replayable(7));
        assert_ne!(RunKey::replayable(7), RunKey::replayable(8));
        let key = RunKey::replayable(7).bytes;
        // Not the first bits of the seed's stream 0 (initial weights) or of any public purpose.
        assert_ne!(key, ChaCha20Rng::seed_from_u64(7).random::<[u8; 32]>());
        for p in [Purpose::Init, Purpose::Batches, Purpose::Generator, Purpose::Grid, Purpose::Sample] {
            assert_ne!(key, stream(7, p, 0).random::<[u8; 32]>());
        }
    }

    #[test]
    fn purposes_and_indices_have_their_own_streams() {
        let key = RunKey::generate().unwrap();
        let draw = |p, i| key.stream(p, i).random::<u64>();
        assert_eq!(draw(SecretPurpose::Batches, 4), draw(SecretPurpose::Batches, 4));
        assert_ne!(draw(SecretPurpose::Batches, 4), draw(SecretPurpose::Batches, 5));
        assert_ne!(draw(SecretPurpose::Batches, 4), draw(SecretPurpose::Selection, 4));
    }
}

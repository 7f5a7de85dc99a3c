//! Gaussian noise that is a pure function of `(key, step, tensor index, element)` and identical on
//! the CPU and the GPU. This file is the reference: `kernels/rng.cuh` computes the same bits.
//!
//! A [`NoiseSource`] holds a 256-bit key (the run's secret noise subkey, see [`super::key`]) and
//! hands out one [`NoiseKey`] per noised tensor. The normal added to element `e` of a tensor is a
//! pure function of `(key, step, tensor index, e)` ([`standard_normal_at`]): no generator state
//! lives on the device, a kernel can compute any element in any order, and a run resumes from the
//! source's serialised position.
//!
//! * [`NoiseMode::Fast`]: Philox4x32-10 (Salmon et al., SC'11) with counter
//!   `(e / 2, tensor index, step low, step high)` and the key's first two words; its four words
//!   make two 53-bit uniforms and Box–Muller in f64 gives two normals, element `e` taking number
//!   `e mod 2`, rounded to f32. 53-bit uniforms give the normal its tails: |z| reaches 8.6, where
//!   32-bit uniforms stop at 6.8 (beyond which a Gaussian mechanism's privacy loss is infinite).
//! * [`NoiseMode::Secure`]: the ChaCha20 block function of RFC 8439 (key, block counter `e / 2`,
//!   nonce `(tensor index, step low, step high)`) as the uniform source; see
//!   [`secure_normal_from_words`] for the guard against floating-point attacks.
use serde::{Deserialize, Serialize};

/// Which generator draws the uniforms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NoiseMode {
    /// Counter-based Philox4x32-10: fast, statistically sound, not cryptographic.
    Fast,
    /// ChaCha20 keystream and a sampler hardened against floating-point attacks.
    Secure,
}

/// Everything that determines the noise of one tensor: the generator, its key, and the
/// `(step, tensor index)` position that makes each tensor's noise fresh. Secret, like the source.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct NoiseKey {
    pub mode: NoiseMode,
    /// ChaCha20's 256-bit key; Philox uses words 0 and 1.
    pub key: [u32; 8],
    pub step: u64,
    pub tensor_index: u32,
}

impl NoiseKey {
    /// A Philox key from one 256-bit draw of a public stream, for public randomness computed where
    /// it is used (latent codes, labels, interpolation weights): never for noise that protects
    /// privacy, whose keys come from the run's secret key.
    pub fn public<R: rand::Rng + ?Sized>(rng: &mut R) -> Self {
        NoiseKey { mode: NoiseMode::Fast, key: rng.random(), step: 0, tensor_index: 0 }
    }
}

/// The most elements one key can noise: Philox's and ChaCha20's block counters are both `e / 2`,
/// 32 bits, so beyond 2³³ elements noise would repeat.
pub const MAX_NOISE_ELEMENTS: u64 = 1 << 33;

/// A run's noise stream: its key and the position reached. The key is secret in both modes (who
/// knows it can subtract the noise): it is never serialised; a run stores its
/// [`RunKey`](super::key::RunKey) in the checkpoint and derives the source from it again.
#[derive(Clone, PartialEq, Eq)]
pub struct NoiseSource {
    mode: NoiseMode,
    key: [u32; 8],
    step: u64,
    next_tensor: u32,
}

impl std::fmt::Debug for NoiseSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoiseSource").field("mode", &self.mode).field("step", &self.step).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for NoiseKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoiseKey")
            .field("mode", &self.mode)
            .field("step", &self.step)
            .field("tensor_index", &self.tensor_index)
            .finish_non_exhaustive()
    }
}

impl NoiseSource {
    /// A source keyed by a seed-derived [`RunKey::replayable`](super::key::RunKey::replayable): for
    /// tests and benchmarks, whose noise need not be secret. A private run keys its source from its
    /// secret [`RunKey`](super::key::RunKey).
    pub fn from_seed(seed: u64, mode: NoiseMode) -> Self {
        super::key::RunKey::replayable(seed).noise(mode)
    }

    /// A source with a full 256-bit key (little-endian words, as RFC 8439 reads a key).
    pub fn from_key(bytes: [u8; 32], mode: NoiseMode) -> Self {
        let mut key = [0u32; 8];
        for (w, chunk) in key.iter_mut().zip(bytes.chunks_exact(4)) {
            *w = u32::from_le_bytes(chunk.try_into().expect("4-byte chunk"));
        }
        NoiseSource { mode, key, step: 0, next_tensor: 0 }
    }

    pub fn mode(&self) -> NoiseMode {
        self.mode
    }
    /// The step whose keys [`NoiseSource::next_key`] hands out.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The key of tensor `tensor_index` at `step`, without moving the source.
    pub fn key_at(&self, step: u64, tensor_index: u32) -> NoiseKey {
        NoiseKey { mode: self.mode, key: self.key, step, tensor_index }
    }

    /// The next tensor's key in the current step. Panics after 2³² tensors in one step rather than
    /// reuse noise.
    pub fn next_key(&mut self) -> NoiseKey {
        let k = self.key_at(self.step, self.next_tensor);
        self.next_tensor = self.next_tensor.checked_add(1).expect("more than 2^32 noised tensors in one step");
        k
    }

    /// Moves to the next step; its tensors count from 0 again.
    pub fn next_step(&mut self) {
        self.step = self.step.checked_add(1).expect("step counter overflow");
        self.next_tensor = 0;
    }
}

const PHILOX_M0: u32 = 0xD251_1F53;
const PHILOX_M1: u32 = 0xCD9E_8D57;
const PHILOX_W0: u32 = 0x9E37_79B9;
const PHILOX_W1: u32 = 0xBB67_AE85;

/// Philox4x32 with 10 rounds (Random123's `philox4x32_R(10, ctr, key)`).
pub fn philox4x32_10(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (ctr, key);
    for round in 0..10 {
        if round > 0 {
            k = [k[0].wrapping_add(PHILOX_W0), k[1].wrapping_add(PHILOX_W1)];
        }
        let p0 = PHILOX_M0 as u64 * c[0] as u64;
        let p1 = PHILOX_M1 as u64 * c[2] as u64;
        c = [(p1 >> 32) as u32 ^ c[1] ^ k[0], p1 as u32, (p0 >> 32) as u32 ^ c[3] ^ k[1], p0 as u32];
    }
    c
}

/// The ChaCha20 block function of RFC 8439 §2.3: 20 rounds over constants, key, a 32-bit block
/// counter and a 96-bit nonce, plus the input state. Returns the 16 output words (serialised
/// little-endian they are the keystream block).
pub fn chacha20_block(key: &[u32; 8], counter: u32, nonce: [u32; 3]) -> [u32; 16] {
    let mut init = [0u32; 16];
    init[..4].copy_from_slice(&[0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574]);
    init[4..12].copy_from_slice(key);
    init[12] = counter;
    init[13..].copy_from_slice(&nonce);
    let mut s = init;
    let quarter = |s: &mut [u32; 16], a: usize, b: usize, c: usize, d: usize| {
        s[a] = s[a].wrapping_add(s[b]);
        s[d] = (s[d] ^ s[a]).rotate_left(16);
        s[c] = s[c].wrapping_add(s[d]);
        s[b] = (s[b] ^ s[c]).rotate_left(12);
        s[a] = s[a].wrapping_add(s[b]);
        s[d] = (s[d] ^ s[a]).rotate_left(8);
        s[c] = s[c].wrapping_add(s[d]);
        s[b] = (s[b] ^ s[c]).rotate_left(7);
    };
    for _ in 0..10 {
        quarter(&mut s, 0, 4, 8, 12);
        quarter(&mut s, 1, 5, 9, 13);
        quarter(&mut s, 2, 6, 10, 14);
        quarter(&mut s, 3, 7, 11, 15);
        quarter(&mut s, 0, 5, 10, 15);
        quarter(&mut s, 1, 6, 11, 12);
        quarter(&mut s, 2, 7, 8, 13);
        quarter(&mut s, 3, 4, 9, 14);
    }
    for (o, i) in s.iter_mut().zip(init) {
        *o = o.wrapping_add(i);
    }
    s
}

/// 53 random bits as a uniform in (0, 1): `(⌊x / 2¹¹⌋ + 0.5)·2⁻⁵³`, the finest grid an f64 in
/// [1/2, 1) can hold.
pub fn uniform_from_u64(x: u64) -> f64 {
    ((x >> 11) as f64 + 0.5) * (1.0 / 9_007_199_254_740_992.0)
}

/// The uniform of two generator words, `lo` the low half of its 64 bits (as the kernels read a
/// pair). Joined through bytes: the halves do not overlap, so `|`, `^` and `+` would all agree.
fn uniform_from_words(lo: u32, hi: u32) -> f64 {
    let mut bytes = [0u8; 8];
    bytes[..4].copy_from_slice(&lo.to_le_bytes());
    bytes[4..].copy_from_slice(&hi.to_le_bytes());
    uniform_from_u64(u64::from_le_bytes(bytes))
}

/// Box–Muller in f64: two uniforms in (0, 1) to two independent standard normals `(r cos θ, r sin θ)`
/// with `r = sqrt(−2 ln u1)`, `θ = 2π u2`. The kernels evaluate the same expression in the same
/// order, without fused multiply-adds.
pub fn box_muller(u1: f64, u2: f64) -> (f64, f64) {
    let r = (-2.0 * u1.ln()).sqrt();
    let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
    (r * c, r * s)
}

/// Fast mode: both normals of a Philox block, those of its even and odd element: words 0-1 and 2-3
/// as two 53-bit uniforms, one Box–Muller pair.
pub fn fast_normals_from_words(w: [u32; 4]) -> (f64, f64) {
    box_muller(uniform_from_words(w[0], w[1]), uniform_from_words(w[2], w[3]))
}

/// Secure mode: one standard normal from 8 ChaCha20 words (four 53-bit uniforms).
///
/// The guard, after Opacus' `secure_mode` (Holohan & Braghin, "Secure Random Sampling in
/// Differential Privacy", ESORICS 2021): a Box–Muller sample computed in floating point takes
/// values on an uneven, partly predictable grid, and Mironov-style attacks read the secret back
/// from which grid points occur. Here (1) the uniforms come from a cryptographic keystream, so
/// nothing about them is predictable without the key; (2) each uniform has 53 random bits, the
/// full resolution of an f64 in [1/2, 1), so the log and the angle see no coarser lattice than
/// f64 itself; (3) the normal is the sum of four independent Box–Muller normals divided by 2
/// (again N(0, 1)), which smears any single sample's floating-point pattern over a convolution
/// of four. What this does not fix: the final f32 value `x + σ·z` is rounded to f32's grid, as in
/// Opacus; an exact discrete or snapping mechanism would be needed for that.
pub fn secure_normal_from_words(w: &[u32]) -> f64 {
    let u = |k: usize| uniform_from_words(w[2 * k], w[2 * k + 1]);
    let (z0, z1) = box_muller(u(0), u(1));
    let (z2, z3) = box_muller(u(2), u(3));
    ((z0 + z1) + (z2 + z3)) * 0.5
}

/// The class in `0..classes` that a Philox `key` assigns to row `row`: Philox block `row` (the
/// counter as for the normals), its first two words as a 64-bit u, ⌊u·classes / 2⁶⁴⌋. Each class
/// has probability 1/classes within classes/2⁶⁴ (5e-19 for 10). For public draws (generator labels),
/// computed where they are used: `kernels/rng.cuh` has the same function.
pub fn uniform_class_at(key: &NoiseKey, row: u64, classes: u32) -> u32 {
    let (step_lo, step_hi) = (key.step as u32, (key.step >> 32) as u32);
    let w = philox4x32_10([row as u32, key.tensor_index, step_lo, step_hi], [key.key[0], key.key[1]]);
    let u = ((w[1] as u64) << 32) | w[0] as u64;
    ((u as u128 * classes as u128) >> 64) as u32
}

/// The uniform in [0, 1) that a Philox `key` assigns to element `index`: Philox block `index` (the
/// counter as for the classes), the top 24 bits of its first word times 2⁻²⁴, so every value is a
/// multiple of 2⁻²⁴ and exact in f32. Public draws (WGAN-GP's interpolation weights), computed
/// where they are used: `kernels/rng.cuh` has the same function.
pub fn uniform_unit_at(key: &NoiseKey, index: u64) -> f32 {
    let (step_lo, step_hi) = (key.step as u32, (key.step >> 32) as u32);
    let w = philox4x32_10([index as u32, key.tensor_index, step_lo, step_hi], [key.key[0], key.key[1]]);
    (w[0] >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// The standard normal (rounded to f32) that `key` assigns to element `index` of its tensor.
pub fn standard_normal_at(key: &NoiseKey, index: u64) -> f32 {
    let (step_lo, step_hi) = (key.step as u32, (key.step >> 32) as u32);
    match key.mode {
        NoiseMode::Fast => {
            let w = philox4x32_10([(index / 2) as u32, key.tensor_index, step_lo, step_hi], [key.key[0], key.key[1]]);
            let (z_even, z_odd) = fast_normals_from_words(w);
            (if index.is_multiple_of(2) { z_even } else { z_odd }) as f32
        }
        NoiseMode::Secure => {
            let w = chacha20_block(&key.key, (index / 2) as u32, [key.tensor_index, step_lo, step_hi]);
            let half = (index % 2) as usize * 8;
            secure_normal_from_words(&w[half..half + 8]) as f32
        }
    }
}

/// The standard normals of elements `2·block` and `2·block + 1`: one generator block serves both
/// (Philox's one Box–Muller pair, ChaCha20's two halves), so it is computed once. Bit for bit
/// [`standard_normal_at`] of each.
pub fn standard_normal_pair_at(key: &NoiseKey, block: u64) -> [f32; 2] {
    let (step_lo, step_hi) = (key.step as u32, (key.step >> 32) as u32);
    match key.mode {
        NoiseMode::Fast => {
            let w = philox4x32_10([block as u32, key.tensor_index, step_lo, step_hi], [key.key[0], key.key[1]]);
            let (z_cos, z_sin) = fast_normals_from_words(w);
            [z_cos as f32, z_sin as f32]
        }
        NoiseMode::Secure => {
            let w = chacha20_block(&key.key, block as u32, [key.tensor_index, step_lo, step_hi]);
            [secure_normal_from_words(&w[..8]) as f32, secure_normal_from_words(&w[8..]) as f32]
        }
    }
}

/// Elements below which [`standard_normals`] stays on one thread.
const PARALLEL_NORMALS: usize = 1 << 16;

/// The standard normals of elements `0..n` of `key`'s tensor, each exactly [`standard_normal_at`]:
/// the CPU backend's noise, a generator block per pair of elements, split over the cores (every
/// element is a pure function of its index, so the split changes no bit).
pub fn standard_normals(key: &NoiseKey, n: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; n];
    let fill = |chunk: &mut [f32], first_block: u64| {
        for (i, pair) in chunk.chunks_mut(2).enumerate() {
            let z = standard_normal_pair_at(key, first_block + i as u64);
            pair.copy_from_slice(&z[..pair.len()]);
        }
    };
    let threads = std::thread::available_parallelism().map_or(1, |c| c.get());
    if n < PARALLEL_NORMALS || threads == 1 {
        fill(&mut out, 0);
        return out;
    }
    // Chunks of an even length, so that each starts at a block boundary.
    let per_thread = n.div_ceil(threads).next_multiple_of(2);
    std::thread::scope(|s| {
        for (t, chunk) in out.chunks_mut(per_thread).enumerate() {
            s.spawn(move || fill(chunk, (t * per_thread / 2) as u64));
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a log or a panic message shows of the noise: the position (mode, step, tensor), never
    /// a word of the key, in decimal or hex.
    #[test]
    fn debug_output_shows_the_position_and_hides_the_key() {
        let source = NoiseSource::from_seed(17, NoiseMode::Secure);
        let key = source.key_at(7, 3);
        let (shown_source, shown_key) = (format!("{source:?}"), format!("{key:?}"));
        assert!(shown_source.starts_with("NoiseSource") && shown_source.contains("mode: Secure"), "{shown_source}");
        assert!(
            shown_key.contains("step: 7") && shown_key.contains("tensor_index: 3") && shown_key.contains("mode: Secure"),
            "{shown_key}"
        );
        for word in key.key {
            for text in [&shown_source, &shown_key] {
                assert!(!text.contains(&word.to_string()) && !text.contains(&format!("{word:x}")), "key word {word:#x} shown in {text}");
            }
        }
    }
}

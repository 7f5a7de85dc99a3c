//! The generators; input concat(z, onehot(y)) `[G, B, 20]`, output images in [0, 1] `[G, B, 784]`.
//! * DCGAN (1,114,305 parameters): linear 20→4096 → [256,4,4] → ReLU → pixel norm → convT 256→128
//!   5×5 (4→8) → crop 7×7 → ReLU → pixel norm → convT 128→64 5×5 (7→11) → ReLU → pixel norm →
//!   convT 64→1 8×8 s2 (11→28) → sigmoid.
//! * ResNet (3,826,177, the default): SN linear 20→4096 → [256,4,4] → ReLU → pixel norm → three
//!   up-blocks (4→8→16→32) → SN conv 256→1 3×3 p0 (32→30) → sigmoid → crop 28×28.
use rand::Rng;

use super::{CLASSES, LATENT, PIXELS, PIXEL_NORM_EPS, SIDE};
use crate::autograd::Tape;
use crate::error::{ensure_shape, Error, Result};
use crate::nn::{prefixed, ConvTranspose2d, Entry, Linear, Module, NormalizedWeight, SnConv2d, SnLinear, SpectralNorm};
use crate::tensor::{Device, Tensor};

/// Which generator a run trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeneratorArch {
    Dcgan,
    Resnet,
}

impl std::str::FromStr for GeneratorArch {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "dcgan" => Ok(GeneratorArch::Dcgan),
            "resnet" => Ok(GeneratorArch::Resnet),
            other => Err(Error::Invalid(format!("unknown generator {other:?}: use resnet or dcgan"))),
        }
    }
}

#[derive(Clone, Debug)]
pub enum Generator {
    // Boxed: the variants' layer structs differ a lot in size (clippy's large_enum_variant).
    Dcgan(Box<DcganGenerator>),
    Resnet(Box<ResnetGenerator>),
}

impl Generator {
    pub fn new<R: Rng>(arch: GeneratorArch, groups: usize, base: usize, rng: &mut R, device: &Device) -> Result<Self> {
        Ok(match arch {
            GeneratorArch::Dcgan => Generator::Dcgan(Box::new(DcganGenerator::new(groups, base, rng, device)?)),
            GeneratorArch::Resnet => Generator::Resnet(Box::new(ResnetGenerator::new(groups, base, rng, device)?)),
        })
    }

    pub fn arch(&self) -> GeneratorArch {
        match self {
            Generator::Dcgan(_) => GeneratorArch::Dcgan,
            Generator::Resnet(_) => GeneratorArch::Resnet,
        }
    }

    /// Images `[G, B, 784]` in [0, 1] from z `[G, B, 10]` and one-hot labels `[G, B, 10]`. The
    /// ResNet generator's spectral-norm vectors update on every call.
    pub fn forward(&mut self, tape: &Tape, z: &Tensor, labels: &Tensor) -> Result<Tensor> {
        let _range = crate::profile::range("g_forward");
        ensure_shape!(
            z.rank() == 3 && z.shape()[2] == LATENT && labels.rank() == 3 && labels.shape()[2] == CLASSES,
            "gs-wgan generator",
            "z {:?} must be [G, B, {LATENT}] and labels {:?} [G, B, {CLASSES}]",
            z.shape(),
            labels.shape()
        );
        let input = tape.concat(&[z, labels], 2)?;
        let (g, b) = (z.shape()[0], z.shape()[1]);
        let image = match self {
            Generator::Dcgan(m) => m.forward(tape, &input)?,
            Generator::Resnet(m) => m.forward(tape, &input)?,
        };
        tape.reshape(&image, &[g, b, PIXELS])
    }
}

/// `[G, B, c·16]` → `[G, B, c, 4, 4]` → ReLU → pixel norm: both generators' stem.
fn stem(tape: &Tape, h: &Tensor, channels: usize) -> Result<Tensor> {
    let (g, b) = (h.shape()[0], h.shape()[1]);
    let x = tape.reshape(h, &[g, b, channels, 4, 4])?;
    tape.pixel_norm(&tape.relu(&x)?, PIXEL_NORM_EPS)
}

#[derive(Clone, Debug)]
pub struct DcganGenerator {
    pub linear: Linear,
    pub deconv1: ConvTranspose2d,
    pub deconv2: ConvTranspose2d,
    pub deconv3: ConvTranspose2d,
}

impl DcganGenerator {
    /// Widths 4·base, 2·base, base (64 is the published model).
    pub fn new<R: Rng>(groups: usize, base: usize, rng: &mut R, device: &Device) -> Result<Self> {
        Ok(DcganGenerator {
            linear: Linear::pytorch_default(groups, LATENT + CLASSES, 4 * base * 16, rng, device)?,
            deconv1: ConvTranspose2d::new(groups, 4 * base, 2 * base, 5, 1, 0, rng, device)?,
            deconv2: ConvTranspose2d::new(groups, 2 * base, base, 5, 1, 0, rng, device)?,
            deconv3: ConvTranspose2d::new(groups, base, 1, 8, 2, 0, rng, device)?,
        })
    }

    /// `[G, B, 1, 28, 28]` from the concatenated input `[G, B, 20]`.
    fn forward(&self, tape: &Tape, input: &Tensor) -> Result<Tensor> {
        let channels = self.linear.weight.shape()[1] / 16;
        let x = stem(tape, &tape.linear(input, &self.linear.weight, Some(&self.linear.bias))?, channels)?;
        let (x, _) = self.deconv1.forward(tape, &x)?;
        let x = tape.pixel_norm(&tape.relu(&tape.crop(&x, 7, 7)?)?, PIXEL_NORM_EPS)?;
        let (x, _) = self.deconv2.forward(tape, &x)?;
        let x = tape.pixel_norm(&tape.relu(&x)?, PIXEL_NORM_EPS)?;
        let (x, _) = self.deconv3.forward(tape, &x)?;
        tape.sigmoid(&x)
    }
}

impl Module for DcganGenerator {
    fn entries(&self) -> Vec<Entry<&Tensor>> {
        let mut e = prefixed("linear", self.linear.entries());
        e.extend(prefixed("deconv1", self.deconv1.entries()));
        e.extend(prefixed("deconv2", self.deconv2.entries()));
        e.extend(prefixed("deconv3", self.deconv3.entries()));
        e
    }
    fn entries_mut(&mut self) -> Vec<Entry<&mut Tensor>> {
        let DcganGenerator { linear, deconv1, deconv2, deconv3 } = self;
        let mut e = prefixed("linear", linear.entries_mut());
        e.extend(prefixed("deconv1", deconv1.entries_mut()));
        e.extend(prefixed("deconv2", deconv2.entries_mut()));
        e.extend(prefixed("deconv3", deconv3.entries_mut()));
        e
    }
}

/// Residual r = pixelnorm(x) → upsample ×2 → SN conv 3×3 p1 → pixel norm → ReLU → SN conv 3×3 p1;
/// shortcut = SN conv 1×1 (upsample ×2 (x)); output r + shortcut.
#[derive(Clone, Debug)]
pub struct UpBlock {
    pub conv1: SnConv2d,
    pub conv2: SnConv2d,
    pub shortcut: SnConv2d,
}

impl UpBlock {
    pub fn new<R: Rng>(groups: usize, channels: usize, rng: &mut R, device: &Device) -> Result<Self> {
        Ok(UpBlock {
            conv1: SnConv2d::new(groups, channels, channels, 3, 1, 1, rng, device)?,
            conv2: SnConv2d::new(groups, channels, channels, 3, 1, 1, rng, device)?,
            shortcut: SnConv2d::new(groups, channels, channels, 1, 1, 0, rng, device)?,
        })
    }

    pub fn forward(&mut self, tape: &Tape, x: &Tensor) -> Result<Tensor> {
        let weights = SpectralNorm::weights(tape, &mut self.spectral_norms())?;
        self.forward_with(tape, x, weights.try_into().map_err(|_| Error::Invalid("three layers, three weights".into()))?)
    }

    /// The block's spectral norms in the order [`UpBlock::forward_with`] takes their weights.
    fn spectral_norms(&mut self) -> [&mut SpectralNorm; 3] {
        [&mut self.conv1.sn, &mut self.conv2.sn, &mut self.shortcut.sn]
    }

    /// The block with its three weights already normalised (conv1, conv2, shortcut).
    fn forward_with(&self, tape: &Tape, x: &Tensor, [w1, w2, w_shortcut]: [NormalizedWeight; 3]) -> Result<Tensor> {
        let r = tape.upsample_nearest2x(&tape.pixel_norm(x, PIXEL_NORM_EPS)?)?;
        let (r, _) = self.conv1.forward_with(tape, &r, w1)?;
        let r = tape.relu(&tape.pixel_norm(&r, PIXEL_NORM_EPS)?)?;
        let (r, _) = self.conv2.forward_with(tape, &r, w2)?;
        let (shortcut, _) = self.shortcut.forward_with(tape, &tape.upsample_nearest2x(x)?, w_shortcut)?;
        tape.add(&r, &shortcut)
    }
}

impl Module for UpBlock {
    fn entries(&self) -> Vec<Entry<&Tensor>> {
        let mut e = prefixed("conv1", self.conv1.entries());
        e.extend(prefixed("conv2", self.conv2.entries()));
        e.extend(prefixed("shortcut", self.shortcut.entries()));
        e
    }
    fn entries_mut(&mut self) -> Vec<Entry<&mut Tensor>> {
        let UpBlock { conv1, conv2, shortcut } = self;
        let mut e = prefixed("conv1", conv1.entries_mut());
        e.extend(prefixed("conv2", conv2.entries_mut()));
        e.extend(prefixed("shortcut", shortcut.entries_mut()));
        e
    }
}

#[derive(Clone, Debug)]
pub struct ResnetGenerator {
    pub linear: SnLinear,
    pub blocks: [UpBlock; 3],
    pub output: SnConv2d,
}

impl ResnetGenerator {
    /// 4·base channels throughout (256 in the published model).
    pub fn new<R: Rng>(groups: usize, base: usize, rng: &mut R, device: &Device) -> Result<Self> {
        let channels = 4 * base;
        Ok(ResnetGenerator {
            linear: SnLinear::new(groups, LATENT + CLASSES, channels * 16, rng, device)?,
            blocks: [
                UpBlock::new(groups, channels, rng, device)?,
                UpBlock::new(groups, channels, rng, device)?,
                UpBlock::new(groups, channels, rng, device)?,
            ],
            output: SnConv2d::new(groups, channels, 1, 3, 1, 0, rng, device)?,
        })
    }

    /// All 11 spectral norms' power iterations run first, in the same launches.
    fn forward(&mut self, tape: &Tape, input: &Tensor) -> Result<Tensor> {
        let channels = self.output.sn.weight_orig.shape()[2];
        let ResnetGenerator { linear, blocks, output } = self;
        let mut norms = vec![&mut linear.sn];
        for block in blocks.iter_mut() {
            norms.extend(block.spectral_norms());
        }
        norms.push(&mut output.sn);
        let mut weights = SpectralNorm::weights(tape, &mut norms)?.into_iter();
        let mut next = || weights.next().ok_or_else(|| Error::Invalid("a spectral norm without its weight".into()));
        let (h, _) = linear.forward_with(tape, input, next()?)?;
        let mut x = stem(tape, &h, channels)?;
        for block in blocks.iter() {
            x = block.forward_with(tape, &x, [next()?, next()?, next()?])?;
        }
        let (x, _) = output.forward_with(tape, &x, next()?)?;
        tape.crop(&tape.sigmoid(&x)?, SIDE, SIDE)
    }
}

impl Module for ResnetGenerator {
    fn entries(&self) -> Vec<Entry<&Tensor>> {
        let mut e = prefixed("linear", self.linear.entries());
        for (i, block) in self.blocks.iter().enumerate() {
            e.extend(prefixed(&format!("blocks.{i}"), block.entries()));
        }
        e.extend(prefixed("output", self.output.entries()));
        e
    }
    fn entries_mut(&mut self) -> Vec<Entry<&mut Tensor>> {
        let ResnetGenerator { linear, blocks, output } = self;
        let mut e = prefixed("linear", linear.entries_mut());
        for (i, block) in blocks.iter_mut().enumerate() {
            e.extend(prefixed(&format!("blocks.{i}"), block.entries_mut()));
        }
        e.extend(prefixed("output", output.entries_mut()));
        e
    }
}

impl Module for Generator {
    fn entries(&self) -> Vec<Entry<&Tensor>> {
        match self {
            Generator::Dcgan(m) => m.entries(),
            Generator::Resnet(m) => m.entries(),
        }
    }
    fn entries_mut(&mut self) -> Vec<Entry<&mut Tensor>> {
        match self {
            Generator::Dcgan(m) => m.entries_mut(),
            Generator::Resnet(m) => m.entries_mut(),
        }
    }
}

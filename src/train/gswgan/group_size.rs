//! How many discriminators a warm-start group trains at once. `--group-size auto` (the default)
//! measures instead of guessing: on a GPU it runs one warm-start iteration of a throwaway group of
//! 1 and of [`PROBE_MEMBERS`] members on random images, reads the memory pool's high-water mark of
//! each, and takes the largest group whose footprint `fixed + G·per_member` fits in
//! [`FREE_FRACTION`] of the device's free memory. The ResNet generator's activations make G = 512
//! far too big for any GPU and G = 1 leaves most of one idle; the measurement finds the size in
//! between for the device, width and batch size at hand. Without a stream-ordered pool to measure
//! (the CPU) it is [`CPU_GROUP_SIZE`]. The probe's models are discarded and touch no training data.
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::{GsWganConfig, LabelledImages, WarmStart};
use crate::error::{Error, Result};
use crate::models::gswgan::{GeneratorArch, PIXELS};
use crate::tensor::Device;

/// The group size on a device whose memory is not measured.
pub const CPU_GROUP_SIZE: usize = 50;
/// The larger of the two probe groups (the smaller has one member). Several members, so that the
/// per-member slope is not one allocation's rounding.
pub const PROBE_MEMBERS: usize = 4;
/// The share of the free memory a group may fill: the rest covers the allocator's fragmentation
/// and the run's other tensors (the data set, checkpoints' copies).
pub const FREE_FRACTION: f64 = 0.8;

/// What `--group-size` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupSize {
    /// Measured (see the module's documentation).
    Auto,
    Fixed(usize),
}

impl std::str::FromStr for GroupSize {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s == "auto" {
            return Ok(GroupSize::Auto);
        }
        match s.parse::<usize>() {
            Ok(0) | Err(_) => Err(Error::Invalid(format!("--group-size must be `auto` or a whole number ≥ 1, got {s:?}"))),
            Ok(n) => Ok(GroupSize::Fixed(n)),
        }
    }
}

impl std::fmt::Display for GroupSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GroupSize::Auto => write!(f, "auto"),
            GroupSize::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// A warm-start group's device memory as measured: `fixed + members·per_member` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupFootprint {
    pub fixed: u64,
    pub per_member: u64,
}

impl GroupFootprint {
    /// The line through the peaks of a group of 1 and of `members` > 1. A slope below one byte
    /// (a measurement that did not grow) counts as one byte, so the planner still stops.
    pub fn from_peaks(one: u64, many: u64, members: usize) -> Result<Self> {
        if members < 2 {
            return Err(Error::Invalid(format!("a footprint needs a second probe of at least 2 members, got {members}")));
        }
        let per_member = (many.saturating_sub(one) / (members as u64 - 1)).max(1);
        Ok(GroupFootprint { fixed: one.saturating_sub(per_member), per_member })
    }

    /// Bytes a group of `members` takes.
    pub fn bytes(&self, members: usize) -> u64 {
        self.fixed.saturating_add(self.per_member.saturating_mul(members as u64))
    }

    /// The largest group of at most `cap` members whose footprint is within `budget` bytes, and at
    /// least 1 (a single discriminator is the smallest unit of work: if even that does not fit,
    /// training it says so with the allocator's own error).
    pub fn largest_group(&self, budget: u64, cap: usize) -> usize {
        let fitting = budget.saturating_sub(self.fixed) / self.per_member;
        (fitting.min(cap as u64) as usize).max(1)
    }
}

/// The group size `auto` chooses, with a sentence saying how.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupChoice {
    pub size: usize,
    pub how: String,
}

/// The warm start's models and batch, for the probe.
#[derive(Clone, Copy, Debug)]
pub struct ProbeShape {
    pub arch: GeneratorArch,
    pub base: usize,
    pub batch_size: usize,
}

/// The size `auto` picks for a warm start of `discriminators` of `shape` on `device`.
pub fn auto_group_size(shape: ProbeShape, discriminators: usize, device: &Device) -> Result<GroupChoice> {
    let cap = discriminators.max(1);
    let unmeasured = |why: &str| {
        let size = CPU_GROUP_SIZE.min(cap);
        let capped = if size < CPU_GROUP_SIZE { format!(", capped by the {cap} discriminators") } else { String::new() };
        GroupChoice { size, how: format!("{size} (auto: {CPU_GROUP_SIZE}{capped}; {why})") }
    };
    let Device::Cuda(cuda) = device else { return Ok(unmeasured("nothing to measure on the CPU")) };
    let (Some(one), Some(many)) = (probe_peak(shape, 1, device)?, probe_peak(shape, PROBE_MEMBERS, device)?) else {
        return Ok(unmeasured(&format!("no stream-ordered memory pool on {device} to measure")));
    };
    let footprint = GroupFootprint::from_peaks(one, many, PROBE_MEMBERS)?;
    let (free, _) = cuda.memory_info()?;
    let budget = (free as f64 * FREE_FRACTION) as u64;
    let size = footprint.largest_group(budget, cap);
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    Ok(GroupChoice {
        size,
        how: format!(
            "{size} (auto: {:.2} GiB + {:.3} GiB per discriminator measured on {device}, within {:.0}% of {:.1} GiB free)",
            gib(footprint.fixed),
            gib(footprint.per_member),
            FREE_FRACTION * 100.0,
            gib(free as u64)
        ),
    })
}

/// The memory pool's high-water mark over one warm-start iteration of a throwaway group of
/// `members` on random images (models and optimizer states included); `None` without a pool.
pub fn probe_peak(shape: ProbeShape, members: usize, device: &Device) -> Result<Option<u64>> {
    let Device::Cuda(cuda) = device else { return Ok(None) };
    let config = GsWganConfig { batch_size: shape.batch_size, ..GsWganConfig::default() };
    // Each member's slice holds one batch of random images: the probe's content does not matter.
    let records = members * shape.batch_size;
    let mut rng = ChaCha20Rng::seed_from_u64(0);
    let pixels: Vec<f32> = (0..records * PIXELS).map(|_| rand::Rng::random::<f32>(&mut rng)).collect();
    let labels: Vec<u32> = (0..records).map(|i| (i % 10) as u32).collect();
    let data = LabelledImages::new(pixels, labels)?;
    let slices: Vec<Vec<usize>> = (0..members).map(|j| (j * shape.batch_size..(j + 1) * shape.batch_size).collect()).collect();
    let seeds: Vec<u64> = (0..members as u64).collect();
    cuda.synchronize()?;
    cuda.reset_pool_used_high()?;
    {
        let mut group = WarmStart::new(shape.arch, shape.base, &seeds, slices, config, device)?;
        group.iteration(&data)?;
        cuda.synchronize()?;
    }
    cuda.pool_used_high()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_size_parses_auto_and_positive_numbers_only() {
        assert_eq!("auto".parse::<GroupSize>().unwrap(), GroupSize::Auto);
        assert_eq!("64".parse::<GroupSize>().unwrap(), GroupSize::Fixed(64));
        for bad in ["0", "-3", "", "Auto", "1.5", "lots"] {
            let err = bad.parse::<GroupSize>().unwrap_err().to_string();
            assert!(err.contains("--group-size") && err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
        assert_eq!(GroupSize::Auto.to_string(), "auto");
        assert_eq!(GroupSize::Fixed(7).to_string(), "7");
    }

    /// The footprint is the line through the two probes, and the largest group is the last one
    /// under the budget: one more member would pass it.
    #[test]
    fn largest_group_is_the_last_that_fits_the_budget() {
        let mib = 1u64 << 20;
        // 1 member: 300 MiB; 4 members: 900 MiB → 200 MiB each, 100 MiB fixed.
        let f = GroupFootprint::from_peaks(300 * mib, 900 * mib, 4).unwrap();
        assert_eq!(f, GroupFootprint { fixed: 100 * mib, per_member: 200 * mib });
        assert_eq!((f.bytes(1), f.bytes(4)), (300 * mib, 900 * mib));
        for budget in [300 * mib, 499 * mib, 10_000 * mib, 80_000 * mib + 12_345, 139 * 1024 * mib] {
            let g = f.largest_group(budget, usize::MAX);
            assert!(f.bytes(g) <= budget, "budget {budget}: {g} members take {}", f.bytes(g));
            assert!(f.bytes(g + 1) > budget, "budget {budget}: {} members would fit too", g + 1);
        }
        // The cap (the run's K) and the floor of one member.
        assert_eq!(f.largest_group(u64::MAX, 1000), 1000);
        assert_eq!(f.largest_group(50 * mib, 1000), 1);
        assert_eq!(f.largest_group(0, 1000), 1);
        // A probe that did not grow still gives a finite plan, and one probe is not a line.
        let flat = GroupFootprint::from_peaks(500, 400, 4).unwrap();
        assert_eq!(flat.per_member, 1);
        assert_eq!(flat.largest_group(1000, 10), 10);
        assert!(GroupFootprint::from_peaks(1, 2, 1).is_err());
    }

    #[test]
    fn auto_on_the_cpu_is_the_fixed_size_capped_by_the_discriminators() {
        let shape = ProbeShape { arch: GeneratorArch::Dcgan, base: 4, batch_size: 2 };
        let choice = auto_group_size(shape, 1000, &Device::Cpu).unwrap();
        assert_eq!(choice.size, CPU_GROUP_SIZE);
        assert!(choice.how.contains("auto"), "{}", choice.how);
        assert_eq!(auto_group_size(shape, 3, &Device::Cpu).unwrap().size, 3);
        assert_eq!(probe_peak(shape, 2, &Device::Cpu).unwrap(), None);
    }
}

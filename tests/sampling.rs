//! Batch sampling: Poisson inclusion rates and batch sizes (statistical checks with fixed seeds),
//! shuffled epochs, disjoint partitions, replay from the seed.
use dpgan::data::{disjoint_partitions, BatchSampler, Sampling};

#[test]
fn poisson_batches_have_the_right_sizes_and_inclusion_rates() {
    let (n, q, draws) = (2_000, 0.05, 4_000);
    let mut sampler = BatchSampler::new(n, Sampling::Poisson { sample_rate: q }, 42).unwrap();
    assert_eq!(sampler.expected_batch_size(), 100.0);
    let mut included = vec![0u32; n];
    let mut sizes = Vec::with_capacity(draws);
    for _ in 0..draws {
        let batch = sampler.next_batch();
        assert!(batch.windows(2).all(|w| w[0] < w[1]) && batch.last().is_none_or(|&i| i < n), "indices increase and stay in range");
        batch.iter().for_each(|&i| included[i] += 1);
        sizes.push(batch.len() as f64);
    }
    // Batch size ~ Binomial(n, q): mean qn = 100, variance qn(1 − q) = 95.
    let mean = sizes.iter().sum::<f64>() / draws as f64;
    let var = sizes.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (draws - 1) as f64;
    let se_mean = (95.0f64 / draws as f64).sqrt();
    assert!((mean - 100.0).abs() < 6.0 * se_mean, "mean batch size {mean}");
    // The sample variance's relative standard error is about sqrt(2/draws) = 2.2%; 6 sigma.
    assert!((var / 95.0 - 1.0).abs() < 6.0 * (2.0f64 / draws as f64).sqrt(), "batch size variance {var}");
    // Each record's inclusion count ~ Binomial(draws, q): mean 200, sd ≈ 13.8. Over 2,000 records,
    // all within 6 sd, and their average within 6 standard errors of 200.
    let sd = (draws as f64 * q * (1.0 - q)).sqrt();
    assert!(included.iter().all(|&c| (c as f64 - 200.0).abs() < 6.0 * sd), "a record's inclusion rate is off");
    let avg = included.iter().map(|&c| c as f64).sum::<f64>() / n as f64;
    assert!((avg - 200.0).abs() < 6.0 * sd / (n as f64).sqrt(), "average inclusions {avg}");
}

#[test]
fn poisson_with_rate_one_takes_everything() {
    let mut sampler = BatchSampler::new(7, Sampling::Poisson { sample_rate: 1.0 }, 0).unwrap();
    assert_eq!(sampler.next_batch(), (0..7).collect::<Vec<_>>());
}

#[test]
fn shuffled_epochs_cover_every_record_once_and_drop_the_remainder() {
    let (n, b) = (103, 10);
    let mut sampler = BatchSampler::new(n, Sampling::Shuffle { batch_size: b }, 9).unwrap();
    for _ in 0..3 {
        let mut seen: Vec<usize> = (0..n / b).flat_map(|_| sampler.next_batch()).collect();
        assert_eq!(seen.len(), 100);
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 100, "no record twice within an epoch");
    }
}

/// When the batch size divides the data set, each epoch is one permutation: every record exactly
/// once, none of the next epoch's batches drawn early.
#[test]
fn epochs_of_an_exact_division_cover_every_record_once() {
    let (n, b) = (100, 10);
    let mut sampler = BatchSampler::new(n, Sampling::Shuffle { batch_size: b }, 4).unwrap();
    for epoch in 0..3 {
        let mut seen: Vec<usize> = (0..n / b).flat_map(|_| sampler.next_batch()).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..n).collect::<Vec<_>>(), "epoch {epoch}");
    }
}

/// The bounds are inclusive: one batch may be the whole data set, and every record may be its
/// own partition.
#[test]
fn a_batch_or_the_partitions_may_span_the_whole_data_set() {
    let n = 10;
    let mut sampler = BatchSampler::new(n, Sampling::Shuffle { batch_size: n }, 5).unwrap();
    for _ in 0..3 {
        let mut batch = sampler.next_batch();
        batch.sort_unstable();
        assert_eq!(batch, (0..n).collect::<Vec<_>>());
    }
    let parts = disjoint_partitions(n, n, 5).unwrap();
    assert!(parts.iter().all(|p| p.len() == 1), "{parts:?}");
    let mut all = parts.concat();
    all.sort_unstable();
    assert_eq!(all, (0..n).collect::<Vec<_>>());
}

#[test]
fn batches_replay_from_the_seed() {
    let draw = |seed| {
        let mut s = BatchSampler::new(500, Sampling::Poisson { sample_rate: 0.02 }, seed).unwrap();
        (0..5).map(|_| s.next_batch()).collect::<Vec<_>>()
    };
    assert_eq!(draw(3), draw(3));
    assert_ne!(draw(3), draw(4));
}

#[test]
fn partitions_are_disjoint_equal_and_seeded() {
    let parts = disjoint_partitions(60_000, 1_000, 11).unwrap();
    assert_eq!(parts.len(), 1_000);
    assert!(parts.iter().all(|p| p.len() == 60));
    let mut all: Vec<usize> = parts.concat();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 60_000);
    assert_eq!(parts, disjoint_partitions(60_000, 1_000, 11).unwrap());
    assert_ne!(parts, disjoint_partitions(60_000, 1_000, 12).unwrap());
}

#[test]
fn impossible_settings_are_errors() {
    assert!(BatchSampler::new(0, Sampling::Shuffle { batch_size: 1 }, 0).is_err());
    assert!(BatchSampler::new(10, Sampling::Shuffle { batch_size: 11 }, 0).is_err());
    assert!(BatchSampler::new(10, Sampling::Poisson { sample_rate: 0.0 }, 0).is_err());
    assert!(BatchSampler::new(10, Sampling::Poisson { sample_rate: 1.5 }, 0).is_err());
    assert!(disjoint_partitions(10, 0, 0).is_err() && disjoint_partitions(10, 11, 0).is_err());
}

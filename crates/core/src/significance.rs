//! Paired significance tests for comparing two runs query by query: the
//! two-sided paired Student t-test (t distribution from `statrs`, built without
//! default features: it then only pulls `approx` and `num-traits`) and the paired
//! randomization (sign-flip permutation) test.
//!
//! The randomization test draws its sign flips from a hand-written splitmix64
//! generator rather than `rand`: the p-value for a given seed must stay the same
//! across platforms and dependency upgrades (results get written into papers and
//! CI thresholds), and `rand`'s `SmallRng`/`StdRng` explicitly do not promise a
//! stable stream across versions or platforms. splitmix64 is ten lines and its
//! output sequence is fixed by definition.
//!
//! Conventions follow scipy (`scipy.stats.ttest_rel`, `scipy.stats.permutation_test`
//! with `permutation_type="samples"`), which the tests check against:
//! * when `2^n <= trials` the randomization test enumerates all `2^n` sign
//!   vectors and returns the exact p-value `count / 2^n` (the identity counts);
//! * otherwise it samples `trials` sign vectors and returns `(count + 1) / (trials + 1)`,
//!   which never reports 0 (Phipson & Smyth, 2010);
//! * a permuted statistic counts as "at least as extreme" when
//!   `|sum| >= |observed sum| - 1e-9 * sum_i |d_i|`, so float rounding in the order
//!   of summation cannot turn a tie into a miss.

use statrs::distribution::{ContinuousCDF, StudentsT};

use crate::error::{Error, Result};

/// Result of a paired two-sided t-test of `a - b`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TTestResult {
    /// mean(a - b).
    pub mean_diff: f64,
    /// The t statistic (`±inf` when every difference is the same non-zero value;
    /// 0 when every difference is 0).
    pub t: f64,
    /// Degrees of freedom, n - 1.
    pub df: usize,
    /// Two-sided p-value (1 when every difference is 0, 0 when t is infinite).
    pub p_value: f64,
}

fn differences(a: &[f64], b: &[f64], min_len: usize) -> Result<Vec<f64>> {
    if a.len() != b.len() {
        return Err(Error::Invalid(format!(
            "paired test needs one value per query in both runs; got {} and {} values",
            a.len(),
            b.len()
        )));
    }
    if a.len() < min_len {
        return Err(Error::Invalid(format!(
            "paired test needs at least {min_len} queries; got {}",
            a.len()
        )));
    }
    if let Some(x) = a.iter().chain(b).find(|x| !x.is_finite()) {
        return Err(Error::Invalid(format!(
            "paired test got a non-finite value {x}; expected finite per-query scores"
        )));
    }
    Ok(a.iter().zip(b).map(|(x, y)| x - y).collect())
}

/// Paired two-sided Student t-test of `a` against `b` (same queries, same order).
/// Needs at least 2 pairs.
pub fn paired_t_test(a: &[f64], b: &[f64]) -> Result<TTestResult> {
    let d = differences(a, b, 2)?;
    let n = d.len() as f64;
    let mean = d.iter().sum::<f64>() / n;
    let var = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let df = d.len() - 1;
    let se = (var / n).sqrt();
    let (t, p_value) = if se > 0.0 {
        let t = mean / se;
        let dist = StudentsT::new(0.0, 1.0, df as f64).map_err(|e| {
            Error::Invalid(format!("t distribution with {df} degrees of freedom: {e}"))
        })?;
        (t, (2.0 * dist.sf(t.abs())).min(1.0))
    } else if mean == 0.0 {
        (0.0, 1.0)
    } else {
        (f64::INFINITY.copysign(mean), 0.0)
    };
    Ok(TTestResult {
        mean_diff: mean,
        t,
        df,
        p_value,
    })
}

/// splitmix64 (Steele, Lea & Flood 2014): a tiny generator with a fixed
/// stream, also used to sample and shuffle training windows reproducibly.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// A value in `0..n` (`n > 0`; the modulo bias is below 2^-40 for the
    /// small `n` used here).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }

    /// A float in `[0, 1)`.
    pub fn unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Paired two-sided randomization test of mean(a - b): the p-value of the
/// observed |sum of differences| under random sign flips of each difference.
/// Exact when `2^n <= trials`, else Monte Carlo with `trials` draws from `seed`
/// (see the module documentation). Needs at least 1 pair and `trials >= 1`.
pub fn randomization_test(a: &[f64], b: &[f64], trials: usize, seed: u64) -> Result<f64> {
    let d = differences(a, b, 1)?;
    if trials == 0 {
        return Err(Error::Invalid(
            "randomization test needs at least 1 trial".to_string(),
        ));
    }
    let n = d.len();
    let observed = d.iter().sum::<f64>().abs();
    let tolerance = 1e-9 * d.iter().map(|x| x.abs()).sum::<f64>();
    let extreme = |signs: &mut dyn FnMut(usize) -> bool| {
        let s: f64 = d
            .iter()
            .enumerate()
            .map(|(i, &x)| if signs(i) { -x } else { x })
            .sum();
        s.abs() >= observed - tolerance
    };
    if n < 64 && (1u64 << n) <= trials as u64 {
        let total = 1u64 << n;
        let count = (0..total)
            .filter(|&mask| extreme(&mut |i| mask >> i & 1 == 1))
            .count();
        return Ok(count as f64 / total as f64);
    }
    let mut rng = SplitMix64(seed);
    let mut bits: Vec<u64> = vec![0; n.div_ceil(64)];
    let mut count = 0usize;
    for _ in 0..trials {
        for w in bits.iter_mut() {
            *w = rng.next_u64();
        }
        if extreme(&mut |i| bits[i / 64] >> (i % 64) & 1 == 1) {
            count += 1;
        }
    }
    Ok((count + 1) as f64 / (trials + 1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values computed with scipy 1.17 (stats.ttest_rel, stats.permutation_test).

    #[test]
    fn t_test_matches_scipy() {
        let a = [0.5, 0.7, 0.2, 0.9, 0.4, 0.6];
        let b = [0.4, 0.5, 0.3, 0.6, 0.4, 0.2];
        let r = paired_t_test(&a, &b).unwrap();
        assert_eq!(r.df, 5);
        assert!((r.mean_diff - 0.15).abs() < 1e-12, "{r:?}");
        assert!((r.t - 1.9639610121239315).abs() < 1e-9, "{r:?}");
        assert!((r.p_value - 0.10674552235509224).abs() < 1e-9, "{r:?}");
        // Swapping the runs flips t, keeps p.
        let s = paired_t_test(&b, &a).unwrap();
        assert!((s.t + r.t).abs() < 1e-12 && (s.p_value - r.p_value).abs() < 1e-12);
    }

    #[test]
    fn t_test_degenerate_cases() {
        let same = paired_t_test(&[0.3, 0.4], &[0.3, 0.4]).unwrap();
        assert_eq!((same.t, same.p_value), (0.0, 1.0));
        let shifted = paired_t_test(&[1.0, 2.0, 3.0], &[0.0, 1.0, 2.0]).unwrap();
        assert_eq!((shifted.t, shifted.p_value), (f64::INFINITY, 0.0));
        assert!(paired_t_test(&[1.0], &[0.0]).is_err());
        assert!(paired_t_test(&[1.0, 2.0], &[0.0]).is_err());
        assert!(paired_t_test(&[1.0, f64::NAN], &[0.0, 0.0]).is_err());
    }

    #[test]
    fn exact_randomization_matches_scipy() {
        let a = [0.5, 0.7, 0.2, 0.9, 0.4, 0.6];
        let b = [0.4, 0.5, 0.3, 0.6, 0.4, 0.2];
        // 2^6 = 64 <= trials: exact enumeration.
        let p = randomization_test(&a, &b, 1000, 1).unwrap();
        assert!((p - 0.1875).abs() < 1e-12, "{p}");
        // Independent of the seed when exact.
        assert_eq!(p, randomization_test(&a, &b, 64, 99).unwrap());
    }

    #[test]
    fn monte_carlo_randomization_is_seeded_and_close_to_exact() {
        let a = [0.5, 0.7, 0.2, 0.9, 0.4, 0.6];
        let b = [0.4, 0.5, 0.3, 0.6, 0.4, 0.2];
        let p1 = randomization_test(&a, &b, 63, 7).unwrap();
        assert_eq!(
            p1,
            randomization_test(&a, &b, 63, 7).unwrap(),
            "same seed, same p"
        );
        // 63 < 2^6 forces sampling. Over many seeds the estimate centres on
        // E[(count + 1) / 64] = (63 * 0.1875 + 1) / 64 = 0.2002 (exact p = 0.1875);
        // the standard error of this mean over 200 seeds is about 0.0034.
        let mean: f64 = (0..200)
            .map(|s| randomization_test(&a, &b, 63, s).unwrap())
            .sum::<f64>()
            / 200.0;
        assert!((mean - 0.2002).abs() < 0.015, "{mean}");
        assert!(randomization_test(&a, &b, 0, 1).is_err());
        assert!(randomization_test(&[], &[], 10, 1).is_err());
    }

    #[test]
    fn splitmix64_reference_stream() {
        // First outputs for seed 1234567, from Vigna's reference C implementation
        // (prng.di.unimi.it/splitmix64.c) compiled and run separately.
        let mut r = SplitMix64(1234567);
        assert_eq!(r.next_u64(), 6457827717110365317);
        assert_eq!(r.next_u64(), 3203168211198807973);
    }
}

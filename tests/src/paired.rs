//! Paired measurements on a noisy machine: baseline and candidate measured alternately,
//! each pair's ratio taken, and the ratios' median with a distribution-free 95%
//! confidence interval (order statistics of the binomial, as the sign test: no
//! assumption about how the noise is distributed). A target "at least 97% of the
//! baseline" is met only when the interval's lower end is at least 0.97.

/// Median and 95% confidence interval of the median of `ratios`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MedianInterval {
    pub median: f64,
    pub low: f64,
    pub high: f64,
    /// The interval's actual coverage (order statistics give at least 95%, not exactly).
    pub coverage: f64,
}

/// P(X <= k) for X ~ Binomial(n, 1/2).
fn binomial_half_cdf(n: usize, k: usize) -> f64 {
    let mut term = 0.5f64.powi(n as i32); // C(n,0)/2^n
    let mut sum = term;
    for i in 1..=k {
        term *= (n - i + 1) as f64 / i as f64;
        sum += term;
    }
    sum
}

/// The median of `values` (NaN for none).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The median of `values` and the widest-needed order-statistic interval
/// [x(k), x(n+1-k)] whose coverage is at least 95%. None for fewer than 6 values (no such
/// interval exists below 6).
pub fn median_interval(values: &[f64]) -> Option<MedianInterval> {
    let n = values.len();
    if n < 6 {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let median = median(&v);
    // The largest k (1-based) with coverage 1 - 2 P(X <= k-1) >= 0.95.
    let mut k = 1;
    while k < n / 2 && 1.0 - 2.0 * binomial_half_cdf(n, k) >= 0.95 {
        k += 1;
    }
    Some(MedianInterval {
        median,
        low: v[k - 1],
        high: v[n - k],
        coverage: 1.0 - 2.0 * binomial_half_cdf(n, k - 1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_pairs_give_the_second_and_ninth_ratio() {
        // For n = 10 the interval [x(2), x(9)] covers 97.9%; [x(3), x(8)] only 89%.
        let ratios: Vec<f64> = (1..=10).map(|i| i as f64).collect();
        let m = median_interval(&ratios).unwrap();
        assert_eq!((m.low, m.median, m.high), (2.0, 5.5, 9.0));
        assert!((m.coverage - 0.978_515_625).abs() < 1e-9);
    }

    #[test]
    fn twenty_pairs_narrow_the_interval() {
        // n = 20: [x(6), x(15)] covers 95.9%.
        let ratios: Vec<f64> = (1..=20).rev().map(|i| i as f64).collect();
        let m = median_interval(&ratios).unwrap();
        assert_eq!((m.low, m.high), (6.0, 15.0));
        assert!(m.coverage >= 0.95);
    }

    #[test]
    fn too_few_pairs_give_no_interval() {
        assert_eq!(median_interval(&[1.0; 5]), None);
    }
}

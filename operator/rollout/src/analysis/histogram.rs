//! Quantiles of a Prometheus histogram, computed the way PromQL's
//! `histogram_quantile` does, so every metric source reports the same p99.

/// The 99th percentile of a cumulative histogram given as
/// `(upper bound "le", cumulative count)` pairs, one of them `+Inf`.
///
/// Follows `histogram_quantile(0.99, …)`: buckets are sorted by bound and
/// counts made monotonic; the value is interpolated linearly inside the
/// bucket holding the rank (from 0 for the first bucket); a rank in the
/// `+Inf` bucket gives the highest finite bound. `None` (PromQL's NaN) when
/// there is no `+Inf` bucket, fewer than two buckets, a NaN bound, or no
/// observations.
pub fn p99_from_histogram(buckets: &[(f64, u64)]) -> Option<f64> {
    quantile_from_histogram(0.99, buckets)
}

/// Any quantile in [0, 1] of a cumulative histogram, with the same rules as [`p99_from_histogram`].
pub fn quantile_from_histogram(quantile: f64, buckets: &[(f64, u64)]) -> Option<f64> {
    if buckets.len() < 2 || buckets.iter().any(|(le, _)| le.is_nan()) {
        return None;
    }
    let mut sorted = buckets.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    if sorted.last()?.0 != f64::INFINITY {
        return None;
    }
    // Scrapes of different series can race: PromQL forces monotonic counts.
    let mut running_max = 0;
    for bucket in &mut sorted {
        running_max = running_max.max(bucket.1);
        bucket.1 = running_max;
    }
    let total = sorted.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = quantile * total as f64;
    let index = sorted.iter().position(|&(_, count)| count as f64 >= rank)?;
    if index == sorted.len() - 1 {
        return Some(sorted[index - 1].0);
    }
    let (upper, count) = sorted[index];
    if index == 0 && upper <= 0.0 {
        return Some(upper);
    }
    let (lower, below) = if index == 0 { (0.0, 0) } else { sorted[index - 1] };
    let in_bucket = (count - below) as f64;
    Some(lower + (upper - lower) * (rank - below as f64) / in_bucket)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INF: f64 = f64::INFINITY;

    #[test]
    fn p99_follows_histogram_quantile() {
        let cases = [
            ("empty", vec![], None),
            ("only +Inf", vec![(INF, 10)], None),
            ("no +Inf bucket", vec![(0.1, 5), (0.2, 10)], None),
            ("no observations", vec![(0.1, 0), (INF, 0)], None),
            ("NaN bound", vec![(f64::NAN, 1), (INF, 1)], None),
            // rank 99 of 100 falls in (0.1, 0.2]: 90 below, 10 inside.
            ("interpolates", vec![(0.1, 90), (0.2, 100), (INF, 100)], Some(0.1 + 0.1 * 9.0 / 10.0)),
            ("first bucket starts at 0", vec![(0.5, 100), (INF, 100)], Some(0.5 * 0.99)),
            ("rank in +Inf gives highest bound", vec![(0.1, 50), (0.2, 90), (INF, 100)], Some(0.2)),
            ("unsorted input", vec![(INF, 100), (0.2, 100), (0.1, 90)], Some(0.19)),
            ("non-monotonic counts", vec![(0.1, 95), (0.2, 90), (INF, 100)], Some(0.2)),
        ];
        for (name, buckets, expected) in cases {
            let got = p99_from_histogram(&buckets);
            match (got, expected) {
                (Some(got), Some(expected)) => {
                    assert!((got - expected).abs() < 1e-9, "{name}: {got} != {expected}")
                }
                _ => assert_eq!(got, expected, "{name}"),
            }
        }
    }

    #[test]
    fn negative_first_bound_is_returned_as_is() {
        assert_eq!(p99_from_histogram(&[(-1.0, 100), (INF, 100)]), Some(-1.0));
    }
}

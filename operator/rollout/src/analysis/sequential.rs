//! The always-valid evidence behind the CTR verdicts: a one-sided
//! normal-mixture sequential probability ratio test on an effect that is
//! estimated, stratum by stratum, with a known (estimated) variance.

use std::f64::consts::{LN_2, SQRT_2};

use statrs::function::erf::erfc;

/// An effect estimated from independent strata, each weighted by its
/// precision (inverse variance): the combined sum then grows like a random
/// walk in "information time", which is what the mixture test needs.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct Estimate {
    weighted_sum: f64,
    information: f64,
}

impl Estimate {
    /// Adds one stratum; a stratum without variance carries no information.
    pub(super) fn add(&mut self, effect: f64, variance: f64) {
        if variance > 0.0 && variance.is_finite() && effect.is_finite() {
            self.weighted_sum += effect / variance;
            self.information += 1.0 / variance;
        }
    }

    /// The precision-weighted effect, 0 without information.
    pub(super) fn effect(&self) -> f64 {
        if self.information > 0.0 { self.weighted_sum / self.information } else { 0.0 }
    }

    /// Natural log of the likelihood ratio of "effect > 0" (a half-normal
    /// mixture of alternatives with scale `tau`) against "effect = 0".
    ///
    /// With `z = effect / sd` and `rho = tau² / (variance + tau²)`:
    /// `Λ = 2 √(1 − rho) exp(rho z² / 2) Φ(z √rho)`. Under any effect ≤ 0 it
    /// is a non-negative supermartingale, so by Ville's inequality it ever
    /// reaches `1/α` with probability at most `α`, however often one looks.
    pub(super) fn log_evidence(&self, tau: f64) -> f64 {
        if self.information <= 0.0 || tau <= 0.0 || !tau.is_finite() {
            return 0.0;
        }
        let variance = 1.0 / self.information;
        let z = self.weighted_sum / self.information.sqrt();
        let rho = tau * tau / (variance + tau * tau);
        // Λ grows with z, and Λ(0) = √(1 − rho) < 1: no evidence at or below 0.
        let z = z.max(0.0);
        LN_2 + 0.5 * (1.0 - rho).ln() + 0.5 * rho * z * z + standard_normal_cdf(z * rho.sqrt()).ln()
    }

    /// Natural log of the likelihood ratio of "effect ≠ 0" (a normal mixture
    /// of alternatives with scale `tau`, both signs) against "effect = 0":
    /// `Λ = √(1 − rho) exp(rho z² / 2)`, a martingale under the null.
    pub(super) fn log_evidence_two_sided(&self, tau: f64) -> f64 {
        if self.information <= 0.0 || tau <= 0.0 || !tau.is_finite() {
            return 0.0;
        }
        let variance = 1.0 / self.information;
        let z = self.weighted_sum / self.information.sqrt();
        let rho = tau * tau / (variance + tau * tau);
        0.5 * (1.0 - rho).ln() + 0.5 * rho * z * z
    }

    /// The evidence this estimate would have with `factor` times its
    /// information and the same effect: how far more data would take it.
    pub(super) fn scaled(&self, factor: f64) -> Self {
        Estimate { weighted_sum: self.weighted_sum * factor, information: self.information * factor }
    }
}

/// The one estimate of a single effect with its variance.
pub(super) fn single(effect: f64, variance: f64) -> Estimate {
    let mut estimate = Estimate::default();
    estimate.add(effect, variance);
    estimate
}

fn standard_normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / SQRT_2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_information_gives_no_evidence() {
        let mut estimate = Estimate::default();
        estimate.add(0.1, 0.0);
        estimate.add(f64::NAN, 1.0);
        assert_eq!(estimate, Estimate::default());
        assert_eq!(estimate.log_evidence(0.1), 0.0);
        assert_eq!(estimate.effect(), 0.0);
    }

    #[test]
    fn strata_combine_by_precision() {
        let cases = [
            // (strata as (effect, variance), combined effect)
            (vec![(1.0, 1.0)], 1.0),
            (vec![(1.0, 1.0), (3.0, 1.0)], 2.0),
            (vec![(1.0, 1.0), (4.0, 2.0)], 2.0),
        ];
        for (strata, expected) in cases {
            let mut estimate = Estimate::default();
            for (effect, variance) in &strata {
                estimate.add(*effect, *variance);
            }
            assert!((estimate.effect() - expected).abs() < 1e-12, "{strata:?}");
        }
    }

    #[test]
    fn evidence_matches_the_closed_form() {
        // z = 3, tau² = variance: rho = 1/2.
        let mut estimate = Estimate::default();
        estimate.add(3.0, 1.0);
        let expected = (2.0 * 0.5_f64.sqrt() * (0.25 * 9.0_f64).exp() * standard_normal_cdf(3.0 * 0.5_f64.sqrt())).ln();
        assert!((estimate.log_evidence(1.0) - expected).abs() < 1e-12);
    }

    #[test]
    fn two_sided_evidence_is_symmetric_and_matches_the_closed_form() {
        let evidence = |effect: f64| single(effect, 1.0).log_evidence_two_sided(1.0);
        assert!((evidence(2.0) - evidence(-2.0)).abs() < 1e-12);
        // rho = 1/2: ln √(1/2) + z²/4.
        assert!((evidence(2.0) - (0.5 * 0.5_f64.ln() + 1.0)).abs() < 1e-12);
        assert!(evidence(0.0) < 0.0);
    }

    #[test]
    fn scaling_the_information_keeps_the_effect_and_shrinks_its_variance() {
        let estimate = single(2.0, 1.0);
        let scaled = estimate.scaled(4.0);
        assert!((scaled.effect() - 2.0).abs() < 1e-12);
        assert!(scaled.log_evidence(1.0) > estimate.log_evidence(1.0));
    }

    #[test]
    fn evidence_grows_with_the_effect_and_stays_below_one_without_it() {
        let evidence = |effect: f64| {
            let mut estimate = Estimate::default();
            estimate.add(effect, 1.0);
            estimate.log_evidence(0.5)
        };
        assert!(evidence(-5.0) < 0.0);
        assert!(evidence(0.0) < 0.0);
        assert!(evidence(1.0) < evidence(2.0));
        assert!(evidence(5.0) > 20.0_f64.ln());
        assert!(evidence(-1e300).is_finite());
    }
}

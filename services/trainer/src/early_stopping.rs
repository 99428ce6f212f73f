//! Early stopping shared by the training loops (two-tower, ranker): more
//! epochs than validation rewards overfit and cost time, so a loop keeps the
//! weights of its best validation epoch and stops once `patience` epochs in a
//! row have not beaten it.

/// Patience and best-epoch tracking on a validation score (higher is better).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EarlyStopping {
    /// Epochs in a row without a better score after which training stops.
    pub patience: usize,
    /// Best score so far (`None` before the first scored epoch).
    pub best: Option<f64>,
    /// Epoch whose weights to keep (0 before the first epoch).
    pub best_epoch: usize,
    /// Epochs since `best_epoch`.
    pub bad_epochs: usize,
}

impl EarlyStopping {
    /// Records epoch `epoch`'s validation score and says whether it is the new
    /// best, whose weights to keep. Only a strictly higher score counts (the
    /// earlier of equals is kept). An epoch without a score (no validation
    /// set) always counts: with nothing to compare, the latest weights win.
    pub fn observe(&mut self, epoch: usize, score: Option<f64>) -> bool {
        let improved = match score {
            Some(score) => self.best.is_none_or(|best| score > best),
            None => true,
        };
        if improved {
            self.best = score;
            self.best_epoch = epoch;
            self.bad_epochs = 0;
        } else {
            self.bad_epochs += 1;
        }
        improved
    }

    /// Whether `patience` epochs in a row failed to improve.
    pub fn should_stop(&self) -> bool {
        self.bad_epochs >= self.patience
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh(patience: usize) -> EarlyStopping {
        EarlyStopping { patience, best: None, best_epoch: 0, bad_epochs: 0 }
    }

    #[test]
    fn stops_after_patience_epochs_without_a_better_score_and_keeps_the_best() {
        let mut stopping = fresh(2);
        let mut observe = |epoch, score| (stopping.observe(epoch, Some(score)), stopping.should_stop());
        assert_eq!(observe(1, 0.1), (true, false));
        assert_eq!(observe(2, 0.3), (true, false));
        assert_eq!(observe(3, 0.2), (false, false));
        assert_eq!(observe(4, 0.3), (false, true), "an equal score is not better");
        assert_eq!(stopping, EarlyStopping { patience: 2, best: Some(0.3), best_epoch: 2, bad_epochs: 2 });
        assert!(stopping.observe(5, Some(0.4)));
        assert_eq!((stopping.best, stopping.best_epoch, stopping.bad_epochs), (Some(0.4), 5, 0));
    }

    #[test]
    fn without_a_score_every_epoch_is_the_best() {
        let mut stopping = fresh(1);
        for epoch in 1..=3 {
            assert!(stopping.observe(epoch, None));
            assert!(!stopping.should_stop());
        }
        assert_eq!(stopping, EarlyStopping { patience: 1, best: None, best_epoch: 3, bad_epochs: 0 });
    }

    #[test]
    fn a_resumed_state_carries_on_counting() {
        let mut stopping = EarlyStopping { patience: 3, best: Some(0.5), best_epoch: 4, bad_epochs: 2 };
        assert!(!stopping.should_stop());
        assert!(!stopping.observe(7, Some(0.5)));
        assert!(stopping.should_stop());
    }

    #[test]
    fn zero_patience_stops_before_any_epoch_and_nan_never_improves() {
        assert!(fresh(0).should_stop());
        let mut stopping = fresh(5);
        stopping.observe(1, Some(0.2));
        assert!(!stopping.observe(2, Some(f64::NAN)));
        assert_eq!((stopping.best, stopping.bad_epochs), (Some(0.2), 1));
    }
}

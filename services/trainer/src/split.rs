//! Per-user chronological split into train, validation and test. Pure.
//!
//! Each user's interactions are ordered by timestamp (ties keep file order);
//! the oldest ~80% go to train, the next ~10% to validation, the newest ~10%
//! to test. Counts follow RecBole's `split_by_ratio` so that figures are
//! comparable: validation and test get `floor(ratio * n)`, and a user with
//! too few interactions for that still gets one of each when possible.

use crate::validate::{Dataset, Interaction};

/// The three parts, each ordered by user then time.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Split {
    pub train: Vec<Interaction>,
    pub valid: Vec<Interaction>,
    pub test: Vec<Interaction>,
}

/// How many of `n` interactions go to train, validation and test.
pub fn split_counts(n: usize, ratios: [f64; 3]) -> [usize; 3] {
    let mut cnt = ratios.map(|r| (r * n as f64) as usize);
    cnt[0] = n - cnt[1] - cnt[2];
    for i in [2usize, 1] {
        if cnt[0] <= 1 {
            break;
        }
        let want = ratios[i] * n as f64;
        if want > 0.0 && want < 1.0 {
            cnt[i] += 1;
            cnt[0] -= 1;
        }
    }
    cnt
}

/// Interactions of each user in chronological order (stable on ties).
pub fn by_user(n_users: usize, interactions: &[Interaction]) -> Vec<Vec<Interaction>> {
    let mut out = vec![Vec::new(); n_users];
    for x in interactions {
        out[x.user as usize].push(*x);
    }
    for v in &mut out {
        v.sort_by_key(|x| x.timestamp);
    }
    out
}

/// Split every user's history chronologically by `ratios` (train, valid, test).
pub fn chronological_split(ds: &Dataset, ratios: [f64; 3]) -> Split {
    let mut split = Split::default();
    for hist in by_user(ds.users.len(), &ds.interactions) {
        let [a, b, _] = split_counts(hist.len(), ratios);
        split.train.extend_from_slice(&hist[..a]);
        split.valid.extend_from_slice(&hist[a..a + b]);
        split.test.extend_from_slice(&hist[a + b..]);
    }
    split
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::{Item, User};
    use proptest::prelude::*;

    const R: [f64; 3] = [0.8, 0.1, 0.1];

    #[test]
    fn counts_match_recbole() {
        assert_eq!(split_counts(20, R), [16, 2, 2]);
        assert_eq!(split_counts(29, R), [25, 2, 2]);
        assert_eq!(split_counts(3, R), [1, 1, 1]);
        assert_eq!(split_counts(2, R), [1, 0, 1]);
        assert_eq!(split_counts(1, R), [1, 0, 0]);
        assert_eq!(split_counts(0, R), [0, 0, 0]);
    }

    fn dataset(rows: &[(u32, u32, i64)]) -> Dataset {
        let n_users = rows.iter().map(|r| r.0 + 1).max().unwrap_or(0) as usize;
        let n_items = rows.iter().map(|r| r.1 + 1).max().unwrap_or(0) as usize;
        Dataset {
            users: (0..n_users).map(|i| User { id: i.to_string(), ..Default::default() }).collect(),
            items: (0..n_items).map(|i| Item { id: i.to_string(), ..Default::default() }).collect(),
            interactions: rows
                .iter()
                .map(|&(user, item, timestamp)| Interaction { user, item, rating: 4.0, timestamp })
                .collect(),
        }
    }

    #[test]
    fn newest_interactions_go_to_test() {
        let rows: Vec<_> = (0..10).rev().map(|t| (0, t as u32, t)).collect();
        let s = chronological_split(&dataset(&rows), R);
        assert_eq!(s.train.iter().map(|x| x.timestamp).collect::<Vec<_>>(), (0..8).collect::<Vec<_>>());
        assert_eq!(s.valid[0].timestamp, 8);
        assert_eq!(s.test[0].timestamp, 9);
    }

    proptest! {
        #[test]
        fn split_is_a_partition_with_no_future_in_the_past(
            rows in proptest::collection::vec((0u32..6, 0u32..30, 0i64..50), 0..200)
        ) {
            let mut ds = dataset(&rows);
            ds.interactions.dedup_by_key(|x| (x.user, x.item, x.timestamp));
            let s = chronological_split(&ds, R);
            prop_assert_eq!(s.train.len() + s.valid.len() + s.test.len(), ds.interactions.len());
            for u in 0..ds.users.len() as u32 {
                let ts = |v: &[Interaction]| v.iter().filter(|x| x.user == u).map(|x| x.timestamp).collect::<Vec<_>>();
                let (tr, va, te) = (ts(&s.train), ts(&s.valid), ts(&s.test));
                let max_tr = tr.iter().max().copied().unwrap_or(i64::MIN);
                let min_va = va.iter().min().copied().unwrap_or(i64::MAX);
                let max_va = va.iter().max().copied().unwrap_or(max_tr);
                let min_te = te.iter().min().copied().unwrap_or(i64::MAX);
                prop_assert!(max_tr <= min_va && max_tr <= min_te && max_va <= min_te);
                let n = tr.len() + va.len() + te.len();
                prop_assert_eq!([tr.len(), va.len(), te.len()], split_counts(n, R));
            }
        }
    }
}

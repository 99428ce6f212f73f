//! The feature space of `reco_model::features`, fitted on the training
//! split only, and queries built from the trainer's dataset.
//!
//! [`fit`] takes the training interactions and nothing else from the split,
//! so validation and test cannot leak into features or popularity; a test
//! below checks that changing them changes nothing.

use reco_model::UserBatch;
pub use reco_model::features::*;

use crate::validate::{Dataset, Interaction};

/// Fit vocabularies on the side files and counts on `train` only.
pub fn fit(ds: &Dataset, train: &[Interaction], options: FeatureOptions) -> FeatureSpace {
    FeatureSpace::fit(&ds.users, &ds.items, train.iter().map(|x| x.item), options)
}

/// Append the query of dataset user `user` whose known past is `history`
/// (chronological) and whose last known event happened at `now`.
pub fn push_user(fs: &FeatureSpace, b: &mut UserBatch, ds: &Dataset, user: u32, history: &[Interaction], now: i64) {
    let items: Vec<i64> = history.iter().map(|x| x.item as i64 + 1).collect();
    fs.push_user(b, user as i64 + 1, &ds.users[user as usize], &items, now);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::split::chronological_split;
    use crate::validate::{Item, User};

    fn dataset() -> Dataset {
        let users = (0..3)
            .map(|i| User {
                id: i.to_string(),
                age: Some(20 + i * 10),
                gender: Some("F".into()),
                occupation: Some(format!("o{i}")),
                zip: Some("9".into()),
            })
            .collect();
        let items = (0..6)
            .map(|i| Item {
                id: i.to_string(),
                title: Some(format!("Movie {i} Part")),
                year: Some(1990 + i),
                genres: vec!["Drama".into()],
            })
            .collect();
        let mut interactions = Vec::new();
        for u in 0..3u32 {
            for t in 0..10i64 {
                interactions.push(Interaction {
                    user: u,
                    item: ((u as i64 + t) % 6) as u32,
                    rating: 4.0,
                    timestamp: t * 1000,
                });
            }
        }
        Dataset { users, items, interactions }
    }

    #[test]
    fn popularity_and_features_ignore_validation_and_test() {
        let ds = dataset();
        let split = chronological_split(&ds, [0.8, 0.1, 0.1]);
        let fs = fit(&ds, &split.train, FeatureOptions::default());
        let expected: u32 = split.train.len() as u32;
        assert_eq!(fs.item_train_count.iter().sum::<u32>(), expected);

        // Rewrite every validation and test interaction to point at item 5 and
        // refit: nothing in the feature space may change.
        let mut tampered = ds.clone();
        for x in &mut tampered.interactions {
            let in_train = split.train.iter().any(|t| t.user == x.user && t.timestamp == x.timestamp);
            if !in_train {
                x.item = 5;
                x.rating = 1.0;
            }
        }
        let split2 = chronological_split(&tampered, [0.8, 0.1, 0.1]);
        assert_eq!(split.train, split2.train);
        assert_ne!(split.test, split2.test);
        assert_eq!(fs, fit(&tampered, &split2.train, FeatureOptions::default()));
    }

    #[test]
    fn user_query_uses_only_the_given_history() {
        let ds = dataset();
        let fs = fit(&ds, &ds.interactions, FeatureOptions { history_len: 3, recent_len: 1, title_buckets: 16 });
        let mut b = UserBatch::default();
        let hist: Vec<_> = ds.interactions.iter().filter(|x| x.user == 1).take(5).copied().collect();
        push_user(&fs, &mut b, &ds, 1, &hist, 0);
        assert_eq!(b.history[0], vec![4, 5, 6]);
        assert_eq!(b.recent[0], vec![6]);
        assert_eq!(b.user, vec![2]);
        assert_eq!(b.age, vec![FeatureSpace::age_bucket(Some(30))]);
        assert_eq!((b.dow[0], b.hour[0]), (4, 1)); // 1970-01-01 was a Thursday
    }

    #[test]
    fn buckets_and_tokens() {
        assert_eq!(FeatureSpace::age_bucket(None), 0);
        assert_eq!(FeatureSpace::age_bucket(Some(10)), 1);
        assert_eq!(FeatureSpace::age_bucket(Some(60)), 7);
        assert_eq!(pop_bucket(0), 1);
        assert_eq!(pop_bucket(7), 4);
        let t = title_tokens("Star Wars: The Empire", 64);
        assert_eq!(t.len(), 4);
        assert!(t.iter().all(|&x| (1..64).contains(&x)));
        assert_eq!(title_tokens("star wars", 64), title_tokens("Wars STAR", 64));
    }
}

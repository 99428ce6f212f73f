//! Feature encoding fitted on the training split only: vocabularies of side
//! features, popularity counts and buckets, hashed title tokens, and the
//! construction of user queries (history, recent session, time context).
//!
//! [`FeatureSpace::fit`] takes the training interactions and nothing else
//! from the split, so validation and test cannot leak into features or
//! popularity; a test below checks that changing them changes nothing.

use std::collections::BTreeMap;

use reco_model::{ItemBatch, UserBatch};
use serde::{Deserialize, Serialize};

use crate::validate::{Dataset, Interaction};

/// Lengths of the history bags fed to the user tower.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FeatureOptions {
    pub history_len: usize,
    pub recent_len: usize,
    pub title_buckets: usize,
}

impl Default for FeatureOptions {
    fn default() -> Self {
        FeatureOptions { history_len: 50, recent_len: 5, title_buckets: 2048 }
    }
}

/// String → index vocabulary; index 0 is unknown.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Vocab {
    pub values: Vec<String>,
}

impl Vocab {
    fn build<'a>(values: impl Iterator<Item = &'a str>) -> Self {
        let mut v: Vec<String> = values.map(str::to_string).collect();
        v.sort();
        v.dedup();
        Vocab { values: v }
    }

    /// 1-based index of `value`, 0 when unknown or absent.
    pub fn index(&self, value: Option<&str>) -> i64 {
        value.and_then(|x| self.values.binary_search_by(|v| v.as_str().cmp(x)).ok()).map_or(0, |i| i as i64 + 1)
    }

    /// Size including the unknown slot.
    pub fn size(&self) -> i64 {
        self.values.len() as i64 + 1
    }
}

/// Upper bounds (exclusive) of the age buckets, as MovieLens-1M groups ages.
pub const AGE_BUCKETS: [u32; 6] = [18, 25, 35, 45, 50, 56];

/// Everything needed to turn users and items into model inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureSpace {
    pub options: FeatureOptions,
    pub genders: Vocab,
    pub occupations: Vocab,
    /// First digit/character of the zip code.
    pub zips: Vocab,
    pub genres: Vocab,
    /// Release years are bucketed by 5 years from this year on.
    pub year_origin: i32,
    pub n_year_buckets: i64,
    /// Interactions per item in train, indexed by dataset item index.
    pub item_train_count: Vec<u32>,
    pub n_pop_buckets: i64,
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

/// Hashed lower-case word tokens of a title, in `1..buckets`.
pub fn title_tokens(title: &str, buckets: usize) -> Vec<i64> {
    let mut t: Vec<i64> = title
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() > 1)
        .map(|w| (fnv1a(&w.to_lowercase()) % (buckets as u64 - 1)) as i64 + 1)
        .collect();
    t.sort();
    t.dedup();
    t
}

/// Popularity bucket: `1 + floor(log2(1 + count))`.
pub fn pop_bucket(count: u32) -> i64 {
    1 + (count as f64 + 1.0).log2().floor() as i64
}

/// Day of week (1 = Monday … 7) and hour (1..=24) of a Unix timestamp.
pub fn time_context(ts: i64) -> (i64, i64) {
    let days = ts.div_euclid(86_400);
    ((days + 3).rem_euclid(7) + 1, ts.rem_euclid(86_400) / 3_600 + 1)
}

impl FeatureSpace {
    /// Fit vocabularies on the side files and counts on `train` only.
    pub fn fit(ds: &Dataset, train: &[Interaction], options: FeatureOptions) -> Self {
        let mut counts = vec![0u32; ds.items.len()];
        for x in train {
            counts[x.item as usize] += 1;
        }
        let years: Vec<i32> = ds.items.iter().filter_map(|i| i.year).collect();
        let year_origin = years.iter().min().copied().unwrap_or(0);
        let year_max = years.iter().max().copied().unwrap_or(0);
        let max_count = counts.iter().max().copied().unwrap_or(0);
        FeatureSpace {
            options,
            genders: Vocab::build(ds.users.iter().filter_map(|u| u.gender.as_deref())),
            occupations: Vocab::build(ds.users.iter().filter_map(|u| u.occupation.as_deref())),
            zips: Vocab::build(ds.users.iter().filter_map(|u| u.zip.as_deref().and_then(|z| z.get(..1)))),
            genres: Vocab::build(ds.items.iter().flat_map(|i| i.genres.iter().map(String::as_str))),
            year_origin,
            n_year_buckets: ((year_max - year_origin) / 5 + 2) as i64,
            n_pop_buckets: pop_bucket(max_count) + 1,
            item_train_count: counts,
        }
    }

    pub fn n_ages(&self) -> i64 {
        AGE_BUCKETS.len() as i64 + 2
    }

    pub fn age_bucket(age: Option<u32>) -> i64 {
        age.map_or(0, |a| 1 + AGE_BUCKETS.iter().filter(|&&b| a >= b).count() as i64)
    }

    /// Model inputs of every item, row `i` = dataset item `i` (model index `i + 1`).
    pub fn item_batch(&self, ds: &Dataset) -> ItemBatch {
        let mut b = ItemBatch::default();
        for (i, item) in ds.items.iter().enumerate() {
            b.item.push(i as i64 + 1);
            b.year.push(item.year.map_or(0, |y| ((y - self.year_origin) / 5) as i64 + 1));
            b.pop.push(pop_bucket(self.item_train_count[i]));
            b.genres.push(item.genres.iter().map(|g| self.genres.index(Some(g))).collect());
            b.title
                .push(item.title.as_deref().map(|t| title_tokens(t, self.options.title_buckets)).unwrap_or_default());
        }
        b
    }

    /// Append the query of `user` whose known past is `history` (chronological)
    /// and whose last known event happened at `now`.
    pub fn push_user(&self, b: &mut UserBatch, ds: &Dataset, user: u32, history: &[Interaction], now: i64) {
        let u = &ds.users[user as usize];
        b.user.push(user as i64 + 1);
        b.age.push(Self::age_bucket(u.age));
        b.gender.push(self.genders.index(u.gender.as_deref()));
        b.occupation.push(self.occupations.index(u.occupation.as_deref()));
        b.zip.push(self.zips.index(u.zip.as_deref().and_then(|z| z.get(..1))));
        let (dow, hour) = time_context(now);
        b.dow.push(dow);
        b.hour.push(hour);
        let tail = |n: usize| history[history.len().saturating_sub(n)..].iter().map(|x| x.item as i64 + 1).collect();
        b.history.push(tail(self.options.history_len));
        b.recent.push(tail(self.options.recent_len));
    }

    /// Summary written to `feature_stats.json` next to the data statistics.
    pub fn summary(&self) -> BTreeMap<&'static str, serde_json::Value> {
        let mut m = BTreeMap::new();
        m.insert("genders", serde_json::json!(self.genders.values));
        m.insert("occupations", serde_json::json!(self.occupations.values));
        m.insert("genres", serde_json::json!(self.genres.values));
        m.insert("year_origin", serde_json::json!(self.year_origin));
        m.insert("n_pop_buckets", serde_json::json!(self.n_pop_buckets));
        m.insert(
            "item_train_count_total",
            serde_json::json!(self.item_train_count.iter().map(|&c| c as u64).sum::<u64>()),
        );
        m
    }
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
        let fs = FeatureSpace::fit(&ds, &split.train, FeatureOptions::default());
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
        assert_eq!(fs, FeatureSpace::fit(&tampered, &split2.train, FeatureOptions::default()));
    }

    #[test]
    fn user_query_uses_only_the_given_history() {
        let ds = dataset();
        let fs = FeatureSpace::fit(
            &ds,
            &ds.interactions,
            FeatureOptions { history_len: 3, recent_len: 1, title_buckets: 16 },
        );
        let mut b = UserBatch::default();
        let hist: Vec<_> = ds.interactions.iter().filter(|x| x.user == 1).take(5).copied().collect();
        fs.push_user(&mut b, &ds, 1, &hist, 0);
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

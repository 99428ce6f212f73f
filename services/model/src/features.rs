//! Feature encoding shared by the trainer and the services: vocabularies of
//! side features, popularity counts and buckets, hashed title tokens, and
//! the construction of user queries (history, recent session, time context).
//!
//! The trainer fits a [`FeatureSpace`] on the training split only and saves
//! it as `features.json`; the services load it and encode live users and
//! new items with exactly the same code.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{ItemBatch, UserBatch};

/// A user's side features, as in the `.user` file.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    pub age: Option<u32>,
    pub gender: Option<String>,
    pub occupation: Option<String>,
    pub zip: Option<String>,
}

/// An item with optional content features, as in the `.item` file.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Item {
    pub id: String,
    pub title: Option<String>,
    pub year: Option<i32>,
    pub genres: Vec<String>,
}

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
    /// Fit vocabularies on the side files and popularity on `train_items`
    /// (the item index of every training interaction) only.
    pub fn fit(
        users: &[User],
        items: &[Item],
        train_items: impl IntoIterator<Item = u32>,
        options: FeatureOptions,
    ) -> Self {
        let mut counts = vec![0u32; items.len()];
        for item in train_items {
            counts[item as usize] += 1;
        }
        let years: Vec<i32> = items.iter().filter_map(|i| i.year).collect();
        let year_origin = years.iter().min().copied().unwrap_or(0);
        let year_max = years.iter().max().copied().unwrap_or(0);
        let max_count = counts.iter().max().copied().unwrap_or(0);
        FeatureSpace {
            options,
            genders: Vocab::build(users.iter().filter_map(|u| u.gender.as_deref())),
            occupations: Vocab::build(users.iter().filter_map(|u| u.occupation.as_deref())),
            zips: Vocab::build(users.iter().filter_map(|u| u.zip.as_deref().and_then(|z| z.get(..1)))),
            genres: Vocab::build(items.iter().flat_map(|i| i.genres.iter().map(String::as_str))),
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

    /// Model inputs of every item, row `i` = item `i` (model index `i + 1`).
    pub fn item_batch(&self, items: &[Item]) -> ItemBatch {
        let mut b = ItemBatch::default();
        for (i, item) in items.iter().enumerate() {
            let count = self.item_train_count.get(i).copied().unwrap_or(0);
            self.push_item(&mut b, i as i64 + 1, item, count);
        }
        b
    }

    /// Append one item. A new item unknown to the model has `index` 0 and is
    /// embedded from its content alone (genres, year, title, popularity).
    pub fn push_item(&self, b: &mut ItemBatch, index: i64, item: &Item, train_count: u32) {
        let year = item.year.map_or(0, |y| ((y - self.year_origin).max(0) / 5) as i64 + 1);
        b.item.push(index);
        b.year.push(year.min(self.n_year_buckets - 1));
        b.pop.push(pop_bucket(train_count).min(self.n_pop_buckets - 1));
        b.genres.push(item.genres.iter().map(|g| self.genres.index(Some(g))).collect());
        b.title.push(item.title.as_deref().map(|t| title_tokens(t, self.options.title_buckets)).unwrap_or_default());
    }

    /// Append the query of user `index` (model index, 0 for a user the model
    /// has not seen) whose known past is `history` (model item indices,
    /// chronological) and whose last known event happened at `now` (Unix seconds).
    pub fn push_user(&self, b: &mut UserBatch, index: i64, u: &User, history: &[i64], now: i64) {
        b.user.push(index);
        b.age.push(Self::age_bucket(u.age));
        b.gender.push(self.genders.index(u.gender.as_deref()));
        b.occupation.push(self.occupations.index(u.occupation.as_deref()));
        b.zip.push(self.zips.index(u.zip.as_deref().and_then(|z| z.get(..1))));
        let (dow, hour) = time_context(now);
        b.dow.push(dow);
        b.hour.push(hour);
        let tail = |n: usize| history[history.len().saturating_sub(n)..].to_vec();
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

//! The item catalogue a version serves (trained items plus items added since), and the per-source top lists
//! computed from it: popular, fresh and item-to-item (EASE). Pure data and logic, no I/O.

use std::collections::{HashMap, HashSet};

use reco_model::features::Item;

/// Unix seconds of Jan 1 of `year`, 0 when unknown or out of range.
pub fn published_at(year: Option<i32>) -> i64 {
    year.and_then(|y| i16::try_from(y).ok())
        .and_then(|y| jiff::civil::Date::new(y, 1, 1).ok())
        .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC).ok())
        .map_or(0, |z| z.timestamp().as_second())
}

/// Items by row: row `r` is model item index `r + 1` for the `trained` first rows, and vector-store point id
/// `r + 1` for every row.
#[derive(Debug)]
pub struct Catalog {
    pub items: Vec<Item>,
    index: HashMap<String, usize>,
    /// Row-major `[rows, dim]`, L2-normalised.
    embeddings: Vec<f32>,
    pub dim: usize,
    pub published_at: Vec<i64>,
    /// Rows the model was trained on (and the EASE matrix covers).
    pub trained: usize,
    /// Trained rows by train count, most first (ties: lower row).
    popular: Vec<usize>,
    /// Rows with a known publication time, newest first (ties: lower row).
    fresh: Vec<usize>,
}

/// Why items could not be added.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CatalogError {
    #[error("item {0:?} is already in the catalogue")]
    Duplicate(String),
    #[error("item id is empty")]
    EmptyId,
    #[error("{what} has {got} values, expected {expected}")]
    Shape { what: &'static str, got: usize, expected: usize },
}

impl Catalog {
    /// The trained catalogue; `train_count[r]` orders the popular source.
    pub fn new(items: Vec<Item>, embeddings: Vec<f32>, dim: usize, train_count: &[u32]) -> Result<Self, CatalogError> {
        let n = items.len();
        if embeddings.len() != n * dim {
            return Err(CatalogError::Shape { what: "item embeddings", got: embeddings.len(), expected: n * dim });
        }
        if train_count.len() != n {
            return Err(CatalogError::Shape { what: "train counts", got: train_count.len(), expected: n });
        }
        let mut popular: Vec<usize> = (0..n).collect();
        popular.sort_by(|&a, &b| train_count[b].cmp(&train_count[a]).then(a.cmp(&b)));
        let mut c = Catalog {
            index: items.iter().enumerate().map(|(r, i)| (i.id.clone(), r)).collect(),
            published_at: items.iter().map(|i| published_at(i.year)).collect(),
            items,
            embeddings,
            dim,
            trained: n,
            popular,
            fresh: Vec::new(),
        };
        c.sort_fresh();
        Ok(c)
    }

    fn sort_fresh(&mut self) {
        let p = &self.published_at;
        let mut fresh: Vec<usize> = (0..p.len()).filter(|&r| p[r] != 0).collect();
        fresh.sort_by(|&a, &b| p[b].cmp(&p[a]).then(a.cmp(&b)));
        self.fresh = fresh;
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn row(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    pub fn embedding(&self, row: usize) -> &[f32] {
        &self.embeddings[row * self.dim..(row + 1) * self.dim]
    }

    /// First genre, the item's content type.
    pub fn category(&self, row: usize) -> &str {
        self.items[row].genres.first().map_or("", String::as_str)
    }

    /// Whether the row has one of `categories` (any row when `None`).
    pub fn matches(&self, row: usize, categories: Option<&HashSet<String>>) -> bool {
        categories.is_none_or(|c| self.items[row].genres.iter().any(|g| c.contains(g)))
    }

    /// Checks new items before they are encoded: ids non-empty, unique, and not in the catalogue.
    pub fn check_new(&self, items: &[Item]) -> Result<(), CatalogError> {
        let mut seen = HashSet::new();
        for item in items {
            if item.id.is_empty() {
                return Err(CatalogError::EmptyId);
            }
            if self.index.contains_key(&item.id) || !seen.insert(item.id.as_str()) {
                return Err(CatalogError::Duplicate(item.id.clone()));
            }
        }
        Ok(())
    }

    /// Appends new items with their content embeddings; returns their rows.
    pub fn add(&mut self, items: Vec<Item>, embeddings: Vec<f32>) -> Result<std::ops::Range<usize>, CatalogError> {
        self.check_new(&items)?;
        if embeddings.len() != items.len() * self.dim {
            let expected = items.len() * self.dim;
            return Err(CatalogError::Shape { what: "new item embeddings", got: embeddings.len(), expected });
        }
        let start = self.items.len();
        for item in items {
            self.index.insert(item.id.clone(), self.items.len());
            self.published_at.push(published_at(item.year));
            self.items.push(item);
        }
        self.embeddings.extend(embeddings);
        self.sort_fresh();
        Ok(start..self.items.len())
    }

    /// The first `n` popular rows that are not excluded and match the categories.
    pub fn top_popular(&self, n: usize, exclude: &HashSet<usize>, categories: Option<&HashSet<String>>) -> Vec<usize> {
        self.first_passing(&self.popular, n, exclude, categories)
    }

    /// The first `n` newest rows that are not excluded and match the categories.
    pub fn top_fresh(&self, n: usize, exclude: &HashSet<usize>, categories: Option<&HashSet<String>>) -> Vec<usize> {
        self.first_passing(&self.fresh, n, exclude, categories)
    }

    fn first_passing(
        &self,
        order: &[usize],
        n: usize,
        exclude: &HashSet<usize>,
        categories: Option<&HashSet<String>>,
    ) -> Vec<usize> {
        order.iter().copied().filter(|r| !exclude.contains(r) && self.matches(*r, categories)).take(n).collect()
    }
}

/// EASE item-to-item weights `[n, n]` over the trained rows.
#[derive(Debug)]
pub struct ItemItem {
    weights: Vec<f32>,
    n: usize,
}

impl ItemItem {
    pub fn new(weights: Vec<f32>, n: usize) -> Result<Self, CatalogError> {
        if weights.len() != n * n {
            return Err(CatalogError::Shape { what: "item-to-item weights", got: weights.len(), expected: n * n });
        }
        Ok(ItemItem { weights, n })
    }

    /// A user's score of every trained row: their 0/1 history row times the weights (history rows beyond
    /// the matrix, i.e. new items, carry no co-occurrence and are skipped).
    pub fn scores(&self, history_rows: &[usize]) -> Vec<f32> {
        let mut out = vec![0f32; self.n];
        let unique: HashSet<usize> = history_rows.iter().copied().filter(|&r| r < self.n).collect();
        for h in unique {
            for (o, w) in out.iter_mut().zip(&self.weights[h * self.n..(h + 1) * self.n]) {
                *o += w;
            }
        }
        out
    }
}

/// The `n` best rows of `scores` (ties: lower row) that pass `keep`.
pub fn top_scores(scores: &[f32], n: usize, keep: impl Fn(usize) -> bool) -> Vec<usize> {
    let mut rows: Vec<usize> = (0..scores.len()).filter(|&r| keep(r)).collect();
    let by_score = |a: &usize, b: &usize| scores[*b].total_cmp(&scores[*a]).then(a.cmp(b));
    if rows.len() > n && n > 0 {
        rows.select_nth_unstable_by(n - 1, by_score);
    }
    rows.truncate(n);
    rows.sort_by(by_score);
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, year: Option<i32>, genre: &str) -> Item {
        Item { id: id.into(), title: None, year, genres: vec![genre.into()] }
    }

    fn catalog() -> Catalog {
        let items = vec![item("a", Some(1990), "Drama"), item("b", Some(2000), "Comedy"), item("c", None, "Drama")];
        Catalog::new(items, vec![0.0; 6], 2, &[5, 1, 9]).unwrap()
    }

    #[test]
    fn published_at_is_jan_first_utc() {
        assert_eq!(published_at(Some(1970)), 0);
        assert_eq!(published_at(Some(2000)), 946_684_800);
        assert_eq!(published_at(None), 0);
        assert_eq!(published_at(Some(i32::MAX)), 0);
    }

    #[test]
    fn popular_and_fresh_honour_exclusions_and_categories() {
        let c = catalog();
        assert_eq!(c.top_popular(10, &HashSet::new(), None), [2, 0, 1]);
        assert_eq!(c.top_popular(1, &HashSet::from([2]), None), [0]);
        let drama = HashSet::from(["Drama".to_string()]);
        assert_eq!(c.top_popular(10, &HashSet::new(), Some(&drama)), [2, 0]);
        assert_eq!(c.top_fresh(10, &HashSet::new(), None), [1, 0], "undated items are never fresh");
    }

    #[test]
    fn new_items_are_appended_and_duplicates_refused() {
        let mut c = catalog();
        let rows = c.add(vec![item("d", Some(2020), "Horror")], vec![0.6, 0.8]).unwrap();
        assert_eq!(rows, 3..4);
        assert_eq!((c.row("d"), c.embedding(3), c.category(3)), (Some(3), &[0.6f32, 0.8][..], "Horror"));
        assert_eq!(c.top_fresh(1, &HashSet::new(), None), [3]);
        assert_eq!(c.top_popular(10, &HashSet::new(), None), [2, 0, 1], "new items have no popularity");
        assert_eq!(c.add(vec![item("a", None, "x")], vec![0.0; 2]), Err(CatalogError::Duplicate("a".into())));
        assert_eq!(c.add(vec![item("", None, "x")], vec![0.0; 2]), Err(CatalogError::EmptyId));
        assert!(matches!(c.add(vec![item("e", None, "x")], vec![0.0; 3]), Err(CatalogError::Shape { .. })));
    }

    #[test]
    fn ease_scores_sum_the_history_rows_once() {
        let ii = ItemItem::new(vec![0.0, 1.0, 2.0, 3.0, 0.0, 4.0, 5.0, 6.0, 0.0], 3).unwrap();
        assert_eq!(ii.scores(&[0, 1, 0, 7]), [3.0, 1.0, 6.0]);
        assert_eq!(ii.scores(&[]), [0.0; 3]);
        assert_eq!(top_scores(&[3.0, 1.0, 6.0, 6.0], 2, |r| r != 0), [2, 3]);
        assert_eq!(top_scores(&[3.0, 1.0], 0, |_| true), Vec::<usize>::new());
    }
}

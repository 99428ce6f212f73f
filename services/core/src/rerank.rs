//! Final reranking: turns the ranker's scored candidates into the page the user sees.
//!
//! This module owns the last, model-free step of the request path, configured by the CRD's
//! `spec.diversity` (`mmrLambda`, `maxPerCategory`, `freshnessBoost`):
//! 1. **Dedup** by `item_id`, keeping the best-scored copy (sources often overlap).
//! 2. **Freshness boost**: `score + |score| · boost · 2^(−age / half_life)`. For positive scores
//!    this is the usual `score × (1 + boost · decay)`; using `|score|` keeps the boost an
//!    improvement for negative scores (logits) too, where multiplying would push them down.
//! 3. **MMR** (maximal marginal relevance) greedy selection: each step picks the candidate
//!    maximising `λ · relevance − (1 − λ) · redundancy`, where relevance is the boosted score
//!    min-max normalised over the pool (so λ trades like for like with cosine similarity) and
//!    redundancy is the highest cosine similarity to an already selected item, floored at 0.
//! 4. **Per-category cap**: a candidate whose category already has `max_per_category` items is
//!    skipped; once only capped candidates remain, the page is filled from them in MMR order,
//!    because a short page is worse for the user than a less diverse one.
//!
//! Ties are broken by boosted score, then by `item_id`, so the output is deterministic.

use std::cmp::Ordering;
use std::collections::HashMap;

/// An item scored by the ranker.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub item_id: String,
    pub score: f32,
    /// Items without a category are never capped.
    pub category: Option<String>,
    /// Items without an embedding (or with a zero, non-finite or differently sized one) count
    /// as dissimilar to everything.
    pub embedding: Option<Vec<f32>>,
    /// Items without an age get no freshness boost; negative ages (clock skew) count as new.
    pub age_seconds: Option<f64>,
    /// Which retrieval source produced the item, reported back to clients and metrics.
    pub source: String,
}

/// How to rerank; mirrors the CRD's `spec.diversity` plus the request's page size.
#[derive(Debug, Clone, PartialEq)]
pub struct RerankSettings {
    /// 1 = relevance only, 0 = diversity only.
    pub mmr_lambda: f64,
    /// Most items of one category on a page; 0 = no limit.
    pub max_per_category: u32,
    /// Relative boost of a brand-new item, in [0, 1]; 0 disables the boost.
    pub freshness_boost: f64,
    /// Age at which the boost has halved.
    pub freshness_half_life_seconds: f64,
    pub page_size: usize,
}

/// One item of the final page.
#[derive(Debug, Clone, PartialEq)]
pub struct RankedItem {
    pub item_id: String,
    /// The freshness-boosted score: what the item was worth, not its MMR objective.
    pub score: f32,
    pub source: String,
}

/// The final page, and how varied it is (for the per-version diversity monitors).
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub items: Vec<RankedItem>,
    pub diversity: PageDiversity,
}

/// How varied a page is, measured on what selection already computed.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PageDiversity {
    /// Intra-list diversity: the mean cosine distance `1 − cos` over the pairs of items that
    /// both have an embedding (0: all alike; 1: orthogonal; up to 2). `None` below two such items.
    pub intra_list: Option<f64>,
    /// Shannon entropy, in bits, of the categories of the items that have one (0: a single
    /// category; log2 of the page size at most). `None` when no item has a category.
    pub category_entropy_bits: Option<f64>,
}

/// Why reranking was refused; the message names the offending setting or candidate.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RerankError {
    #[error("{field} must be a number in [0, 1], got {value}")]
    OutOfUnitRange { field: &'static str, value: f64 },
    #[error("freshness_half_life_seconds must be a positive finite number, got {value}")]
    BadHalfLife { value: f64 },
    #[error("page_size must be at least 1")]
    EmptyPage,
    #[error("candidate {item_id:?} has a non-finite score {score}")]
    NonFiniteScore { item_id: String, score: f32 },
}

impl RerankSettings {
    /// Checks every field, so that a bad CRD value fails loudly instead of producing NaN scores.
    pub fn validate(&self) -> Result<(), RerankError> {
        for (field, value) in [("mmr_lambda", self.mmr_lambda), ("freshness_boost", self.freshness_boost)] {
            if !(0.0..=1.0).contains(&value) {
                return Err(RerankError::OutOfUnitRange { field, value });
            }
        }
        let half_life = self.freshness_half_life_seconds;
        if !(half_life.is_finite() && half_life > 0.0) {
            return Err(RerankError::BadHalfLife { value: half_life });
        }
        if self.page_size == 0 {
            return Err(RerankError::EmptyPage);
        }
        Ok(())
    }
}

/// The page for `candidates`: at most `page_size` distinct items, in display order.
pub fn rerank(candidates: Vec<Candidate>, settings: &RerankSettings) -> Result<Page, RerankError> {
    settings.validate()?;
    if let Some(bad) = candidates.iter().find(|c| !c.score.is_finite()) {
        return Err(RerankError::NonFiniteScore { item_id: bad.item_id.clone(), score: bad.score });
    }
    let pool: Vec<Entry> = dedup(candidates).into_iter().map(|c| Entry::new(c, settings)).collect();
    Ok(select(pool, settings))
}

/// Keeps the best-scored copy of each item (the earliest on equal scores).
fn dedup(mut candidates: Vec<Candidate>) -> Vec<Candidate> {
    // Stable: among equal ids and scores the earliest copy stays first.
    candidates.sort_by(|a, b| a.item_id.cmp(&b.item_id).then(b.score.total_cmp(&a.score)));
    candidates.dedup_by(|later, kept| later.item_id == kept.item_id);
    candidates
}

fn freshness_boosted(score: f32, age_seconds: Option<f64>, settings: &RerankSettings) -> f64 {
    let score = f64::from(score);
    match age_seconds.filter(|age| !age.is_nan()) {
        Some(age) => {
            let decay = (-age.max(0.0) / settings.freshness_half_life_seconds).exp2();
            score + score.abs() * settings.freshness_boost * decay
        }
        None => score,
    }
}

/// A candidate during selection.
struct Entry {
    candidate: Candidate,
    /// Freshness-boosted score.
    relevance: f64,
    /// `relevance` min-max normalised over the pool, set once the pool is known.
    normalized: f64,
    /// Unit-length embedding, if it has a direction.
    unit: Option<Vec<f64>>,
    /// Highest cosine similarity to the items selected so far, floored at 0.
    redundancy: f64,
}

impl Entry {
    fn new(candidate: Candidate, settings: &RerankSettings) -> Self {
        let relevance = freshness_boosted(candidate.score, candidate.age_seconds, settings);
        let unit = candidate.embedding.as_deref().and_then(unit_vector);
        Self { candidate, relevance, normalized: 0.0, unit, redundancy: 0.0 }
    }

    fn objective(&self, lambda: f64) -> f64 {
        lambda * self.normalized - (1.0 - lambda) * self.redundancy
    }
}

fn unit_vector(embedding: &[f32]) -> Option<Vec<f64>> {
    let norm = embedding.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    (norm.is_finite() && norm > 0.0).then(|| embedding.iter().map(|&x| f64::from(x) / norm).collect())
}

fn cosine(a: Option<&[f64]>, b: Option<&[f64]>) -> f64 {
    match (a, b) {
        (Some(a), Some(b)) if a.len() == b.len() => a.iter().zip(b).map(|(x, y)| x * y).sum(),
        _ => 0.0,
    }
}

/// Greedy MMR under the category cap, falling back to capped items when nothing else is left.
fn select(mut pool: Vec<Entry>, settings: &RerankSettings) -> Page {
    let (min, max) =
        pool.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), e| (lo.min(e.relevance), hi.max(e.relevance)));
    let range = max - min;
    for entry in &mut pool {
        entry.normalized = if range > 0.0 { (entry.relevance - min) / range } else { 1.0 };
    }
    let lambda = settings.mmr_lambda;
    let cap = settings.max_per_category;
    let mut per_category: HashMap<String, u32> = HashMap::new();
    let mut page = Vec::with_capacity(settings.page_size.min(pool.len()));
    let mut units: Vec<Vec<f64>> = Vec::with_capacity(page.capacity());
    while page.len() < settings.page_size {
        let is_full = |e: &Entry| {
            cap > 0 && e.candidate.category.as_ref().is_some_and(|c| per_category.get(c).is_some_and(|&n| n >= cap))
        };
        let Some(index) = best(&pool, lambda, |e| !is_full(e)).or_else(|| best(&pool, lambda, |_| true)) else {
            break;
        };
        let chosen = pool.swap_remove(index);
        for entry in &mut pool {
            entry.redundancy = entry.redundancy.max(cosine(entry.unit.as_deref(), chosen.unit.as_deref()));
        }
        if let Some(category) = &chosen.candidate.category {
            *per_category.entry(category.clone()).or_default() += 1;
        }
        page.push(RankedItem {
            item_id: chosen.candidate.item_id,
            // Clamped: a boosted score can exceed f32::MAX, and the page promises finite scores.
            score: (chosen.relevance as f32).clamp(f32::MIN, f32::MAX),
            source: chosen.candidate.source,
        });
        units.extend(chosen.unit);
    }
    let diversity = PageDiversity {
        intra_list: intra_list_diversity(&units),
        category_entropy_bits: entropy_bits(per_category.values().copied()),
    };
    Page { items: page, diversity }
}

/// Mean `1 − cos` over the pairs of `units` (unit vectors); `None` below two.
fn intra_list_diversity(units: &[Vec<f64>]) -> Option<f64> {
    let mut sum = 0.0;
    let mut pairs = 0u32;
    for (i, a) in units.iter().enumerate() {
        for b in &units[i + 1..] {
            sum += 1.0 - cosine(Some(a), Some(b));
            pairs += 1;
        }
    }
    (pairs > 0).then(|| sum / f64::from(pairs))
}

/// Shannon entropy in bits of a distribution given by its counts; `None` when they sum to 0.
fn entropy_bits(counts: impl Iterator<Item = u32> + Clone) -> Option<f64> {
    let total = f64::from(counts.clone().sum::<u32>());
    (total > 0.0)
        .then(|| counts.filter(|&n| n > 0).map(|n| f64::from(n) / total).map(|p| -p * p.log2()).sum::<f64>().max(0.0))
}

/// Index of the best eligible entry: highest objective, then relevance, then smallest id.
fn best(pool: &[Entry], lambda: f64, eligible: impl Fn(&Entry) -> bool) -> Option<usize> {
    pool.iter()
        .enumerate()
        .filter(|(_, e)| eligible(e))
        .min_by(|(_, a), (_, b)| rank_order(a, b, lambda))
        .map(|(i, _)| i)
}

/// Display order: `Less` means `a` goes first.
fn rank_order(a: &Entry, b: &Entry, lambda: f64) -> Ordering {
    descending(a.objective(lambda), b.objective(lambda))
        .then(descending(a.relevance, b.relevance))
        .then_with(|| a.candidate.item_id.cmp(&b.candidate.item_id))
}

/// Higher first. Every value here is finite, and unlike `total_cmp` this treats −0 and 0 as equal.
fn descending(a: f64, b: f64) -> Ordering {
    b.partial_cmp(&a).unwrap_or(Ordering::Equal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn settings() -> RerankSettings {
        RerankSettings {
            mmr_lambda: 1.0,
            max_per_category: 0,
            freshness_boost: 0.0,
            freshness_half_life_seconds: 3600.0,
            page_size: 10,
        }
    }

    fn item(id: &str, score: f32) -> Candidate {
        Candidate {
            item_id: id.into(),
            score,
            category: None,
            embedding: None,
            age_seconds: None,
            source: "two_tower".into(),
        }
    }

    fn in_category(id: &str, score: f32, category: &str) -> Candidate {
        Candidate { category: Some(category.into()), ..item(id, score) }
    }

    fn embedded(id: &str, score: f32, embedding: &[f32]) -> Candidate {
        Candidate { embedding: Some(embedding.to_vec()), ..item(id, score) }
    }

    fn ids(page: &[RankedItem]) -> Vec<&str> {
        page.iter().map(|r| r.item_id.as_str()).collect()
    }

    #[test]
    fn validation_names_the_field() {
        let cases: Vec<(&str, RerankSettings, &str)> = vec![
            ("lambda NaN", RerankSettings { mmr_lambda: f64::NAN, ..settings() }, "mmr_lambda"),
            ("lambda > 1", RerankSettings { mmr_lambda: 1.5, ..settings() }, "mmr_lambda"),
            ("lambda < 0", RerankSettings { mmr_lambda: -0.1, ..settings() }, "mmr_lambda"),
            ("boost NaN", RerankSettings { freshness_boost: f64::NAN, ..settings() }, "freshness_boost"),
            ("boost > 1", RerankSettings { freshness_boost: 2.0, ..settings() }, "freshness_boost"),
            ("half-life 0", RerankSettings { freshness_half_life_seconds: 0.0, ..settings() }, "freshness_half_life"),
            (
                "half-life < 0",
                RerankSettings { freshness_half_life_seconds: -1.0, ..settings() },
                "freshness_half_life",
            ),
            ("half-life inf", RerankSettings { freshness_half_life_seconds: f64::INFINITY, ..settings() }, "half_life"),
            ("half-life NaN", RerankSettings { freshness_half_life_seconds: f64::NAN, ..settings() }, "half_life"),
            ("page 0", RerankSettings { page_size: 0, ..settings() }, "page_size"),
        ];
        for (name, bad, field) in cases {
            let err = rerank(vec![item("a", 1.0)], &bad).expect_err(name);
            assert!(err.to_string().contains(field), "{name}: {err}");
        }
        for good in [
            RerankSettings { mmr_lambda: 0.0, freshness_boost: 1.0, ..settings() },
            RerankSettings { mmr_lambda: 1.0, freshness_boost: 0.0, max_per_category: 1, page_size: 1, ..settings() },
        ] {
            assert!(rerank(vec![item("a", 1.0)], &good).is_ok());
        }
    }

    #[test]
    fn non_finite_scores_are_rejected_by_item() {
        for score in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let err = rerank(vec![item("a", 1.0), item("bad", score)], &settings()).expect_err("non-finite");
            assert!(matches!(&err, RerankError::NonFiniteScore { item_id, .. } if item_id == "bad"), "{err}");
        }
    }

    #[test]
    fn dedup_keeps_best_score() {
        // (input, expected page as (id, score, source))
        type Case = (Vec<Candidate>, Vec<(&'static str, f32, &'static str)>);
        let cases: Vec<Case> = vec![
            (vec![item("a", 1.0), item("a", 3.0), item("a", 2.0)], vec![("a", 3.0, "two_tower")]),
            (
                vec![Candidate { source: "popular".into(), ..item("a", 2.0) }, item("a", 2.0), item("b", 1.0)],
                vec![("a", 2.0, "popular"), ("b", 1.0, "two_tower")],
            ),
            (vec![item("b", -1.0), item("b", -5.0)], vec![("b", -1.0, "two_tower")]),
        ];
        for (input, want) in cases {
            let page = rerank(input, &settings()).expect("valid").items;
            let got: Vec<_> = page.iter().map(|r| (r.item_id.as_str(), r.score, r.source.as_str())).collect();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn freshness_boost_table() {
        // (score, age, boost, half-life, expected boosted score)
        let cases = [
            (2.0, None, 1.0, 100.0, 2.0),
            (2.0, Some(0.0), 1.0, 100.0, 4.0),
            (2.0, Some(100.0), 1.0, 100.0, 3.0),
            (2.0, Some(200.0), 0.5, 100.0, 2.25),
            (2.0, Some(-50.0), 0.5, 100.0, 3.0),
            (2.0, Some(f64::NAN), 1.0, 100.0, 2.0),
            (2.0, Some(f64::INFINITY), 1.0, 100.0, 2.0),
            (-2.0, Some(0.0), 0.5, 100.0, -1.0),
            (2.0, Some(0.0), 0.0, 100.0, 2.0),
        ];
        for (score, age, boost, half_life, want) in cases {
            let s = RerankSettings { freshness_boost: boost, freshness_half_life_seconds: half_life, ..settings() };
            let got = freshness_boosted(score, age, &s);
            assert!((got - want).abs() < 1e-9, "score {score} age {age:?}: {got} != {want}");
        }
    }

    #[test]
    fn freshness_reorders_the_page() {
        let s = RerankSettings { freshness_boost: 1.0, freshness_half_life_seconds: 60.0, ..settings() };
        let old = Candidate { age_seconds: Some(1e6), ..item("old", 1.5) };
        let new = Candidate { age_seconds: Some(0.0), ..item("new", 1.0) };
        let page = rerank(vec![old, new], &s).expect("valid").items;
        assert_eq!(ids(&page), ["new", "old"]);
        assert_eq!(page[0].score, 2.0);
    }

    #[test]
    fn mmr_table() {
        let candidates = || {
            vec![
                embedded("a", 1.0, &[1.0, 0.0]),
                embedded("a2", 0.95, &[1.0, 0.01]),
                embedded("b", 0.5, &[0.0, 1.0]),
                embedded("c", 0.0, &[-1.0, 0.0]),
            ]
        };
        let cases = [
            (1.0, vec!["a", "a2", "b", "c"]),
            (0.7, vec!["a", "a2", "b", "c"]),
            (0.5, vec!["a", "b", "c", "a2"]),
            (0.0, vec!["a", "b", "c", "a2"]),
        ];
        for (lambda, want) in cases {
            let page = rerank(candidates(), &RerankSettings { mmr_lambda: lambda, ..settings() }).expect("valid").items;
            assert_eq!(ids(&page), want, "lambda {lambda}");
        }
    }

    #[test]
    fn items_without_usable_embeddings_count_as_dissimilar() {
        let s = RerankSettings { mmr_lambda: 0.5, ..settings() };
        for other in [
            item("x", 0.9),
            embedded("x", 0.9, &[0.0, 0.0]),
            embedded("x", 0.9, &[f32::NAN, 1.0]),
            embedded("x", 0.9, &[1.0, 0.0, 0.0]),
        ] {
            let page = rerank(vec![embedded("a", 1.0, &[1.0, 0.0]), embedded("b", 0.95, &[1.0, 0.0]), other], &s)
                .expect("valid")
                .items;
            assert_eq!(ids(&page), ["a", "x", "b"]);
        }
    }

    #[test]
    fn the_page_reports_its_intra_list_diversity_and_category_entropy() {
        let candidates = vec![
            Candidate { category: Some("drama".into()), ..embedded("a", 1.0, &[1.0, 0.0]) },
            Candidate { category: Some("drama".into()), ..embedded("b", 0.9, &[2.0, 0.0]) },
            Candidate { category: Some("comedy".into()), ..embedded("c", 0.8, &[0.0, 3.0]) },
            item("d", 0.7),
        ];
        let page = rerank(candidates, &settings()).expect("valid");
        assert_eq!(ids(&page.items), ["a", "b", "c", "d"]);
        // Pairs with embeddings: (a, b) at distance 0, (a, c) and (b, c) at 1; d has none.
        let ild = page.diversity.intra_list.expect("three embedded items");
        assert!((ild - 2.0 / 3.0).abs() < 1e-12, "{ild}");
        // Two dramas and a comedy; d has no category.
        let want = -(2.0f64 / 3.0) * (2.0f64 / 3.0).log2() - (1.0f64 / 3.0) * (1.0f64 / 3.0).log2();
        let entropy = page.diversity.category_entropy_bits.expect("categorised items");
        assert!((entropy - want).abs() < 1e-12, "{entropy} vs {want}");

        let alike =
            rerank(vec![in_category("a", 1.0, "drama"), in_category("b", 0.5, "drama")], &settings()).expect("valid");
        assert_eq!(alike.diversity, PageDiversity { intra_list: None, category_entropy_bits: Some(0.0) });
        let bare = rerank(vec![item("a", 1.0), embedded("b", 0.5, &[1.0])], &settings()).expect("valid");
        assert_eq!(bare.diversity, PageDiversity::default(), "one embedding, no category: nothing to measure");
        assert_eq!(rerank(Vec::new(), &settings()).expect("valid").diversity, PageDiversity::default());
    }

    #[test]
    fn category_cap_table() {
        let candidates = || {
            vec![
                in_category("a1", 9.0, "a"),
                in_category("a2", 8.0, "a"),
                in_category("a3", 7.0, "a"),
                in_category("b1", 6.0, "b"),
                item("u1", 5.0),
                in_category("b2", 4.0, "b"),
            ]
        };
        let cases = [
            (0, 10, vec!["a1", "a2", "a3", "b1", "u1", "b2"]),
            (1, 3, vec!["a1", "b1", "u1"]),
            (2, 4, vec!["a1", "a2", "b1", "u1"]),
            (2, 10, vec!["a1", "a2", "b1", "u1", "b2", "a3"]),
            // The cap leaves 3 eligible items; the page is filled from the rest in MMR order.
            (1, 10, vec!["a1", "b1", "u1", "a2", "a3", "b2"]),
        ];
        for (cap, page_size, want) in cases {
            let s = RerankSettings { max_per_category: cap, page_size, ..settings() };
            assert_eq!(ids(&rerank(candidates(), &s).expect("valid").items), want, "cap {cap} page {page_size}");
        }
    }

    #[test]
    fn page_size_and_tie_break_table() {
        let candidates = || vec![item("c", 1.0), item("b", 1.0), item("a", 1.0), item("d", 2.0), item("e", -0.0)];
        let cases = [
            (1, vec!["d"]),
            (3, vec!["d", "a", "b"]),
            (5, vec!["d", "a", "b", "c", "e"]),
            (50, vec!["d", "a", "b", "c", "e"]),
        ];
        for (page_size, want) in cases {
            let page = rerank(candidates(), &RerankSettings { page_size, ..settings() }).expect("valid").items;
            assert_eq!(ids(&page), want, "page {page_size}");
        }
        assert!(rerank(Vec::new(), &settings()).expect("valid").items.is_empty());
    }

    #[test]
    fn extreme_scores_stay_finite() {
        let s = RerankSettings { freshness_boost: 1.0, ..settings() };
        let huge = Candidate { age_seconds: Some(0.0), ..item("huge", f32::MAX) };
        let tiny = Candidate { age_seconds: Some(0.0), ..item("tiny", f32::MIN) };
        let page = rerank(vec![huge, tiny], &s).expect("valid").items;
        assert_eq!(ids(&page), ["huge", "tiny"]);
        assert!(page.iter().all(|r| r.score.is_finite()));
    }

    fn any_candidate() -> impl Strategy<Value = Candidate> {
        (
            0..25u8,
            -100.0f32..100.0,
            prop::option::of(0..4u8),
            prop::option::of(prop::collection::vec(-1.0f32..1.0, 3)),
            prop::option::of(-10.0f64..1e6),
        )
            .prop_map(|(id, score, category, embedding, age_seconds)| Candidate {
                item_id: format!("i{id}"),
                score,
                category: category.map(|c| format!("c{c}")),
                embedding,
                age_seconds,
                source: "s".into(),
            })
    }

    fn any_settings() -> impl Strategy<Value = RerankSettings> {
        (0.0f64..=1.0, 0..4u32, 0.0f64..=1.0, 1.0f64..1e6, 1..30usize).prop_map(
            |(mmr_lambda, max_per_category, freshness_boost, freshness_half_life_seconds, page_size)| RerankSettings {
                mmr_lambda,
                max_per_category,
                freshness_boost,
                freshness_half_life_seconds,
                page_size,
            },
        )
    }

    proptest! {
        #[test]
        fn page_is_full_distinct_and_finite(
            candidates in prop::collection::vec(any_candidate(), 0..60),
            s in any_settings(),
        ) {
            let mut distinct: Vec<&str> = candidates.iter().map(|c| c.item_id.as_str()).collect();
            distinct.sort_unstable();
            distinct.dedup();
            let Page { items: page, diversity } = rerank(candidates.clone(), &s).expect("valid");
            prop_assert_eq!(page.len(), s.page_size.min(distinct.len()));
            // Cosine distance lies in [0, 2]; entropy in [0, log2(page size)].
            prop_assert!(diversity.intra_list.is_none_or(|d| (-1e-9..=2.0 + 1e-9).contains(&d)), "{:?}", diversity);
            let most = (page.len().max(1) as f64).log2() + 1e-9;
            prop_assert!(diversity.category_entropy_bits.is_none_or(|h| (0.0..=most).contains(&h)), "{:?}", diversity);
            let mut seen = ids(&page);
            seen.sort_unstable();
            seen.dedup();
            prop_assert_eq!(seen.len(), page.len());
            prop_assert!(page.iter().all(|r| r.score.is_finite()));
        }

        #[test]
        fn cap_holds_when_enough_items_exist(
            candidates in prop::collection::vec(any_candidate(), 0..60),
            s in any_settings(),
        ) {
            prop_assume!(s.max_per_category > 0);
            let cap = s.max_per_category as usize;
            let pool = dedup(candidates.clone());
            let mut available: HashMap<Option<&str>, usize> = HashMap::new();
            for c in &pool {
                *available.entry(c.category.as_deref()).or_default() += 1;
            }
            let capacity: usize = available.iter().map(|(cat, &n)| if cat.is_some() { n.min(cap) } else { n }).sum();
            let page = rerank(candidates, &s).expect("valid").items;
            // The first `capacity` picks never need to relax the cap.
            let category: HashMap<&str, Option<&str>> =
                pool.iter().map(|c| (c.item_id.as_str(), c.category.as_deref())).collect();
            let mut used: HashMap<&str, usize> = HashMap::new();
            for r in page.iter().take(capacity) {
                if let Some(Some(cat)) = category.get(r.item_id.as_str()) {
                    *used.entry(cat).or_default() += 1;
                }
            }
            prop_assert!(used.values().all(|&n| n <= cap), "{:?}", used);
        }

        #[test]
        fn relevance_only_equals_sorting_by_score(
            candidates in prop::collection::vec(any_candidate(), 0..60),
            page_size in 1..30usize,
        ) {
            // `settings()` is relevance only, uncapped and without boost.
            let s = RerankSettings { page_size, ..settings() };
            let mut best: HashMap<&str, f32> = HashMap::new();
            for c in &candidates {
                let score = best.entry(c.item_id.as_str()).or_insert(c.score);
                *score = score.max(c.score);
            }
            let mut want: Vec<(&str, f32)> = best.into_iter().collect();
            want.sort_by(|a, b| descending(f64::from(a.1), f64::from(b.1)).then(a.0.cmp(b.0)));
            want.truncate(page_size);
            let page = rerank(candidates.clone(), &s).expect("valid").items;
            let got: Vec<(&str, f32)> = page.iter().map(|r| (r.item_id.as_str(), r.score)).collect();
            prop_assert_eq!(got, want);
        }
    }
}

//! Mixing the ranked lists of the candidate sources into one list (pure logic).
//!
//! Each source returns catalogue rows best first. An item's mixed score is a weighted reciprocal-rank sum,
//! `Σ_s w_s / (RRF_K + rank_s + 1)`: scale-free, so a cosine, an EASE score and a count never need
//! calibrating against each other, and an item several sources agree on rises.

use crate::args::SourceWeights;

/// Damping of reciprocal-rank fusion (the usual 60): rank 0 and rank 10 differ by ~15%, not 10×.
pub const RRF_K: f32 = 60.0;

/// A candidate source; the discriminant indexes [`SourceWeights`] and [`Mixed::ranks`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    TwoTower = 0,
    ItemToItem = 1,
    Popular = 2,
    Fresh = 3,
}

pub const SOURCES: [Source; 4] = [Source::TwoTower, Source::ItemToItem, Source::Popular, Source::Fresh];

impl Source {
    /// The name in flags, metrics and `Candidate.source`.
    pub fn name(self) -> &'static str {
        match self {
            Source::TwoTower => "two_tower",
            Source::ItemToItem => "item_to_item",
            Source::Popular => "popular",
            Source::Fresh => "fresh",
        }
    }
}

/// One mixed candidate.
#[derive(Clone, Debug, PartialEq)]
pub struct Mixed {
    pub row: usize,
    pub score: f32,
    /// The source that contributed most to `score` (ties: the earlier in [`SOURCES`]).
    pub source: Source,
    /// Rank in each source's list, in [`SOURCES`] order.
    pub ranks: [Option<usize>; 4],
}

/// The union of `lists` (indexed by [`Source`]), best mixed score first (ties: lower row), at most `total`.
pub fn mix(lists: &[Vec<usize>; 4], weights: SourceWeights, total: usize) -> Vec<Mixed> {
    let mut by_row: std::collections::HashMap<usize, Mixed> = std::collections::HashMap::new();
    for source in SOURCES {
        let w = weights.get(source);
        for (rank, &row) in lists[source as usize].iter().enumerate() {
            let m = by_row.entry(row).or_insert(Mixed { row, score: 0.0, source, ranks: [None; 4] });
            if m.ranks[source as usize].is_some() {
                continue; // a source listing a row twice counts once, at its best rank
            }
            m.ranks[source as usize] = Some(rank);
            m.score += w / (RRF_K + rank as f32 + 1.0);
        }
    }
    let mut out: Vec<Mixed> = by_row
        .into_values()
        .map(|mut m| {
            let contribution = |s: Source| {
                m.ranks[s as usize].map_or(f32::NEG_INFINITY, |r| weights.get(s) / (RRF_K + r as f32 + 1.0))
            };
            m.source = SOURCES
                .into_iter()
                .fold(SOURCES[0], |best, s| if contribution(s) > contribution(best) { s } else { best });
            m
        })
        .collect();
    out.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.row.cmp(&b.row)));
    out.truncate(total);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lists(tt: &[usize], ii: &[usize], pop: &[usize], fresh: &[usize]) -> [Vec<usize>; 4] {
        [tt.to_vec(), ii.to_vec(), pop.to_vec(), fresh.to_vec()]
    }

    #[test]
    fn every_source_is_a_name_the_metrics_label_by() {
        for source in SOURCES {
            assert!(reco_proto::CANDIDATE_SOURCES.contains(&source.name()), "{}", source.name());
        }
    }

    #[test]
    fn the_union_keeps_every_rank_and_agreement_wins() {
        let m = mix(&lists(&[1, 2, 3], &[3, 4], &[5, 3], &[]), SourceWeights::default(), 100);
        assert_eq!(m.len(), 5);
        assert_eq!(m[0].row, 3, "item 3 is in three lists: {m:?}");
        assert_eq!(m[0].ranks, [Some(2), Some(0), Some(1), None]);
        assert_eq!(m[0].source, Source::ItemToItem);
        let five = m.iter().find(|c| c.row == 5).unwrap();
        assert_eq!((five.source, five.ranks), (Source::Popular, [None, None, Some(0), None]));
    }

    #[test]
    fn weights_order_the_sources() {
        let l = lists(&[1], &[], &[2], &[]);
        let w: SourceWeights = "two_tower=0.1,popular=1".parse().unwrap();
        assert_eq!(mix(&l, w, 10).iter().map(|c| c.row).collect::<Vec<_>>(), [2, 1]);
        let w: SourceWeights = "two_tower=1,popular=0.1".parse().unwrap();
        assert_eq!(mix(&l, w, 10).iter().map(|c| c.row).collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn total_caps_the_list_and_empty_lists_give_nothing() {
        let l = lists(&[1, 2, 3, 4], &[5, 6], &[], &[7]);
        assert_eq!(mix(&l, SourceWeights::default(), 3).len(), 3);
        assert!(mix(&lists(&[], &[], &[], &[]), SourceWeights::default(), 10).is_empty());
        let dup = mix(&lists(&[1, 1], &[], &[], &[]), SourceWeights::default(), 10);
        assert_eq!((dup.len(), dup[0].ranks[0]), (1, Some(0)));
    }
}

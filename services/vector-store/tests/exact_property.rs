//! Property: on small collections (below the engine's indexing threshold, so searched by full scan) the
//! embedded store's top-k is the exact top-k, with and without filters.

use std::collections::HashSet;

use proptest::prelude::*;
use reco_vector_store::exact::{self, dot};
use reco_vector_store::{CollectionSpec, Distance, EdgeStore, HnswParams, ItemPayload, OpenMode, Point, SearchFilter};

const CATEGORIES: [&str; 3] = ["a", "b", "c"];

fn normalised(v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-3);
    v.into_iter().map(|x| x / norm).collect()
}

#[derive(Debug, Clone)]
struct Case {
    dim: usize,
    vectors: Vec<Vec<f32>>,
    categories: Vec<usize>,
    query: Vec<f32>,
    k: usize,
    exclude: HashSet<u64>,
    category_filter: Option<usize>,
}

fn case() -> impl Strategy<Value = Case> {
    (2usize..12, 1usize..150).prop_flat_map(|(dim, n)| {
        (
            prop::collection::vec(prop::collection::vec(-1.0f32..1.0, dim), n),
            prop::collection::vec(0usize..CATEGORIES.len(), n),
            prop::collection::vec(-1.0f32..1.0, dim),
            1usize..(n + 10),
            prop::collection::hash_set(0u64..(n as u64 + 5), 0..20),
            prop::option::of(0usize..CATEGORIES.len()),
        )
            .prop_map(move |(vectors, categories, query, k, exclude, category_filter)| Case {
                dim,
                vectors: vectors.into_iter().map(normalised).collect(),
                categories,
                query: normalised(query),
                k,
                exclude,
                category_filter,
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn small_collections_return_the_exact_top_k(case in case()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let spec = CollectionSpec { pipeline: "p".into(), version: "v".into(), dim: case.dim, distance: Distance::Dot };
        let store = rt.block_on(EdgeStore::open(dir.path().into(), spec, OpenMode::CreateIfMissing, HnswParams::default())).unwrap();
        let points: Vec<Point> = case.vectors.iter().zip(&case.categories).enumerate().map(|(id, (v, &c))| Point {
            id: id as u64,
            vector: v.clone(),
            payload: ItemPayload { category: vec![CATEGORIES[c].to_owned()], published_at: 0 },
        }).collect();
        rt.block_on(reco_vector_store::VectorStore::upsert(&store, &points)).unwrap();

        let filter = SearchFilter {
            exclude: case.exclude.clone(),
            categories: case.category_filter.map(|c| vec![CATEGORIES[c].to_owned()]),
        };
        let got = store.search_blocking(&case.query, case.k, &filter).unwrap();

        let matrix: Vec<f32> = case.vectors.concat();
        let keep = |id: u64| !case.exclude.contains(&id)
            && case.category_filter.is_none_or(|c| case.categories[id as usize] == c);
        let want = exact::top_k(&matrix, case.dim, &case.query, case.k, keep);

        prop_assert_eq!(got.len(), want.len());
        let mut seen = HashSet::new();
        for (g, w) in got.iter().zip(&want) {
            // Same score at every rank (ids may swap only between equal scores).
            prop_assert!((g.score - w.score).abs() < 1e-4, "rank score {} vs exact {}", g.score, w.score);
            prop_assert!(keep(g.id), "returned filtered-out id {}", g.id);
            prop_assert!(seen.insert(g.id), "duplicate id {}", g.id);
            let true_score = dot(&case.vectors[g.id as usize], &case.query);
            prop_assert!((g.score - true_score).abs() < 1e-4, "id {} score {} vs {}", g.id, g.score, true_score);
        }
    }
}

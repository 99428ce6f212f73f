//! The behaviour every backend must show, run against each backend by the test files.

use std::collections::HashSet;

use reco_vector_store::{Hit, ItemPayload, MAX_K, Point, SearchFilter, StoreError, VectorStore};

/// Dimension of the tiny collection.
pub const DIM: usize = 4;

fn point(id: u64, vector: [f32; DIM], category: &[&str]) -> Point {
    Point {
        id,
        vector: vector.to_vec(),
        payload: ItemPayload {
            category: category.iter().map(|c| (*c).to_owned()).collect(),
            published_at: 1_700_000_000,
        },
    }
}

/// Six items whose dot products with [`QUERY`] are 1.0, 0.8, 0.6, 0.3, 0.0, -1.0 (ids 0..6 in that order).
pub fn tiny_set() -> Vec<Point> {
    vec![
        point(0, [1.0, 0.0, 0.0, 0.0], &["movie"]),
        point(1, [0.8, 0.6, 0.0, 0.0], &["series"]),
        point(2, [0.6, 0.8, 0.0, 0.0], &["movie", "series"]),
        point(3, [0.3, 0.953_939_2, 0.0, 0.0], &["doc"]),
        point(4, [0.0, 0.0, 1.0, 0.0], &[]),
        point(5, [-1.0, 0.0, 0.0, 0.0], &["movie"]),
    ]
}

pub const QUERY: [f32; DIM] = [1.0, 0.0, 0.0, 0.0];

fn ids(hits: &[Hit]) -> Vec<u64> {
    hits.iter().map(|h| h.id).collect()
}

fn filter(exclude: &[u64], categories: Option<&[&str]>) -> SearchFilter {
    SearchFilter {
        exclude: exclude.iter().copied().collect::<HashSet<_>>(),
        categories: categories.map(|c| c.iter().map(|s| (*s).to_owned()).collect()),
    }
}

/// Checks search results, filters and input validation on a store freshly opened for a `DIM`-dimensional
/// dot-product collection; leaves the tiny set stored.
pub async fn check_behaviour(store: &dyn VectorStore) {
    assert_eq!(store.dim(), DIM);
    store.upsert(&tiny_set()).await.unwrap();
    store.commit().await.unwrap();
    assert_eq!(store.info().await.unwrap().points, 6);

    // Exact result, best first, with the scores.
    let hits = store.search(&QUERY, 3, &SearchFilter::default()).await.unwrap();
    assert_eq!(ids(&hits), vec![0, 1, 2]);
    for (hit, want) in hits.iter().zip([1.0, 0.8, 0.6]) {
        assert!((hit.score - want).abs() < 1e-5, "{hit:?} vs {want}");
    }
    // k above the collection size returns everything.
    assert_eq!(ids(&store.search(&QUERY, 100, &SearchFilter::default()).await.unwrap()), vec![0, 1, 2, 3, 4, 5]);

    // Exclusion, category any-of, both together, and an empty category set.
    assert_eq!(ids(&store.search(&QUERY, 3, &filter(&[0, 2], None)).await.unwrap()), vec![1, 3, 4]);
    assert_eq!(ids(&store.search(&QUERY, 10, &filter(&[], Some(&["movie"]))).await.unwrap()), vec![0, 2, 5]);
    assert_eq!(ids(&store.search(&QUERY, 10, &filter(&[1], Some(&["series", "doc"]))).await.unwrap()), vec![2, 3]);
    assert!(store.search(&QUERY, 10, &filter(&[], Some(&[]))).await.unwrap().is_empty());
    assert!(store.search(&QUERY, 10, &filter(&[], Some(&["nothing"]))).await.unwrap().is_empty());
    // Excluding ids that do not exist is harmless.
    assert_eq!(ids(&store.search(&QUERY, 2, &filter(&[999, 1_000_000], None)).await.unwrap()), vec![0, 1]);

    // Upsert replaces: item 5 now points along the query.
    store.upsert(&[point(5, [0.9, 0.0, 0.0, 0.435_889_9], &["movie"])]).await.unwrap();
    assert_eq!(ids(&store.search(&QUERY, 2, &SearchFilter::default()).await.unwrap()), vec![0, 5]);
    assert_eq!(store.info().await.unwrap().points, 6);

    // Bad input is an error naming the collection, and writes nothing.
    let name = store.collection().to_owned();
    let short = Point { vector: vec![1.0, 0.0], ..point(9, QUERY, &[]) };
    let err = store.upsert(&[point(8, QUERY, &[]), short]).await.unwrap_err();
    assert!(matches!(err, StoreError::DimensionMismatch { expected: 4, got: 2, .. }), "{err}");
    assert!(err.to_string().contains(&name), "{err}");
    let nan = point(9, [0.0, f32::NAN, 0.0, 0.0], &[]);
    assert!(matches!(store.upsert(&[nan]).await, Err(StoreError::NonFinite { index: 1, .. })));
    let empty = Point { vector: Vec::new(), ..point(9, QUERY, &[]) };
    assert!(matches!(store.upsert(&[empty]).await, Err(StoreError::EmptyVector { .. })));
    assert_eq!(store.info().await.unwrap().points, 6, "a rejected batch must write nothing");

    let none = SearchFilter::default();
    assert!(matches!(store.search(&[1.0; 3], 3, &none).await, Err(StoreError::DimensionMismatch { .. })));
    assert!(matches!(store.search(&[f32::NAN; DIM], 3, &none).await, Err(StoreError::NonFinite { .. })));
    assert!(matches!(store.search(&[f32::INFINITY; DIM], 3, &none).await, Err(StoreError::NonFinite { .. })));
    assert!(matches!(store.search(&[], 3, &none).await, Err(StoreError::EmptyVector { .. })));
    assert!(matches!(store.search(&QUERY, 0, &none).await, Err(StoreError::InvalidK { k: 0, .. })));
    assert!(matches!(store.search(&QUERY, MAX_K + 1, &none).await, Err(StoreError::InvalidK { .. })));
    let hostile = SearchFilter { exclude: (0..1_000_000).collect(), categories: None };
    assert!(matches!(store.search(&QUERY, 3, &hostile).await, Err(StoreError::TooMany { .. })));
}

//! The embedded backend: shared behaviour, persistence, open modes.

mod common;

use reco_vector_store::{
    CollectionSpec, Distance, EdgeStore, HnswParams, OpenMode, SearchFilter, StoreError, VectorStore,
};

fn spec(dim: usize) -> CollectionSpec {
    CollectionSpec { pipeline: "movies".into(), version: "v3".into(), dim, distance: Distance::Dot }
}

#[tokio::test]
async fn behaves_and_persists_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = EdgeStore::open(dir.path().into(), spec(common::DIM), OpenMode::CreateIfMissing, HnswParams::default())
        .await
        .unwrap();
    assert_eq!(store.collection(), "movies__v3");
    common::check_behaviour(&store).await;
    let before = store.search(&common::QUERY, 6, &SearchFilter::default()).await.unwrap();
    drop(store);

    assert!(dir.path().join("movies__v3").is_dir(), "stored under the given directory");
    let reopened =
        EdgeStore::open(dir.path().into(), spec(common::DIM), OpenMode::Existing, HnswParams::default()).await.unwrap();
    assert_eq!(reopened.info().await.unwrap().points, 6);
    assert_eq!(reopened.search(&common::QUERY, 6, &SearchFilter::default()).await.unwrap(), before);
    let movies = SearchFilter { categories: Some(vec!["movie".into()]), ..SearchFilter::default() };
    let ids: Vec<u64> = reopened.search(&common::QUERY, 10, &movies).await.unwrap().iter().map(|h| h.id).collect();
    assert_eq!(ids, vec![0, 5, 2], "payload survives the reopen");
}

#[tokio::test]
async fn missing_collection_and_spec_mismatch_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = EdgeStore::open(dir.path().into(), spec(4), OpenMode::Existing, HnswParams::default()).await.err();
    assert!(
        matches!(&err, Some(StoreError::MissingCollection { collection }) if collection == "movies__v3"),
        "{err:?}"
    );

    drop(EdgeStore::open(dir.path().into(), spec(4), OpenMode::CreateIfMissing, HnswParams::default()).await.unwrap());
    let err = EdgeStore::open(dir.path().into(), spec(8), OpenMode::CreateIfMissing, HnswParams::default()).await.err();
    assert!(matches!(err, Some(StoreError::SpecMismatch { .. })), "{err:?}");
    let cosine = CollectionSpec { distance: Distance::Cosine, ..spec(4) };
    let err = EdgeStore::open(dir.path().into(), cosine, OpenMode::Existing, HnswParams::default()).await.err();
    assert!(matches!(err, Some(StoreError::SpecMismatch { .. })), "{err:?}");
}

#[tokio::test]
async fn hostile_names_and_dimensions_are_rejected_before_touching_disk() {
    let dir = tempfile::tempdir().unwrap();
    let bad = CollectionSpec { pipeline: "../etc".into(), ..spec(4) };
    let err = EdgeStore::open(dir.path().into(), bad, OpenMode::CreateIfMissing, HnswParams::default()).await.err();
    assert!(matches!(err, Some(StoreError::InvalidName { .. })), "{err:?}");
    let err = EdgeStore::open(dir.path().into(), spec(0), OpenMode::CreateIfMissing, HnswParams::default()).await.err();
    assert!(matches!(err, Some(StoreError::InvalidSpec { .. })), "{err:?}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn cosine_collections_rank_by_angle() {
    let dir = tempfile::tempdir().unwrap();
    let spec = CollectionSpec { distance: Distance::Cosine, ..spec(2) };
    let store =
        EdgeStore::open(dir.path().into(), spec, OpenMode::CreateIfMissing, HnswParams::default()).await.unwrap();
    let p = |id, vector: Vec<f32>| reco_vector_store::Point { id, vector, payload: Default::default() };
    // Long but off-axis loses to short but aligned: cosine ignores length.
    store.upsert(&[p(1, vec![10.0, 10.0]), p(2, vec![0.1, 0.0])]).await.unwrap();
    let hits = store.search(&[1.0, 0.0], 2, &SearchFilter::default()).await.unwrap();
    assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), vec![2, 1]);
    assert!((hits[0].score - 1.0).abs() < 1e-5 && (hits[1].score - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_searches_and_writes_neither_fail_nor_block_each_other_out() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(
        EdgeStore::open(dir.path().into(), spec(common::DIM), OpenMode::CreateIfMissing, HnswParams::default())
            .await
            .unwrap(),
    );
    store.upsert(&common::tiny_set()).await.unwrap();
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let store = std::sync::Arc::clone(&store);
            tokio::spawn(async move {
                for _ in 0..50 {
                    let hits = store.search(&common::QUERY, 3, &SearchFilter::default()).await.unwrap();
                    assert_eq!(hits.first().map(|h| h.id), Some(0));
                }
            })
        })
        .collect();
    for round in 0..20u64 {
        let points: Vec<_> = (0..50)
            .map(|i| reco_vector_store::Point {
                id: 100 + round * 50 + i,
                vector: vec![0.0, 0.0, 0.0, 1.0],
                payload: Default::default(),
            })
            .collect();
        store.upsert(&points).await.unwrap();
        store.commit().await.unwrap();
    }
    for r in readers {
        r.await.unwrap();
    }
    assert_eq!(store.info().await.unwrap().points, 6 + 20 * 50);
}

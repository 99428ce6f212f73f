//! The Qdrant server backend: shared behaviour against a real server. Runs only with `QDRANT_URL` set (gRPC,
//! e.g. `http://localhost:6334`).

mod common;

use reco_vector_store::{CollectionSpec, Distance, HnswParams, OpenMode, ServerStore, StoreError, VectorStore};

fn server_url() -> Option<String> {
    let url = std::env::var("QDRANT_URL").ok().filter(|u| !u.is_empty());
    if url.is_none() {
        eprintln!("skipped: set QDRANT_URL (e.g. http://localhost:6334) to test against a Qdrant server");
    }
    url
}

/// A fresh collection name per run, so reruns against the same server do not collide.
fn unique_version() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("test-{nanos}-{}", std::process::id())
}

#[tokio::test]
async fn behaves_like_the_embedded_store() {
    let Some(url) = server_url() else { return };
    let spec = CollectionSpec {
        pipeline: "reco-vs".into(),
        version: unique_version(),
        dim: common::DIM,
        distance: Distance::Dot,
    };
    let store = ServerStore::open(&url, &spec, OpenMode::CreateIfMissing, HnswParams::default()).await.unwrap();
    common::check_behaviour(&store).await;

    let reopened = ServerStore::open(&url, &spec, OpenMode::Existing, HnswParams::default()).await.unwrap();
    assert_eq!(reopened.info().await.unwrap().points, 6);
    let wider = CollectionSpec { dim: 8, ..spec.clone() };
    let err = ServerStore::open(&url, &wider, OpenMode::Existing, HnswParams::default()).await.err();
    assert!(matches!(err, Some(StoreError::SpecMismatch { .. })), "{err:?}");
}

#[tokio::test]
async fn missing_collection_is_an_error() {
    let Some(url) = server_url() else { return };
    let spec =
        CollectionSpec { pipeline: "reco-vs".into(), version: unique_version(), dim: 4, distance: Distance::Dot };
    let err = ServerStore::open(&url, &spec, OpenMode::Existing, HnswParams::default()).await.err();
    assert!(matches!(err, Some(StoreError::MissingCollection { .. })), "{err:?}");
}

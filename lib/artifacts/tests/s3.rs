//! Artifacts through a real S3-protocol server (moto, see
//! `reco_artifacts::testing`). Skipped, with the reason printed, where it is absent.

use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use reco_artifacts::testing::S3Server;
use reco_artifacts::{ArtifactStoreError, StoreOptions, fetch, manifest::write_manifest, upload};

async fn bucket(server: &S3Server, name: &str) -> impl ObjectStore {
    server.bucket(name).await;
    let env = server.env();
    env.iter()
        .fold(AmazonS3Builder::new().with_bucket_name(name), |b, (k, v)| {
            b.with_config(k.to_lowercase().parse().unwrap(), v)
        })
        .build()
        .unwrap()
}

/// Settings for an S3 server on a loopback port where nothing listens.
fn unreachable() -> StoreOptions {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    StoreOptions::default()
        .with("aws_endpoint", &format!("http://127.0.0.1:{port}"))
        .with("aws_allow_http", "true")
        .with("aws_access_key_id", "reco-test")
        .with("aws_secret_access_key", "reco-test")
        .with("aws_region", "us-east-1")
}

/// A version directory: a small JSON file and one large enough for a multipart upload.
fn version_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("items.json"), br#"[{"id":"1"}]"#).unwrap();
    let weights: Vec<u8> = (0..(20u32 << 20)).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.path().join("ranker.safetensors"), weights).unwrap();
    dir
}

fn same_files(a: &Path, b: &Path) {
    for name in ["items.json", "ranker.safetensors", "manifest.json"] {
        assert_eq!(std::fs::read(a.join(name)).unwrap(), std::fs::read(b.join(name)).unwrap(), "{name}");
    }
}

fn cache_is_empty(cache: &Path) -> bool {
    std::fs::read_dir(cache).map(|d| d.count() == 0).unwrap_or(true)
}

#[tokio::test]
async fn a_version_uploaded_to_s3_is_fetched_verified_and_cached() {
    let Some(server) = S3Server::start().await else { return };
    bucket(&server, "models").await;
    let opts = server.options();
    let src = version_dir();
    let digest = upload(src.path(), "s3://models/explore/v1", &opts).await.unwrap();
    assert_eq!(digest, write_manifest(src.path()).unwrap(), "the uploaded digest is the directory's");

    let cache = tempfile::tempdir().unwrap();
    let fetched = fetch("s3://models/explore/v1", &opts, cache.path(), Some(&digest)).await.unwrap();
    assert_eq!(fetched.digest, digest);
    assert_eq!(fetched.downloaded_bytes, (20 << 20) + 12);
    assert_eq!(fetched.dir, cache.path().join(digest.hex()));
    same_files(src.path(), &fetched.dir);

    // A restarted pod finds the version in its cache volume.
    let again = fetch("s3://models/explore/v1", &opts, cache.path(), None).await.unwrap();
    assert_eq!((again.dir, again.downloaded_bytes), (fetched.dir, 0));
}

#[tokio::test]
async fn a_corrupted_or_missing_object_is_refused_by_name_and_leaves_nothing_cached() {
    let Some(server) = S3Server::start().await else { return };
    let store = bucket(&server, "models").await;
    let opts = server.options();
    let src = version_dir();
    upload(src.path(), "s3://models/v1", &opts).await.unwrap();

    // Same size, one byte changed.
    store.put(&ObjectPath::from("v1/items.json"), PutPayload::from_static(br#"[{"id":"2"}]"#)).await.unwrap();
    let cache = tempfile::tempdir().unwrap();
    let err = fetch("s3://models/v1", &opts, cache.path(), None).await.unwrap_err();
    assert!(matches!(&err, ArtifactStoreError::Corrupt { file, .. } if file == "items.json"), "{err}");
    assert!(cache_is_empty(cache.path()), "a refused version leaves no files");

    // Truncated: a partial upload of the weights.
    store.put(&ObjectPath::from("v1/items.json"), PutPayload::from_static(br#"[{"id":"1"}]"#)).await.unwrap();
    store.put(&ObjectPath::from("v1/ranker.safetensors"), PutPayload::from(vec![0u8; 1 << 20])).await.unwrap();
    let err = fetch("s3://models/v1", &opts, cache.path(), None).await.unwrap_err().to_string();
    assert!(err.contains("s3://models/v1: ranker.safetensors: 1048576 bytes"), "{err}");

    store.delete(&ObjectPath::from("v1/ranker.safetensors")).await.unwrap();
    let err = fetch("s3://models/v1", &opts, cache.path(), None).await.unwrap_err().to_string();
    assert_eq!(err, "s3://models/v1: ranker.safetensors: missing, but listed in the manifest");
    assert!(cache_is_empty(cache.path()));
}

#[tokio::test]
async fn no_manifest_another_digest_or_no_bucket_is_an_error_naming_the_uri() {
    let Some(server) = S3Server::start().await else { return };
    bucket(&server, "models").await;
    let opts = server.options();
    let src = version_dir();
    upload(src.path(), "s3://models/v1", &opts).await.unwrap();
    let cache = tempfile::tempdir().unwrap();

    let err = fetch("s3://models/v9", &opts, cache.path(), None).await.unwrap_err().to_string();
    assert!(err.starts_with("s3://models/v9: no manifest.json"), "{err}");

    let other = format!("sha256:{}", "1".repeat(64)).parse().unwrap();
    let err = fetch("s3://models/v1", &opts, cache.path(), Some(&other)).await.unwrap_err().to_string();
    assert!(err.contains("but the ModelVersion expects sha256:1111"), "{err}");

    let err = fetch("s3://no-such-bucket/v1", &opts, cache.path(), None).await.unwrap_err().to_string();
    assert!(err.starts_with("s3://no-such-bucket/v1: "), "{err}");
    assert!(cache_is_empty(cache.path()));
}

#[tokio::test]
async fn an_unreachable_store_fails_within_the_retry_budget() {
    let cache = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let err = fetch("s3://models/v1", &unreachable(), cache.path(), None).await.unwrap_err().to_string();
    assert!(err.starts_with("s3://models/v1: "), "{err}");
    assert!(started.elapsed() < Duration::from_secs(40), "{:?}", started.elapsed());
}

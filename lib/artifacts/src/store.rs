//! Upload to and verified download from the object store an artifact URI names.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, ObjectStoreScheme, PutPayload, WriteMultipart};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;
use url::Url;

use crate::ArtifactStoreError;
use crate::manifest::{self, Digest, FileEntry, MANIFEST, Manifest};

/// Upload parts of 8 MiB (S3 wants at least 5 MiB), up to 4 in flight.
const PART_BYTES: usize = 8 << 20;
const PARTS_IN_FLIGHT: usize = 4;

/// A version's artifacts ready to load.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    /// The local directory holding every file of the version.
    pub dir: PathBuf,
    pub digest: Digest,
    /// Bytes downloaded now (0 when served from the local directory or the cache).
    pub downloaded_bytes: u64,
}

/// Where an artifact URI points: an object store and the version's prefix in it.
enum Location {
    /// A local directory, read in place.
    Local(PathBuf),
    Remote {
        store: Arc<dyn ObjectStore>,
        prefix: ObjectPath,
    },
}

/// How object stores are reached beyond what the URI says: settings in the
/// stores' own keys (`aws_endpoint`, `aws_allow_http`, `google_service_account`,
/// `azure_storage_account_key`, ...), applied over the environment's
/// `AWS_*`, `GOOGLE_*` and `AZURE_*` variables, which are read as the clouds'
/// SDKs read them. The default is the environment alone.
#[derive(Clone, Debug, Default)]
pub struct StoreOptions {
    settings: Vec<(String, String)>,
}

impl StoreOptions {
    /// Adds one setting; keys the scheme's store does not know are ignored.
    pub fn with(mut self, key: &str, value: &str) -> Self {
        self.settings.push((key.to_ascii_lowercase(), value.to_owned()));
        self
    }

    /// Applies the settings whose keys parse as `K` to a builder.
    fn apply<K: std::str::FromStr, B>(&self, builder: B, set: impl Fn(B, K, &str) -> B) -> B {
        self.settings.iter().fold(builder, |b, (k, v)| match k.parse::<K>() {
            Ok(key) => set(b, key, v),
            Err(_) => b,
        })
    }
}

/// Transient store errors (5xx, timeouts, refused connections) are retried a
/// few times within 30 s; the services retry the whole fetch beyond that.
fn retry() -> object_store::RetryConfig {
    object_store::RetryConfig { max_retries: 3, retry_timeout: Duration::from_secs(30), ..Default::default() }
}

impl Location {
    /// `file:///abs`, a plain path, `s3://bucket/prefix`, `gs://bucket/prefix`,
    /// `az://container/prefix` or `http(s)://host/prefix`.
    fn parse(uri: &str, options: &StoreOptions) -> Result<Location, ArtifactStoreError> {
        use object_store::{aws, azure, gcp, http};
        let bad = |message: String| ArtifactStoreError::Uri { uri: uri.to_owned(), message };
        if uri.trim().is_empty() {
            return Err(bad("empty".into()));
        }
        if !uri.contains("://") {
            return Ok(Location::Local(PathBuf::from(uri)));
        }
        let url = Url::parse(uri).map_err(|e| bad(e.to_string()))?;
        let (scheme, prefix) = ObjectStoreScheme::parse(&url).map_err(|e| bad(e.to_string()))?;
        // The stores' HTTP clients use rustls without choosing a provider.
        reco_runtime::tls::install_crypto_provider();
        let built = |r: object_store::Result<Arc<dyn ObjectStore>>| r.map_err(|e| bad(e.to_string()));
        let store = match scheme {
            ObjectStoreScheme::Local => return Ok(Location::Local(PathBuf::from(url.path()))),
            ObjectStoreScheme::AmazonS3 => {
                let b = aws::AmazonS3Builder::from_env().with_url(uri).with_retry(retry());
                built(
                    options
                        .apply(b, |b, k: aws::AmazonS3ConfigKey, v| b.with_config(k, v))
                        .build()
                        .map(|s| Arc::new(s) as _),
                )?
            }
            ObjectStoreScheme::GoogleCloudStorage => {
                let b = gcp::GoogleCloudStorageBuilder::from_env().with_url(uri).with_retry(retry());
                built(
                    options
                        .apply(b, |b, k: gcp::GoogleConfigKey, v| b.with_config(k, v))
                        .build()
                        .map(|s| Arc::new(s) as _),
                )?
            }
            ObjectStoreScheme::MicrosoftAzure => {
                let b = azure::MicrosoftAzureBuilder::from_env().with_url(uri).with_retry(retry());
                built(
                    options
                        .apply(b, |b, k: azure::AzureConfigKey, v| b.with_config(k, v))
                        .build()
                        .map(|s| Arc::new(s) as _),
                )?
            }
            // The URI is the base; objects are named relative to it.
            ObjectStoreScheme::Http => {
                let b = http::HttpBuilder::new().with_url(uri).with_retry(retry());
                let store = built(b.build().map(|s| Arc::new(s) as _))?;
                return Ok(Location::Remote { store, prefix: ObjectPath::default() });
            }
            other => return Err(bad(format!("{other:?} is not a store for model artifacts"))),
        };
        if prefix.as_ref().is_empty() {
            return Err(bad("names a bucket but no prefix: use s3://bucket/prefix".into()));
        }
        Ok(Location::Remote { store, prefix })
    }
}

/// Makes the version `uri` names available as a verified local directory.
///
/// A local directory is verified in place. A remote one is downloaded into
/// `cache/<digest>` (kept across restarts of the pod, shared by versions
/// with the same digest): manifest first, then every file with its sha256
/// and size checked while it streams, into a temporary directory renamed
/// into place only when complete. A missing, partial, corrupted or
/// substituted file (or a manifest whose digest is not `expected`) is an
/// error naming it, and nothing is left for a later load to pick up.
pub async fn fetch(
    uri: &str,
    options: &StoreOptions,
    cache: &Path,
    expected: Option<&Digest>,
) -> Result<Fetched, ArtifactStoreError> {
    let (store, prefix) = match Location::parse(uri, options)? {
        Location::Local(dir) => {
            let expected = expected.cloned();
            let digest =
                tokio::task::spawn_blocking(move || manifest::verify_dir(&dir, expected.as_ref()).map(|d| (d, dir)))
                    .await
                    .map_err(|e| ArtifactStoreError::Uri {
                        uri: uri.to_owned(),
                        message: format!("verification task: {e}"),
                    })??;
            return Ok(Fetched { dir: digest.1, digest: digest.0, downloaded_bytes: 0 });
        }
        Location::Remote { store, prefix } => (store, prefix),
    };
    let store_err = |source: object_store::Error| ArtifactStoreError::Store { uri: uri.to_owned(), source };
    let manifest_bytes = match store.get(&prefix.clone().join(MANIFEST)).await {
        Ok(got) => got.bytes().await.map_err(store_err)?,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(ArtifactStoreError::MissingManifest { uri: uri.to_owned() });
        }
        Err(e) => return Err(store_err(e)),
    };
    let manifest = Manifest::parse(&manifest_bytes)
        .map_err(|message| ArtifactStoreError::BadManifest { uri: uri.to_owned(), message })?;
    let digest = manifest::check_digest(uri, &manifest_bytes, expected)?;

    let dir = cache.join(digest.hex());
    if tokio::fs::try_exists(dir.join(MANIFEST)).await.unwrap_or(false) {
        tracing::info!(uri, %digest, dir = %dir.display(), "artifacts already in the cache");
        return Ok(Fetched { dir, digest, downloaded_bytes: 0 });
    }
    let partial = cache.join(format!(".partial-{}-{}", digest.hex(), std::process::id()));
    let result = download_into(&*store, &prefix, &manifest, &manifest_bytes, uri, &partial).await;
    match result {
        Ok(()) => {
            tokio::fs::rename(&partial, &dir).await.map_err(|e| ArtifactStoreError::io(&dir, e))?;
            Ok(Fetched { dir, digest, downloaded_bytes: manifest.total_bytes() })
        }
        Err(e) => {
            let _ = tokio::fs::remove_dir_all(&partial).await;
            Err(e)
        }
    }
}

async fn download_into(
    store: &dyn ObjectStore,
    prefix: &ObjectPath,
    manifest: &Manifest,
    manifest_bytes: &[u8],
    uri: &str,
    dir: &Path,
) -> Result<(), ArtifactStoreError> {
    let _ = tokio::fs::remove_dir_all(dir).await;
    tokio::fs::create_dir_all(dir).await.map_err(|e| ArtifactStoreError::io(dir, e))?;
    let started = Instant::now();
    for (name, want) in &manifest.files {
        let found = download_file(store, &prefix.clone().join(name.as_str()), &dir.join(name), uri, name).await?;
        manifest::check_file(uri, name, want, &found)?;
    }
    // The manifest last: its presence marks a complete version.
    let path = dir.join(MANIFEST);
    tokio::fs::write(&path, manifest_bytes).await.map_err(|e| ArtifactStoreError::io(path, e))?;
    tracing::info!(
        uri,
        files = manifest.files.len(),
        bytes = manifest.total_bytes(),
        seconds = started.elapsed().as_secs_f64(),
        "artifacts downloaded and verified"
    );
    Ok(())
}

/// Streams one object to `path`, hashing as it goes.
async fn download_file(
    store: &dyn ObjectStore,
    location: &ObjectPath,
    path: &Path,
    uri: &str,
    name: &str,
) -> Result<FileEntry, ArtifactStoreError> {
    let got = match store.get(location).await {
        Ok(got) => got,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(ArtifactStoreError::MissingFile { uri: uri.to_owned(), file: name.to_owned() });
        }
        Err(source) => return Err(ArtifactStoreError::Store { uri: uri.to_owned(), source }),
    };
    let mut file = tokio::fs::File::create(path).await.map_err(|e| ArtifactStoreError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    let mut stream = got.into_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|source| ArtifactStoreError::Store { uri: uri.to_owned(), source })?;
        hasher.update(&chunk);
        bytes += chunk.len() as u64;
        file.write_all(&chunk).await.map_err(|e| ArtifactStoreError::io(path, e))?;
    }
    file.sync_all().await.map_err(|e| ArtifactStoreError::io(path, e))?;
    Ok(FileEntry { sha256: format!("{:x}", hasher.finalize()), bytes })
}

/// Uploads the version in `dir` to `uri` and returns its digest: writes
/// the manifest if `dir` has none, then every file it lists, and the
/// manifest last, so a reader never sees a manifest of a partial upload.
/// A local target (`file://`) is a copy into that directory.
pub async fn upload(dir: &Path, uri: &str, options: &StoreOptions) -> Result<Digest, ArtifactStoreError> {
    let manifest_path = dir.join(MANIFEST);
    if !manifest_path.exists() {
        let owned = dir.to_path_buf();
        tokio::task::spawn_blocking(move || manifest::write_manifest(&owned))
            .await
            .map_err(|e| ArtifactStoreError::Uri { uri: uri.to_owned(), message: format!("manifest task: {e}") })??;
    }
    let manifest_bytes =
        tokio::fs::read(&manifest_path).await.map_err(|e| ArtifactStoreError::io(&manifest_path, e))?;
    let manifest = Manifest::parse(&manifest_bytes)
        .map_err(|message| ArtifactStoreError::BadManifest { uri: dir.display().to_string(), message })?;
    let (store, prefix): (Arc<dyn ObjectStore>, ObjectPath) = match Location::parse(uri, options)? {
        Location::Local(target) => {
            tokio::fs::create_dir_all(&target).await.map_err(|e| ArtifactStoreError::io(&target, e))?;
            let store = object_store::local::LocalFileSystem::new_with_prefix(&target)
                .map_err(|source| ArtifactStoreError::Store { uri: uri.to_owned(), source })?;
            (Arc::new(store), ObjectPath::default())
        }
        Location::Remote { store, prefix } => (store, prefix),
    };
    let store_err = |source: object_store::Error| ArtifactStoreError::Store { uri: uri.to_owned(), source };
    let started = Instant::now();
    for name in manifest.files.keys() {
        let path = dir.join(name);
        let mut file = tokio::fs::File::open(&path).await.map_err(|e| ArtifactStoreError::io(&path, e))?;
        let upload = store.put_multipart(&prefix.clone().join(name.as_str())).await.map_err(store_err)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = tokio::io::AsyncReadExt::read(&mut file, &mut buf)
                .await
                .map_err(|e| ArtifactStoreError::io(&path, e))?;
            if n == 0 {
                break;
            }
            writer.wait_for_capacity(PARTS_IN_FLIGHT).await.map_err(store_err)?;
            writer.write(&buf[..n]);
        }
        writer.finish().await.map_err(store_err)?;
    }
    store.put(&prefix.clone().join(MANIFEST), PutPayload::from(manifest_bytes.clone())).await.map_err(store_err)?;
    tracing::info!(
        uri,
        files = manifest.files.len(),
        bytes = manifest.total_bytes(),
        seconds = started.elapsed().as_secs_f64(),
        "artifacts uploaded"
    );
    Ok(Digest::of(&manifest_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_are_checked_before_any_request() {
        for (uri, why) in [
            ("", "empty"),
            ("s3://", "Unable to recognise"),
            ("s3://bucket", "no prefix"),
            ("s3://bucket/", "no prefix"),
            ("ftp://host/x", "Unable to recognise"),
            ("memory:///x", "not a store for model artifacts"),
            ("http://[::1/x", "invalid IPv6"),
        ] {
            let err = match Location::parse(uri, &StoreOptions::default()) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{uri:?} was accepted"),
            };
            assert!(err.contains(why) && err.contains("artifactUri"), "{uri:?}: {err}");
        }
        assert!(
            matches!(Location::parse("/models/v1", &StoreOptions::default()), Ok(Location::Local(p)) if p == Path::new("/models/v1"))
        );
        assert!(
            matches!(Location::parse("file:///models/v1", &StoreOptions::default()), Ok(Location::Local(p)) if p == Path::new("/models/v1"))
        );
        assert!(
            matches!(Location::parse("s3://bucket/models/v1", &StoreOptions::default()), Ok(Location::Remote { prefix, .. }) if prefix.as_ref() == "models/v1")
        );
    }

    #[tokio::test]
    async fn upload_to_a_directory_then_fetch_verifies_and_caches() {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("items.json"), b"[1]").unwrap();
        std::fs::write(src.path().join("big.safetensors"), vec![3u8; (PART_BYTES * 2) + 17]).unwrap();
        let target = tempfile::tempdir().unwrap();
        let uri = format!("file://{}/v1", target.path().display());
        let options = StoreOptions::default();
        let digest = upload(src.path(), &uri, &options).await.unwrap();
        let fetched = fetch(&uri, &options, Path::new("/nonexistent-cache"), Some(&digest)).await.unwrap();
        assert_eq!((fetched.dir, fetched.digest, fetched.downloaded_bytes), (target.path().join("v1"), digest, 0));
    }
}

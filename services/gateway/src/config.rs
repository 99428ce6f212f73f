//! The live configuration (routing table + version resolver) and its hot reload.
//!
//! Kubernetes updates a mounted ConfigMap by swapping a symlink, which file watches miss, so the
//! files are polled and compared by content hash. A refused file keeps the last good
//! configuration; each distinct refused content is logged and counted once.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use reco_contracts::{RoutedVersion, RoutingError, RoutingTable};
use xxhash_rust::xxh3::xxh3_64;

use crate::args::MAX_NAME_LEN;
use crate::backends::{EndpointBackends, EndpointsError, VersionBackends, VersionSource};

/// A routing table whose every version resolves, with the resolver it was checked against.
#[derive(Clone)]
pub struct Snapshot {
    pub routing: RoutingTable,
    pub backends: Arc<dyn VersionBackends>,
}

impl Snapshot {
    /// The version with the largest weight (the first such): the stable one.
    pub fn stable_version(&self) -> Option<&str> {
        let mut best: Option<&RoutedVersion> = None;
        for version in &self.routing.versions {
            if best.is_none_or(|b| version.weight > b.weight) {
                best = Some(version);
            }
        }
        best.map(|v| v.name.as_str())
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {error}")]
    Read { path: PathBuf, error: String },
    #[error("routing file {path} is not a routing table: {error}")]
    Parse { path: PathBuf, error: String },
    #[error("routing file {path}: {source}")]
    Invalid { path: PathBuf, source: RoutingError },
    #[error("routing file {path} is for pipeline {found:?}, this gateway serves {expected:?}")]
    WrongPipeline { path: PathBuf, found: String, expected: String },
    #[error("routing names version {version:?}, which has no retrieval/ranking backends (known: {known:?})")]
    Unresolved { version: String, known: Vec<String> },
    #[error("version name {version:?} is longer than {MAX_NAME_LEN} bytes")]
    NameTooLong { version: String },
    #[error("without a routing file exactly one version must be configured, found {0:?}")]
    NotSingleVersion(Vec<String>),
    #[error("endpoints file {path}: {source}")]
    Endpoints { path: PathBuf, source: EndpointsError },
}

/// Reads and checks the configuration files, remembering what it saw last.
pub struct Loader {
    pipeline: String,
    routing_file: Option<PathBuf>,
    versions: VersionSource,
    /// Hash of the file contents (or read errors) seen last: unchanged files are not re-parsed.
    seen: Option<u64>,
    /// Last good endpoints, whose channels unchanged versions keep.
    endpoints: Option<Arc<EndpointBackends>>,
}

impl Loader {
    /// Fails at once for a fixed resolver that a missing routing file makes ambiguous.
    pub fn new(pipeline: &str, routing_file: Option<PathBuf>, versions: VersionSource) -> Result<Self, ConfigError> {
        if let (None, VersionSource::Static(backends)) = (&routing_file, &versions) {
            let known = backends.versions();
            if known.len() != 1 {
                return Err(ConfigError::NotSingleVersion(known));
            }
        }
        Ok(Self { pipeline: pipeline.to_owned(), routing_file, versions, seen: None, endpoints: None })
    }

    /// `None` when the files did not change since the last call; otherwise the new snapshot or
    /// why it was refused.
    pub async fn poll(&mut self) -> Option<Result<Snapshot, ConfigError>> {
        let routing = match &self.routing_file {
            Some(path) => Some((path.clone(), read(path).await)),
            None => None,
        };
        let endpoints = match &self.versions {
            VersionSource::EndpointsFile(path) => Some((path.clone(), read(path).await)),
            VersionSource::Static(_) => None,
        };
        let hash = xxh3_64(format!("{routing:?}\u{0}{endpoints:?}").as_bytes());
        if self.seen == Some(hash) {
            return None;
        }
        self.seen = Some(hash);
        Some(self.build(routing, endpoints))
    }

    fn build(
        &mut self,
        routing: Option<(PathBuf, Result<String, String>)>,
        endpoints: Option<(PathBuf, Result<String, String>)>,
    ) -> Result<Snapshot, ConfigError> {
        let (backends, new_endpoints): (Arc<dyn VersionBackends>, _) = match (&self.versions, endpoints) {
            (VersionSource::Static(backends), _) => (backends.clone(), None),
            (VersionSource::EndpointsFile(_), Some((path, text))) => {
                let text = text.map_err(|error| ConfigError::Read { path: path.clone(), error })?;
                let parsed = EndpointBackends::parse(&text, self.endpoints.as_deref())
                    .map_err(|source| ConfigError::Endpoints { path, source })?;
                let parsed = Arc::new(parsed);
                (parsed.clone(), Some(parsed))
            }
            (VersionSource::EndpointsFile(path), None) => {
                return Err(ConfigError::Read { path: path.clone(), error: "not read".to_owned() });
            }
        };
        let table = match routing {
            Some((path, text)) => {
                let text = text.map_err(|error| ConfigError::Read { path: path.clone(), error })?;
                let table = parse_routing(&path, &text)?;
                if table.pipeline != self.pipeline {
                    return Err(ConfigError::WrongPipeline {
                        path,
                        found: table.pipeline,
                        expected: self.pipeline.clone(),
                    });
                }
                table
            }
            None => match backends.versions().as_slice() {
                [only] => RoutingTable {
                    pipeline: self.pipeline.clone(),
                    salt: self.pipeline.clone(),
                    versions: vec![RoutedVersion { name: only.clone(), weight: 100 }],
                    shadow: None,
                },
                other => return Err(ConfigError::NotSingleVersion(other.to_vec())),
            },
        };
        check_resolves(&table, backends.as_ref())?;
        if let Some(endpoints) = new_endpoints {
            self.endpoints = Some(endpoints);
        }
        Ok(Snapshot { routing: table, backends })
    }
}

async fn read(path: &Path) -> Result<String, String> {
    tokio::fs::read_to_string(path).await.map_err(|error| error.to_string())
}

/// Parses and validates a routing table.
pub fn parse_routing(path: &Path, text: &str) -> Result<RoutingTable, ConfigError> {
    let table: RoutingTable = serde_saphyr::from_str(text)
        .map_err(|error| ConfigError::Parse { path: path.to_owned(), error: error.to_string() })?;
    table.validate().map_err(|source| ConfigError::Invalid { path: path.to_owned(), source })?;
    Ok(table)
}

fn check_resolves(table: &RoutingTable, backends: &dyn VersionBackends) -> Result<(), ConfigError> {
    let names = table.versions.iter().map(|v| &v.name).chain(&table.shadow);
    for name in names {
        if name.len() > MAX_NAME_LEN {
            return Err(ConfigError::NameTooLong { version: name.clone() });
        }
        if backends.resolve(name).is_none() {
            return Err(ConfigError::Unresolved { version: name.clone(), known: backends.versions() });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn stable_is_the_heaviest_version() {
        let snapshot = |versions: &[(&str, u8)]| Snapshot {
            routing: RoutingTable {
                pipeline: "p".into(),
                salt: "p".into(),
                versions: versions.iter().map(|(n, w)| RoutedVersion { name: (*n).into(), weight: *w }).collect(),
                shadow: None,
            },
            backends: Arc::new(crate::backends::StaticBackends::default()),
        };
        assert_eq!(snapshot(&[("v2", 10), ("v1", 90)]).stable_version(), Some("v1"));
        assert_eq!(snapshot(&[("v2", 50), ("v1", 50)]).stable_version(), Some("v2"));
        assert_eq!(snapshot(&[]).stable_version(), None);
    }

    #[tokio::test]
    async fn endpoints_file_alone_needs_exactly_one_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("endpoints.yaml");
        let one: BTreeMap<&str, BTreeMap<&str, &str>> =
            BTreeMap::from([("v1", BTreeMap::from([("retrieval", "http://r:1"), ("ranking", "http://k:1")]))]);
        std::fs::write(&path, serde_json::to_string(&one).expect("json")).expect("write");
        let mut loader = Loader::new("p", None, VersionSource::EndpointsFile(path.clone())).expect("loader");
        let snapshot = loader.poll().await.expect("first poll").expect("valid");
        assert_eq!(snapshot.routing.versions, [RoutedVersion { name: "v1".into(), weight: 100 }]);
        assert!(loader.poll().await.is_none(), "unchanged");
        std::fs::write(&path, "v1: {retrieval: 'http://r:1', ranking: 'http://k:1'}\nv2: {retrieval: 'http://r:2', ranking: 'http://k:2'}\n")
            .expect("write");
        let error = loader.poll().await.expect("changed").err().expect("two versions").to_string();
        assert!(error.contains("exactly one version"), "{error}");
        std::fs::remove_file(&path).expect("remove");
        let error = loader.poll().await.expect("changed").err().expect("missing").to_string();
        assert!(error.starts_with("cannot read"), "{error}");
    }

    #[test]
    fn static_resolver_without_routing_file_must_be_single() {
        let error = Loader::new("p", None, VersionSource::Static(Arc::new(crate::backends::StaticBackends::default())))
            .err()
            .expect("no version");
        assert_eq!(error.to_string(), "without a routing file exactly one version must be configured, found []");
    }
}

//! Which retrieval and ranking services serve a model version: a fixed map in `reco standalone`,
//! the operator's endpoints file (hot-reloaded with the routing file) in `reco serve gateway`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use reco_contracts::routing::{Endpoints, VersionEndpoints};
use reco_proto::events_server::Events;
use reco_proto::features_server::Features;
use reco_proto::ranking_server::Ranking;
use reco_proto::retrieval_server::Retrieval;

use crate::remote::{RemoteError, RemoteRanking, RemoteRetrieval, lazy_channel};

/// The two services of one model version.
#[derive(Clone)]
pub struct VersionBackend {
    pub retrieval: Arc<dyn Retrieval>,
    pub ranking: Arc<dyn Ranking>,
}

impl fmt::Debug for VersionBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VersionBackend").finish_non_exhaustive()
    }
}

/// Resolves a version name (as the routing table names it) to its services.
pub trait VersionBackends: Send + Sync + 'static {
    fn resolve(&self, version: &str) -> Option<VersionBackend>;
    /// Every version this resolver knows, sorted.
    fn versions(&self) -> Vec<String>;
}

/// A fixed map, for in-process services.
#[derive(Clone, Debug, Default)]
pub struct StaticBackends(BTreeMap<String, VersionBackend>);

impl StaticBackends {
    pub fn new(versions: impl IntoIterator<Item = (String, VersionBackend)>) -> Self {
        Self(versions.into_iter().collect())
    }
}

impl VersionBackends for StaticBackends {
    fn resolve(&self, version: &str) -> Option<VersionBackend> {
        self.0.get(version).cloned()
    }

    fn versions(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }
}

/// Why an endpoints file was refused.
#[derive(Debug, thiserror::Error)]
pub enum EndpointsError {
    #[error("endpoints file is not a map of version -> {{retrieval, ranking}}: {0}")]
    Parse(String),
    #[error("endpoints of version {version:?}: {source}")]
    Url { version: String, source: RemoteError },
}

/// Remote services read from the endpoints file: `{version: {retrieval: url, ranking: url}}`.
#[derive(Clone, Debug, Default)]
pub struct EndpointBackends(BTreeMap<String, (VersionEndpoints, VersionBackend)>);

impl EndpointBackends {
    /// Parses `yaml`; versions whose URLs did not change keep `previous`'s channels (and their
    /// open connections).
    pub fn parse(yaml: &str, previous: Option<&EndpointBackends>) -> Result<Self, EndpointsError> {
        let parsed: Endpoints =
            serde_saphyr::from_str(yaml).map_err(|error| EndpointsError::Parse(error.to_string()))?;
        let mut versions = BTreeMap::new();
        for (version, endpoints) in parsed {
            let reused = previous.and_then(|p| p.0.get(&version)).filter(|(old, _)| *old == endpoints);
            let backend = match reused {
                Some((_, backend)) => backend.clone(),
                None => {
                    let channel = |url: &str| {
                        lazy_channel(url).map_err(|source| EndpointsError::Url { version: version.clone(), source })
                    };
                    VersionBackend {
                        retrieval: Arc::new(RemoteRetrieval::new(channel(&endpoints.retrieval)?)),
                        ranking: Arc::new(RemoteRanking::new(channel(&endpoints.ranking)?)),
                    }
                }
            };
            versions.insert(version, (endpoints, backend));
        }
        Ok(Self(versions))
    }
}

impl VersionBackends for EndpointBackends {
    fn resolve(&self, version: &str) -> Option<VersionBackend> {
        self.0.get(version).map(|(_, backend)| backend.clone())
    }

    fn versions(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }
}

/// Where the version resolver comes from.
#[derive(Clone)]
pub enum VersionSource {
    /// Fixed for the life of the process (`reco standalone`).
    Static(Arc<dyn VersionBackends>),
    /// The operator's endpoints file, polled with the routing file (`reco serve gateway`).
    EndpointsFile(PathBuf),
}

impl fmt::Debug for VersionSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Static(backends) => f.debug_tuple("Static").field(&backends.versions()).finish(),
            Self::EndpointsFile(path) => f.debug_tuple("EndpointsFile").field(path).finish(),
        }
    }
}

/// Everything the gateway calls.
#[derive(Clone)]
pub struct Backends {
    pub features: Arc<dyn Features>,
    /// Must answer only once events are durable.
    pub events: Arc<dyn Events>,
    pub versions: VersionSource,
}

impl fmt::Debug for Backends {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backends").field("versions", &self.versions).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "v1:\n  retrieval: http://r1:50051\n  ranking: http://k1:50051\n\
                        v2:\n  retrieval: http://r2:50051\n  ranking: http://k2:50051\n";

    #[tokio::test]
    async fn parses_the_operators_endpoints_file() {
        let backends = EndpointBackends::parse(FILE, None).expect("valid");
        assert_eq!(backends.versions(), ["v1", "v2"]);
        assert!(backends.resolve("v2").is_some());
        assert!(backends.resolve("v3").is_none());
    }

    #[tokio::test]
    async fn unchanged_versions_keep_their_channels() {
        let first = EndpointBackends::parse(FILE, None).expect("valid");
        let changed = FILE.replace("http://r2:50051", "http://r2b:50051");
        let second = EndpointBackends::parse(&changed, Some(&first)).expect("valid");
        let same = |a: &EndpointBackends, b: &EndpointBackends, v: &str| {
            let (a, b) = (a.resolve(v).expect("known"), b.resolve(v).expect("known"));
            Arc::ptr_eq(&a.retrieval, &b.retrieval)
        };
        assert!(same(&first, &second, "v1"));
        assert!(!same(&first, &second, "v2"));
    }

    #[tokio::test]
    async fn bad_files_name_the_problem() {
        let error = EndpointBackends::parse("v1: [1, 2]", None).expect_err("not a map").to_string();
        assert!(error.starts_with("endpoints file is not a map"), "{error}");
        let error = EndpointBackends::parse("v1:\n  retrieval: \"not a url\"\n  ranking: http://k\n", None)
            .expect_err("bad url")
            .to_string();
        assert!(error.contains("\"v1\""), "{error}");
    }
}

//! `reco serve retrieval`: from flags to a running gRPC server.

use std::future::Future;
use std::sync::Arc;

use reco_model::artifacts::{ArtifactError, VersionArtifacts};
use reco_proto::retrieval_server::RetrievalServer;
use reco_vector_store::{Backend, CollectionSpec, Distance, HnswParams, OpenMode, StoreError, VectorStore};

use crate::args::{RetrievalArgs, Settings, VectorStoreKind};
use crate::metrics::Metrics;
use crate::service::{RetrievalError, RetrievalService};

/// Why the service could not be built from its flags.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("--model-uri: {0}")]
    Artifacts(#[from] ArtifactError),
    #[error("--vector-store=qdrant needs --qdrant-url")]
    MissingQdrantUrl,
    #[error("vector store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Service(#[from] RetrievalError),
}

/// Opens (creating if missing) the collection `<pipeline>__<model-version>` on the backend the flags name.
pub async fn open_store(args: &RetrievalArgs, dim: usize) -> Result<Arc<dyn VectorStore>, BuildError> {
    let backend = match args.vector_store {
        VectorStoreKind::Embedded => Backend::Embedded { dir: args.data_dir.join("vectors") },
        VectorStoreKind::Qdrant => {
            Backend::Server { url: args.qdrant_url.clone().ok_or(BuildError::MissingQdrantUrl)? }
        }
    };
    let spec = CollectionSpec {
        pipeline: args.version.pipeline.clone(),
        version: args.version.model_version.clone(),
        dim,
        distance: Distance::Dot,
    };
    Ok(reco_vector_store::open(&backend, &spec, OpenMode::CreateIfMissing, HnswParams::default()).await?)
}

/// The service for already loaded `artifacts` (standalone shares them with ranking), per the flags.
/// (Not an `async fn`, so that the future is `Send` although `VersionArtifacts` is not `Sync`.)
pub fn build(
    args: &RetrievalArgs,
    artifacts: Arc<VersionArtifacts>,
    metrics: Metrics,
) -> impl Future<Output = Result<RetrievalService, BuildError>> + Send + '_ {
    let (dim, counts) = (artifacts.two_tower.config.out_dim as usize, artifacts.ranker_file.candidates);
    let settings = Settings::from_args(args, counts);
    async move {
        let store = open_store(args, dim).await?;
        Ok(RetrievalService::start(artifacts, args.version.model_version.clone(), settings, store, metrics).await?)
    }
}

/// The gRPC service (`Retrieval`) to serve with `reco_proto::serve`.
pub fn grpc_routes(service: RetrievalService) -> tonic::service::Routes {
    tonic::service::Routes::new(RetrievalServer::new(service))
}

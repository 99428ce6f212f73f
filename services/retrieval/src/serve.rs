//! `reco serve retrieval`: from flags to a running gRPC server.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use reco_model::artifacts::{ArtifactError, VersionArtifacts, local_dir};
use reco_proto::retrieval_server::RetrievalServer;
use reco_vector_store::{Backend, CollectionSpec, Distance, HnswParams, OpenMode, StoreError, VectorStore};
use tonic::transport::server::TcpIncoming;

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
    #[error("loading artifacts: {0}")]
    Join(String),
}

/// Why the gRPC server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("binding {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Loads the version named by `--model-uri` (on the blocking pool: it reads and parses safetensors).
pub async fn load_artifacts(args: &RetrievalArgs) -> Result<Arc<VersionArtifacts>, BuildError> {
    let dir = local_dir(&args.model_uri)?;
    let a = tokio::task::spawn_blocking(move || VersionArtifacts::load(&dir))
        .await
        .map_err(|e| BuildError::Join(e.to_string()))??;
    Ok(Arc::new(a))
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
        pipeline: args.pipeline.clone(),
        version: args.model_version.clone(),
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
        Ok(RetrievalService::start(artifacts, args.model_version.clone(), settings, store, metrics).await?)
    }
}

/// Serves `Retrieval` on `addr` until `shutdown` resolves (in-flight calls finish).
pub async fn serve_grpc(
    service: RetrievalService,
    addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })?;
    serve_grpc_on(service, listener, shutdown).await
}

/// Like [`serve_grpc`] on a bound listener (tests bind `127.0.0.1:0`).
pub async fn serve_grpc_on(
    service: RetrievalService,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    tonic::transport::Server::builder()
        .add_service(RetrievalServer::new(service))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await?;
    Ok(())
}

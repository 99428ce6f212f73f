//! The flags every per-version service (`reco serve retrieval`, `reco serve
//! ranking`) takes, as the operator's version Deployments pass them.

use std::net::SocketAddr;
use std::path::PathBuf;

/// The flags that name the served model version and its addresses, shared by `reco serve retrieval` and
/// `reco serve ranking` (the operator's `version_deployment` passes them to both).
#[derive(clap::Args, Clone, Debug)]
pub struct VersionFlags {
    /// The RecommenderPipeline this version belongs to.
    #[arg(long)]
    pub pipeline: String,
    /// The ModelVersion served (echoed in every response).
    #[arg(long)]
    pub model_version: String,
    /// The version's artifacts as `reco train` wrote them: `s3://bucket/prefix`, `gs://...`, `az://...`,
    /// `https://...`, `file:///abs/path` or a path. Object stores take their credentials from the usual
    /// environment variables (AWS_*, GOOGLE_*, AZURE_*).
    #[arg(long)]
    pub model_uri: String,
    /// The digest the artifacts must have (`sha256:...`, the ModelVersion's spec.artifactDigest); a version
    /// with another is refused. Without it, the files are still checked against the version's manifest.
    #[arg(long)]
    pub artifact_digest: Option<String>,
    /// Where artifacts from an object store are downloaded and verified (a volume that lives as long as
    /// the pod, so a restarted container does not download again).
    #[arg(long, default_value = "/var/cache/reco/artifacts")]
    pub artifact_cache: PathBuf,
    /// Address of the HTTP server (/metrics, /healthz, /readyz).
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub http: SocketAddr,
    /// Address of the gRPC server (the service's API).
    #[arg(long, default_value = "0.0.0.0:50051")]
    pub grpc: SocketAddr,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_flags_need_the_version_and_default_the_addresses() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            version: VersionFlags,
        }
        let cli = Cli::try_parse_from(["r", "--pipeline=p", "--model-version=v1", "--model-uri=file:///m/v1"]).unwrap();
        let v = cli.version;
        assert_eq!((v.pipeline.as_str(), v.model_version.as_str(), v.model_uri.as_str()), ("p", "v1", "file:///m/v1"));
        assert_eq!((v.http.to_string(), v.grpc.to_string()), ("0.0.0.0:8080".into(), "0.0.0.0:50051".into()));
        assert_eq!((v.artifact_digest, v.artifact_cache), (None, PathBuf::from("/var/cache/reco/artifacts")));
        assert!(Cli::try_parse_from(["r", "--pipeline=p", "--model-version=v1"]).is_err());
    }
}

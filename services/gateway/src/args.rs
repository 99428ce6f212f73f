//! Command-line flags of `reco serve gateway` (the operator passes the first block) and the
//! validated settings the gateway runs with.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use reco_core::rerank::RerankSettings;
use reco_core::token::{MIN_KEY_LEN, TokenSigner};

use crate::error::GatewayError;

/// Longest pipeline or model version name accepted (the Kubernetes object name limit), so a
/// token over them always fits in [`reco_core::token::MAX_TOKEN_LEN`].
pub const MAX_NAME_LEN: usize = 253;

/// Flags of the gateway. The operator passes `--pipeline --http --grpc --routing-file
/// --endpoints-file --features-url --deadline-ms --cache-ttl-seconds --mmr-lambda
/// --max-per-category --freshness-boost`; the rest have defaults.
#[derive(clap::Args, Debug, Clone)]
pub struct GatewayArgs {
    /// The RecommenderPipeline this gateway serves (label `pipeline` of every metric).
    #[arg(long, env = "RECO_PIPELINE")]
    pub pipeline: String,
    /// HTTP/JSON listen address (API, /metrics, /healthz, /readyz).
    #[arg(long, env = "RECO_HTTP", default_value = "0.0.0.0:8080")]
    pub http: SocketAddr,
    /// gRPC listen address (reco.v1.Gateway).
    #[arg(long, env = "RECO_GRPC", default_value = "0.0.0.0:50051")]
    pub grpc: SocketAddr,
    /// routing.yaml (a RoutingTable), polled every second; without it one version serves all users.
    #[arg(long, env = "RECO_ROUTING_FILE")]
    pub routing_file: Option<PathBuf>,
    /// endpoints.yaml (version -> {retrieval, ranking} gRPC URLs), polled with the routing file.
    #[arg(long, env = "RECO_ENDPOINTS_FILE")]
    pub endpoints_file: Option<PathBuf>,
    /// gRPC URL of the features service (serve mode).
    #[arg(long, env = "RECO_FEATURES_URL")]
    pub features_url: Option<String>,
    /// gRPC URL of the events service; defaults to --features-url (the features service ingests events).
    #[arg(long, env = "RECO_EVENTS_URL")]
    pub events_url: Option<String>,
    /// Time budget of one recommend call; late or failed stages are replaced by fallback items.
    #[arg(long, env = "RECO_DEADLINE_MS", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=60_000))]
    pub deadline_ms: u32,
    /// How long a user's recommendations stay cached (0 disables the cache).
    #[arg(long, env = "RECO_CACHE_TTL_SECONDS", default_value_t = 30)]
    pub cache_ttl_seconds: u32,
    /// Most cached recommendation pages.
    #[arg(long, env = "RECO_CACHE_CAPACITY", default_value_t = 100_000)]
    pub cache_capacity: u64,
    /// MMR trade-off in [0, 1]: 1 ranks by relevance only.
    #[arg(long, env = "RECO_MMR_LAMBDA", default_value_t = 0.7)]
    pub mmr_lambda: f64,
    /// Most items of one category per page (0: no limit).
    #[arg(long, env = "RECO_MAX_PER_CATEGORY", default_value_t = 3)]
    pub max_per_category: u32,
    /// Score boost in [0, 1] of a brand-new item.
    #[arg(long, env = "RECO_FRESHNESS_BOOST", default_value_t = 0.1)]
    pub freshness_boost: f64,
    /// Age at which the freshness boost has halved.
    #[arg(long, env = "RECO_FRESHNESS_HALF_LIFE_SECONDS", default_value_t = 86_400.0)]
    pub freshness_half_life_seconds: f64,
    /// Candidates asked of retrieval per request.
    #[arg(long, env = "RECO_CANDIDATES", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub candidates: u32,
    /// File holding the token signing key (at least 32 bytes; trailing newlines are ignored).
    #[arg(long, env = "RECO_TOKEN_KEY_FILE")]
    pub token_key_file: Option<PathBuf>,
    /// Token signing key (prefer the environment variable or --token-key-file). Without any key,
    /// a random one is generated: tokens then only verify on this process.
    #[arg(long, env = "RECO_TOKEN_KEY", hide_env_values = true)]
    pub token_key: Option<String>,
    /// Files of previous keys still accepted for verification (key rotation).
    #[arg(long, env = "RECO_TOKEN_PREVIOUS_KEY_FILES", value_delimiter = ',')]
    pub token_previous_key_files: Vec<PathBuf>,
    /// Oldest token accepted with an event.
    #[arg(long, env = "RECO_TOKEN_MAX_AGE_SECONDS", default_value_t = 86_400)]
    pub token_max_age_seconds: u64,
    /// Most events remembered in memory to count each (request, item, type) once (about 350
    /// bytes each); one evicted before its token expires can count again
    /// (reco_dedup_evictions_total). Unused with --dedup-redis-url.
    #[arg(long, env = "RECO_DEDUP_CAPACITY", default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub dedup_capacity: u64,
    /// Redis shared by every gateway replica to count each event once across replicas (e.g.
    /// redis://redis.reco.svc:6379); while it does not answer, events are refused with 503.
    #[arg(long, env = "RECO_DEDUP_REDIS_URL", hide_env_values = true)]
    pub dedup_redis_url: Option<String>,
    /// Most shadow requests in flight; more are dropped and counted.
    #[arg(long, env = "RECO_SHADOW_CONCURRENCY", default_value_t = 64)]
    pub shadow_concurrency: usize,
    /// Time limit of one mirrored (shadow) request.
    #[arg(long, env = "RECO_SHADOW_TIMEOUT_MS", default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(1..=60_000))]
    pub shadow_timeout_ms: u32,
    /// Time limit of forwarding one event to the events service.
    #[arg(long, env = "RECO_EVENTS_TIMEOUT_MS", default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(1..=60_000))]
    pub events_timeout_ms: u32,
    /// Largest HTTP request body accepted (413 above).
    #[arg(long, env = "RECO_BODY_LIMIT_BYTES", default_value_t = 64 * 1024)]
    pub body_limit_bytes: usize,
    /// How often the fallback (popular) list is refreshed.
    #[arg(long, env = "RECO_FALLBACK_REFRESH_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub fallback_refresh_seconds: u64,
    /// How often the routing and endpoints files are polled.
    #[arg(long, env = "RECO_RELOAD_INTERVAL_MS", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(10..))]
    pub reload_interval_ms: u64,
}

/// What the request path needs from the flags, checked once at startup.
#[derive(Debug, Clone)]
pub struct Settings {
    pub pipeline: String,
    pub deadline: Duration,
    /// `None`: cache disabled.
    pub cache_ttl: Option<Duration>,
    pub cache_capacity: u64,
    /// Rerank settings with `page_size` replaced per request.
    pub rerank: RerankSettings,
    pub candidates: u32,
    pub token_max_age: Duration,
    pub dedup_capacity: u64,
    pub shadow_concurrency: usize,
    pub shadow_timeout: Duration,
    pub events_timeout: Duration,
    pub body_limit_bytes: usize,
    pub fallback_refresh: Duration,
    pub reload_interval: Duration,
}

impl GatewayArgs {
    /// The validated settings; errors name the flag.
    pub fn settings(&self) -> Result<Settings, GatewayError> {
        if self.pipeline.is_empty() || self.pipeline.len() > MAX_NAME_LEN {
            return Err(GatewayError::Flag(format!(
                "--pipeline must be 1 to {MAX_NAME_LEN} bytes, got {}",
                self.pipeline.len()
            )));
        }
        let rerank = RerankSettings {
            mmr_lambda: self.mmr_lambda,
            max_per_category: self.max_per_category,
            freshness_boost: self.freshness_boost,
            freshness_half_life_seconds: self.freshness_half_life_seconds,
            page_size: 1,
        };
        rerank.validate().map_err(|error| GatewayError::Flag(format!("diversity flags: {error}")))?;
        if self.body_limit_bytes < 1024 {
            return Err(GatewayError::Flag(format!(
                "--body-limit-bytes must be at least 1024, got {}",
                self.body_limit_bytes
            )));
        }
        if self.shadow_concurrency == 0 {
            return Err(GatewayError::Flag("--shadow-concurrency must be at least 1".to_owned()));
        }
        Ok(Settings {
            pipeline: self.pipeline.clone(),
            deadline: Duration::from_millis(u64::from(self.deadline_ms)),
            cache_ttl: (self.cache_ttl_seconds > 0).then(|| Duration::from_secs(u64::from(self.cache_ttl_seconds))),
            cache_capacity: self.cache_capacity,
            rerank,
            candidates: self.candidates,
            token_max_age: Duration::from_secs(self.token_max_age_seconds),
            dedup_capacity: self.dedup_capacity,
            shadow_concurrency: self.shadow_concurrency,
            shadow_timeout: Duration::from_millis(u64::from(self.shadow_timeout_ms)),
            events_timeout: Duration::from_millis(u64::from(self.events_timeout_ms)),
            body_limit_bytes: self.body_limit_bytes,
            fallback_refresh: Duration::from_secs(self.fallback_refresh_seconds),
            reload_interval: Duration::from_millis(self.reload_interval_ms),
        })
    }

    /// The token signer from --token-key-file, else RECO_TOKEN_KEY / --token-key, else a random
    /// per-process key (logged: tokens then do not verify on other replicas or after a restart).
    pub fn token_signer(&self) -> Result<TokenSigner, GatewayError> {
        let key = match (&self.token_key_file, &self.token_key) {
            (Some(path), _) => read_key(path)?,
            (None, Some(key)) => key.as_bytes().to_vec(),
            (None, None) => {
                tracing::warn!(
                    "no token key given (--token-key-file or RECO_TOKEN_KEY): using a random key; \
                     tokens will not verify on other replicas or after a restart"
                );
                rand::random::<[u8; MIN_KEY_LEN]>().to_vec()
            }
        };
        let previous =
            self.token_previous_key_files.iter().map(|path| read_key(path)).collect::<Result<Vec<_>, _>>()?;
        TokenSigner::new(&key)
            .and_then(|signer| signer.with_previous_keys(previous.iter().map(Vec::as_slice)))
            .map_err(|error| GatewayError::Flag(format!("token key: {error}")))
    }
}

fn read_key(path: &std::path::Path) -> Result<Vec<u8>, GatewayError> {
    let mut key = std::fs::read(path).map_err(|source| GatewayError::Read { path: path.to_owned(), source })?;
    while key.last().is_some_and(|byte| matches!(byte, b'\n' | b'\r')) {
        key.pop();
    }
    Ok(key)
}

/// Parses gateway flags as the binary does (the first is the program name),
/// for tests of what they configure.
#[cfg(test)]
pub(crate) fn parse_flags<S: AsRef<str>>(flags: &[S]) -> Result<GatewayArgs, clap::Error> {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: GatewayArgs,
    }
    <Cli as clap::Parser>::try_parse_from(flags.iter().map(AsRef::as_ref)).map(|cli| cli.args)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact flags `gateway_deployment` in the operator writes.
    const OPERATOR_FLAGS: &[&str] = &[
        "gateway",
        "--pipeline=explore",
        "--http=0.0.0.0:8080",
        "--grpc=0.0.0.0:50051",
        "--routing-file=/etc/reco/routing/routing.yaml",
        "--endpoints-file=/etc/reco/routing/endpoints.yaml",
        "--features-url=http://explore-features.reco.svc:50051",
        "--deadline-ms=100",
        "--cache-ttl-seconds=30",
        "--mmr-lambda=0.7",
        "--max-per-category=3",
        "--freshness-boost=0.1",
    ];

    #[test]
    fn accepts_the_operators_flags() {
        let settings = parse_flags(OPERATOR_FLAGS).expect("operator flags parse").settings().expect("valid");
        assert_eq!(settings.pipeline, "explore");
        assert_eq!(settings.deadline, Duration::from_millis(100));
        assert_eq!(settings.cache_ttl, Some(Duration::from_secs(30)));
        assert_eq!(settings.candidates, 500);
    }

    #[test]
    fn bad_flags_are_named() {
        let flags: Vec<&str> =
            OPERATOR_FLAGS.iter().map(|f| if f.starts_with("--mmr-lambda") { "--mmr-lambda=1.5" } else { f }).collect();
        let error = parse_flags(&flags).expect("parses").settings().expect_err("out of range").to_string();
        assert!(error.contains("mmr_lambda"), "{error}");
        assert!(parse_flags(&[OPERATOR_FLAGS, &["--deadline-ms=0"]].concat()).is_err());
        let mut args = parse_flags(OPERATOR_FLAGS).expect("parses");
        args.token_key = Some("short".to_owned());
        assert!(args.token_signer().expect_err("short key").to_string().contains("at least 32"));
    }

    #[test]
    fn key_file_trailing_newline_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key");
        std::fs::write(&path, "0123456789abcdef0123456789abcdef\n").expect("write");
        let mut args = parse_flags(OPERATOR_FLAGS).expect("parses");
        args.token_key_file = Some(path);
        let from_file = args.token_signer().expect("key");
        let from_env = TokenSigner::new(b"0123456789abcdef0123456789abcdef").expect("key");
        let claims = reco_core::token::Claims {
            pipeline: "explore".into(),
            model_version: "v1".into(),
            request_id: "r".into(),
            issued_at: 100,
            user: reco_core::token::UserDigest::of("u"),
            user_group: 3,
            items: vec![reco_core::token::ItemDigest::of("i")],
        };
        let token = from_file.sign(&claims).expect("fits");
        assert_eq!(from_env.verify(&token, 100, Duration::from_secs(1)), Ok(claims));
    }
}

//! The processes the demo runs: `reco standalone` (the gateway and every
//! service behind it, serving the versions under a models directory) and,
//! with `--prometheus`, a real Prometheus scraping it every second. Both are
//! child processes on free loopback ports, killed when dropped; each can be
//! killed and restarted on the same port (the fault tests do).

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Url;

/// Why a process could not be started or did not become ready.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("{what}: {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("starting {what} ({bin}): {source}")]
    Spawn { what: &'static str, bin: PathBuf, source: std::io::Error },
    #[error("{what} exited ({status}) before it was ready; last log lines:\n{log}")]
    Exited { what: &'static str, status: String, log: String },
    #[error("{what} not ready at {url} after {seconds} s; last log lines:\n{log}")]
    NotReady { what: &'static str, url: String, seconds: u64, log: String },
    #[error("no free loopback port: {0}")]
    Port(std::io::Error),
    #[error("no Prometheus binary at {0}: run `eval \"$(scripts/env.sh)\"` (installs it) or set PROMETHEUS_BIN")]
    NoPrometheus(PathBuf),
}

/// A port free on loopback now.
pub fn free_port() -> Result<u16, StackError> {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).map_err(StackError::Port)
}

/// A child process that is killed when dropped, with its log file.
#[derive(Debug)]
struct Managed {
    what: &'static str,
    child: Option<Child>,
    log: PathBuf,
}

impl Managed {
    fn spawn(what: &'static str, mut command: Command, log: &Path) -> Result<Self, StackError> {
        let file = File::options().create(true).append(true).open(log).map_err(|source| StackError::Io {
            what: "log file",
            path: log.to_owned(),
            source,
        })?;
        let err =
            file.try_clone().map_err(|source| StackError::Io { what: "log file", path: log.to_owned(), source })?;
        let bin = PathBuf::from(command.get_program());
        let child = command
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .map_err(|source| StackError::Spawn { what, bin, source })?;
        Ok(Managed { what, child: Some(child), log: log.to_owned() })
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the process (SIGKILL: a crash, not a shutdown) and reaps it.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Polls `url` until it answers 2xx, failing early when the process exits.
    async fn wait_ready(&mut self, client: &reqwest::Client, url: &Url, timeout: Duration) -> Result<(), StackError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(StackError::Exited { what: self.what, status: status.to_string(), log: self.tail() });
            }
            if let Ok(response) = client.get(url.clone()).timeout(Duration::from_secs(2)).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(StackError::NotReady {
                    what: self.what,
                    url: url.to_string(),
                    seconds: timeout.as_secs(),
                    log: self.tail(),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How to run `reco standalone`.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// The `reco` binary.
    pub bin: PathBuf,
    /// `--models`: one sub-folder per version, and `routing.yaml`.
    pub models: PathBuf,
    pub pipeline: String,
    /// `--seed-data`: users start with their history before the test split.
    pub seed_data: Option<PathBuf>,
    /// `--deadline-ms`: past it a request is answered with fallback items and
    /// counted as an error.
    pub deadline_ms: u32,
    /// Token signing key (passed as `RECO_TOKEN_KEY`, not on the command
    /// line): fixed, so tokens stay valid across a restart.
    pub token_key: String,
    /// stdout and stderr go here.
    pub log: PathBuf,
    pub ready_timeout: Duration,
}

/// `reco standalone` as a child process on free loopback ports.
#[derive(Debug)]
pub struct Gateway {
    process: Managed,
    config: GatewayConfig,
    addr: SocketAddr,
    grpc: SocketAddr,
    client: reqwest::Client,
}

impl Gateway {
    /// Starts `bin standalone` on a free loopback port and waits for `/readyz`.
    pub async fn start(config: GatewayConfig) -> Result<Self, StackError> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let grpc = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let client = crate::sim::http_client().map_err(|e| StackError::Port(std::io::Error::other(e.to_string())))?;
        let process = Managed::spawn("reco standalone", Self::command(&config, addr, grpc), &config.log)?;
        let mut gateway = Gateway { process, config, addr, grpc, client };
        gateway.wait_ready().await?;
        Ok(gateway)
    }

    fn command(config: &GatewayConfig, addr: SocketAddr, grpc: SocketAddr) -> Command {
        let mut command = Command::new(&config.bin);
        command
            .arg("standalone")
            .arg("--models")
            .arg(&config.models)
            .arg("--http")
            .arg(addr.to_string())
            .arg("--grpc")
            .arg(grpc.to_string())
            .arg("--pipeline")
            .arg(&config.pipeline)
            .arg("--deadline-ms")
            .arg(config.deadline_ms.to_string())
            .env("RECO_TOKEN_KEY", &config.token_key);
        if let Some(data) = &config.seed_data {
            command.arg("--seed-data").arg(data);
        }
        command
    }

    async fn wait_ready(&mut self) -> Result<(), StackError> {
        let url = self.url("readyz");
        self.process.wait_ready(&self.client, &url, self.config.ready_timeout).await
    }

    /// `http://ADDR/` + `path`.
    pub fn url(&self, path: &str) -> Url {
        let mut url: Url = format!("http://{}/", self.addr).parse().expect("a socket address makes a valid URL");
        url.set_path(path);
        url
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Whether the gateway answers `/readyz` now; `Err` says why not.
    pub async fn check_ready(&self) -> Result<(), String> {
        if self.process.child.is_none() {
            return Err("gateway (reco standalone) is not running".into());
        }
        match self.client.get(self.url("readyz")).timeout(Duration::from_secs(2)).send().await {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(format!("gateway /readyz answered HTTP {}", response.status().as_u16())),
            Err(e) => Err(format!("gateway /readyz unreachable: {}", e.without_url())),
        }
    }

    /// Kills the process (SIGKILL).
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts it again on the same port, and waits until it is ready.
    pub async fn restart(&mut self) -> Result<(), StackError> {
        self.process.kill();
        let command = Self::command(&self.config, self.addr, self.grpc);
        self.process = Managed::spawn("reco standalone", command, &self.config.log)?;
        self.wait_ready().await
    }
}

/// Where the Prometheus binary is: `PROMETHEUS_BIN`, else `/usr/bin/prometheus`.
pub fn prometheus_bin() -> PathBuf {
    std::env::var_os("PROMETHEUS_BIN").map_or_else(|| PathBuf::from("/usr/bin/prometheus"), PathBuf::from)
}

/// A real Prometheus scraping one gateway every second.
#[derive(Debug)]
pub struct Prometheus {
    process: Managed,
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    client: reqwest::Client,
}

/// The scrape job name in the demo's Prometheus config.
pub const PROMETHEUS_JOB: &str = "reco-standalone";
/// The namespace label the demo's Prometheus puts on its target, as
/// Kubernetes discovery would on a cluster: the analysis scopes its queries
/// by namespace and job.
pub const DEMO_NAMESPACE: &str = "reco-demo";

impl Prometheus {
    /// Writes its config under `dir`, starts it on a free port and waits for `/-/ready`.
    pub async fn start(bin: &Path, dir: &Path, target: SocketAddr) -> Result<Self, StackError> {
        if !bin.is_file() {
            return Err(StackError::NoPrometheus(bin.to_owned()));
        }
        std::fs::create_dir_all(dir).map_err(|source| StackError::Io {
            what: "Prometheus directory",
            path: dir.to_owned(),
            source,
        })?;
        let config = dir.join("prometheus.yml");
        let text = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: {PROMETHEUS_JOB}\n    static_configs:\n      - targets: ['{target}']\n        labels:\n          namespace: {DEMO_NAMESPACE}\n"
        );
        std::fs::write(&config, text).map_err(|source| StackError::Io {
            what: "Prometheus config",
            path: config.clone(),
            source,
        })?;
        let client = crate::sim::http_client().map_err(|e| StackError::Port(std::io::Error::other(e.to_string())))?;
        let port = free_port()?;
        let process = Managed::spawn("prometheus", Self::command(bin, dir, port), &dir.join("prometheus.log"))?;
        let mut prometheus = Prometheus { process, bin: bin.to_owned(), dir: dir.to_owned(), port, client };
        prometheus.wait_ready().await?;
        Ok(prometheus)
    }

    fn command(bin: &Path, dir: &Path, port: u16) -> Command {
        let mut command = Command::new(bin);
        command
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"));
        command
    }

    async fn wait_ready(&mut self) -> Result<(), StackError> {
        let url = self.base().join("-/ready").expect("a valid path");
        self.process.wait_ready(&self.client, &url, Duration::from_secs(60)).await
    }

    /// Base URL of its HTTP API.
    pub fn base(&self) -> Url {
        format!("http://127.0.0.1:{}/", self.port).parse().expect("a loopback URL is valid")
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Kills the process (SIGKILL).
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts it again with the same port and data, and waits until it is ready.
    pub async fn restart(&mut self) -> Result<(), StackError> {
        self.process.kill();
        let command = Self::command(&self.bin, &self.dir, self.port);
        self.process = Managed::spawn("prometheus", command, &self.process.log.clone())?;
        self.wait_ready().await
    }

    /// The samples of an instant query now, keyed by the value of `label`.
    pub async fn query_by(&self, expr: &str, label: &str) -> Result<BTreeMap<String, f64>, String> {
        query_by(&self.client, &self.base(), expr, label).await
    }
}

/// The samples of an instant query to the Prometheus at `base`, keyed by the value of `label`.
pub async fn query_by(
    client: &reqwest::Client,
    base: &Url,
    expr: &str,
    label: &str,
) -> Result<BTreeMap<String, f64>, String> {
    let mut url = base.join("api/v1/query").map_err(|e| e.to_string())?;
    url.query_pairs_mut().append_pair("query", expr);
    let answer: serde_json::Value =
        client.get(url).send().await.map_err(|e| e.to_string())?.json().await.map_err(|e| e.to_string())?;
    let samples = answer["data"]["result"].as_array().ok_or_else(|| format!("not a vector answer: {answer}"))?;
    samples
        .iter()
        .map(|sample| {
            let key = sample["metric"][label].as_str().unwrap_or_default().to_owned();
            let value = sample["value"][1].as_str().ok_or_else(|| format!("no sample value in {sample}"))?;
            let value: f64 = value.parse().map_err(|e| format!("{value:?}: {e}"))?;
            Ok((key, value))
        })
        .collect()
}

/// The gateway's impression, click, request and error counters of
/// `pipeline` per model version, as the Prometheus at `base` has them now
/// (for the report: what the operator read). A query that fails is logged
/// and left out.
pub async fn prometheus_counters(base: &Url, pipeline: &str) -> BTreeMap<String, BTreeMap<String, f64>> {
    use reco_contracts::metrics as signals;
    let client = reqwest::Client::new();
    let mut counters = BTreeMap::new();
    for (name, series) in [
        ("impressions", signals::IMPRESSIONS),
        ("clicks", signals::CLICKS),
        ("requests", signals::REQUESTS),
        ("errors", signals::ERRORS),
    ] {
        let expr =
            format!("sum by ({}) ({series}{{{}={pipeline:?}}})", signals::VERSION_LABEL, signals::PIPELINE_LABEL);
        match query_by(&client, base, &expr, signals::VERSION_LABEL).await {
            Ok(values) => {
                counters.insert(name.to_owned(), values);
            }
            Err(e) => tracing::warn!(query = expr, error = %e, "reading counters back from Prometheus"),
        }
    }
    counters
}

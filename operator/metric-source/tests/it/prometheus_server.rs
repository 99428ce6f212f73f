//! A real Prometheus process for the tests: started on a free loopback port
//! with a temporary config (`scrape_interval: 1s`) and TSDB directory,
//! killed on drop. The binary comes from `PROMETHEUS_BIN` or `PATH`; when
//! missing the test fails and says to run `scripts/env.sh`.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reco_metric_source::Url;
use tempfile::TempDir;

use crate::NAMESPACE;

pub struct PrometheusServer {
    child: Child,
    base: Url,
    client: reqwest::Client,
    dir: TempDir,
}

fn prometheus_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("PROMETHEUS_BIN") {
        return bin.into();
    }
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join("prometheus")).find(|p| p.is_file()))
        .unwrap_or_else(|| {
            panic!("no `prometheus` on PATH and PROMETHEUS_BIN is unset: run scripts/env.sh first (CI does)")
        })
}

/// A port free now on loopback (a race with other processes is possible
/// but harmless in a test sandbox).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// A reqwest client; the workspace's reqwest needs a rustls provider.
pub fn http_client() -> reqwest::Client {
    reco_runtime::tls::install_crypto_provider();
    reqwest::Client::new()
}

impl PrometheusServer {
    /// Starts Prometheus scraping `target`'s `/metrics` every second, and
    /// waits until it is ready.
    pub async fn start(target: SocketAddr) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: gateway\n    static_configs:\n      - targets: ['{target}']\n        labels:\n          namespace: {NAMESPACE}\n"
            ),
        )
        .expect("write the config");
        let port = free_port();
        let log = File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new(prometheus_bin())
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let base: Url = format!("http://127.0.0.1:{port}/").parse().expect("valid URL");
        let mut server = PrometheusServer { child, base, client: http_client(), dir };
        server.wait_ready().await;
        server
    }

    async fn wait_ready(&mut self) {
        let ready = self.base.join("-/ready").expect("valid URL");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", self.log());
            }
            if let Ok(response) = self.client.get(ready.clone()).send().await
                && response.status().is_success()
            {
                return;
            }
            assert!(Instant::now() < deadline, "prometheus not ready after 30 s:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    pub fn base(&self) -> Url {
        self.base.clone()
    }

    /// The raw answer to `expr` now, for diagnostics.
    pub async fn raw(&self, expr: &str) -> String {
        let mut url = self.base.join("api/v1/query").expect("valid URL");
        url.query_pairs_mut().append_pair("query", expr);
        self.client.get(url).send().await.expect("query").text().await.expect("an answer")
    }

    /// The value of a one-sample instant query now, `None` for an empty result.
    pub async fn value(&self, expr: &str) -> Option<f64> {
        let mut url = self.base.join("api/v1/query").expect("valid URL");
        url.query_pairs_mut().append_pair("query", expr);
        let answer: serde_json::Value =
            self.client.get(url).send().await.expect("query").json().await.expect("JSON answer");
        let value = answer["data"]["result"].get(0)?["value"][1].as_str().expect("a sample value");
        Some(value.parse().expect("a number"))
    }

    /// Waits until `expr` is at least `expected` (the scrapes caught up).
    pub async fn wait_for(&self, expr: &str, expected: f64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let value = self.value(expr).await;
            if value.is_some_and(|v| v >= expected) {
                return;
            }
            assert!(Instant::now() < deadline, "{expr} is {value:?}, below {expected}, after 30 s:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

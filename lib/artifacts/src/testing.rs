//! A real S3-protocol server for tests: moto in server mode, one per test on
//! a free loopback port (`scripts/ensure-s3-server.sh` installs it and
//! `scripts/env.sh` exports `MOTO_SERVER_BIN`).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::StoreOptions;

/// The credentials the test server accepts (moto accepts any).
const KEY: &str = "reco-test";

/// One moto server, killed on drop.
pub struct S3Server {
    child: Child,
    /// Where this machine reaches it.
    pub endpoint: String,
    pub port: u16,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl S3Server {
    /// Starts one on loopback and waits until it answers; `None`, printing
    /// why, where `MOTO_SERVER_BIN` is not set.
    pub async fn start() -> Option<S3Server> {
        Self::start_on("127.0.0.1").await
    }

    /// The same, listening on `host` (`0.0.0.0` to be reached from containers).
    pub async fn start_on(host: &str) -> Option<S3Server> {
        let Ok(bin) = std::env::var("MOTO_SERVER_BIN") else {
            eprintln!("skipped: MOTO_SERVER_BIN is not set (eval \"$(scripts/env.sh)\" installs moto)");
            return None;
        };
        reco_runtime::tls::install_crypto_provider();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(bin)
            .args(["-H", host, "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server starts");
        let server = S3Server { child, endpoint: format!("http://127.0.0.1:{port}"), port };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while client.get(format!("{}/moto-api/", server.endpoint)).send().await.is_err() {
            assert!(Instant::now() < deadline, "moto did not answer within 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Some(server)
    }

    /// Creates a bucket.
    pub async fn bucket(&self, name: &str) {
        let created = reqwest::Client::new().put(format!("{}/{name}", self.endpoint)).send().await.unwrap();
        assert!(created.status().is_success(), "creating bucket {name}: {}", created.status());
    }

    /// The settings that reach this server.
    pub fn options(&self) -> StoreOptions {
        self.env().iter().fold(StoreOptions::default(), |o, (k, v)| o.with(k, v))
    }

    /// The same as environment variables, for a process that reads them.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        self.env_at(&self.endpoint)
    }

    /// The environment for a process that reaches the server at `endpoint` (a container).
    pub fn env_at(&self, endpoint: &str) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", endpoint.to_owned()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", KEY.into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }
}

//! `reco serve ranking` as the operator's pods run it, with its version in
//! a real S3-protocol server (moto): ready once the version is fetched and
//! verified; unready, alive and saying why while it cannot be.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reco_artifacts::testing::S3Server;
use reco_artifacts::{Digest, upload};
use reco_demo::stack::free_port;
use reco_model::artifacts::write_random_version;
use reco_model::features::Item;

struct Served {
    child: Child,
    http: String,
    log: Arc<Mutex<String>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A version with random weights from `seed` uploaded to `s3://models/<name>`; its digest.
async fn uploaded(server: &S3Server, name: &str, seed: i64) -> Digest {
    let dir = tempfile::tempdir().unwrap();
    let items: Vec<Item> =
        (0..40).map(|i| Item { id: format!("m{i}"), genres: vec!["Drama".into()], ..Default::default() }).collect();
    write_random_version(dir.path(), &items, &["u1".into(), "u2".into()], seed).unwrap();
    upload(dir.path(), &format!("s3://models/{name}"), &server.options()).await.unwrap()
}

fn serve(server: &S3Server, uri: &str, digest: &str, cache: &std::path::Path) -> Served {
    let (http, grpc) = (free_port().unwrap(), free_port().unwrap());
    let mut child = Command::new(env!("CARGO_BIN_EXE_reco"))
        .args(["serve", "ranking", "--pipeline=explore", "--model-version=v1"])
        .arg(format!("--model-uri={uri}"))
        .arg(format!("--artifact-digest={digest}"))
        .arg(format!("--artifact-cache={}", cache.display()))
        .args([format!("--http=127.0.0.1:{http}"), format!("--grpc=127.0.0.1:{grpc}")])
        .envs(server.env())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("reco serve starts");
    let log = Arc::new(Mutex::new(String::new()));
    let (stderr, sink) = (child.stderr.take().unwrap(), log.clone());
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    Served { child, http: format!("http://127.0.0.1:{http}"), log }
}

impl Served {
    fn status(&self, path: &str) -> Option<u16> {
        reqwest::blocking::get(format!("{}{path}", self.http)).ok().map(|r| r.status().as_u16())
    }

    /// Waits until `/readyz` answers `want`.
    fn wait(&self, want: u16, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.status("/readyz") == Some(want) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_verified_version_from_s3_serves_and_a_substituted_one_keeps_the_pod_unready_saying_why() {
    let Some(server) = S3Server::start().await else { return };
    server.bucket("models").await;
    let digest = uploaded(&server, "v1", 3).await;
    let cache = tempfile::tempdir().unwrap();

    let good = serve(&server, "s3://models/v1", &digest.to_string(), cache.path());
    let ready = tokio::task::block_in_place(|| good.wait(200, Duration::from_secs(90)));
    assert!(ready, "not ready with the right digest:\n{}", good.log());
    assert!(cache.path().join(digest.hex()).join("manifest.json").exists(), "downloaded into the cache volume");
    drop(good);

    // Another upload under the same prefix (say, a retrained model) is not what the ModelVersion names.
    let other = uploaded(&server, "v2", 4).await;
    assert_ne!(other, digest);
    let wrong = serve(&server, "s3://models/v2", &digest.to_string(), cache.path());
    tokio::task::block_in_place(|| {
        assert!(wrong.wait(503, Duration::from_secs(30)), "no /readyz 503:\n{}", wrong.log());
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(wrong.status("/readyz"), Some(503), "{}", wrong.log());
        assert_eq!(wrong.status("/healthz"), Some(200), "alive while unready: no crash loop");
    });
    let log = wrong.log();
    assert!(log.contains("cannot serve version v1 from s3://models/v2, not ready"), "{log}");
    assert!(log.contains(&format!("version digest is {other}, but the ModelVersion expects {digest}")), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_artifact_file_is_named_in_the_log() {
    let Some(server) = S3Server::start().await else { return };
    server.bucket("models").await;
    let digest = uploaded(&server, "v1", 3).await;
    let deleted = reqwest::Client::new()
        .delete(format!("{}/models/v1/ranker.safetensors", server.endpoint))
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success());
    let cache = tempfile::tempdir().unwrap();
    let served = serve(&server, "s3://models/v1", &digest.to_string(), cache.path());
    tokio::task::block_in_place(|| {
        assert!(served.wait(503, Duration::from_secs(30)), "{}", served.log());
        let deadline = Instant::now() + Duration::from_secs(20);
        while !served.log().contains("ranker.safetensors: missing") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    assert!(
        served.log().contains("s3://models/v1: ranker.safetensors: missing, but listed in the manifest"),
        "{}",
        served.log()
    );
    assert!(std::fs::read_dir(cache.path()).unwrap().next().is_none(), "nothing partial left in the cache");
}

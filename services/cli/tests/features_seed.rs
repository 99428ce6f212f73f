//! `reco serve features --seed-from` as the features pods run it with
//! `spec.features.seed`: the history comes from a real S3-protocol server
//! (moto), is loaded into an empty store once, and the pod is ready only
//! once it is; a history it cannot read keeps the pod unready, saying why.

mod common;
use common::ml100k;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reco_artifacts::testing::S3Server;
use reco_demo::stack::free_port;

struct Features {
    child: Child,
    http: String,
    grpc: String,
    log: Arc<Mutex<String>>,
}

impl Drop for Features {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Features {
    fn start(server: &S3Server, data_dir: &Path, extra: &[&str]) -> Features {
        let (http, grpc) = (free_port().unwrap(), free_port().unwrap());
        let mut child = Command::new(env!("CARGO_BIN_EXE_reco"))
            .args(["serve", "features", "--pipeline=explore"])
            .arg(format!("--data-dir={}", data_dir.display()))
            .args([format!("--http=127.0.0.1:{http}"), format!("--grpc=127.0.0.1:{grpc}")])
            .args(extra)
            .envs(server.env())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("reco serve features starts");
        let log = Arc::new(Mutex::new(String::new()));
        let (stderr, sink) = (child.stderr.take().unwrap(), log.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        Features { child, http: format!("http://127.0.0.1:{http}"), grpc: format!("http://127.0.0.1:{grpc}"), log }
    }

    fn ready(&self) -> Option<u16> {
        reqwest::blocking::get(format!("{}/readyz", self.http)).ok().map(|r| r.status().as_u16())
    }

    /// Waits until `/readyz` answers `want`, or the log holds `text`.
    fn wait_for(&self, want: Option<u16>, text: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if want.is_some_and(|w| self.ready() == Some(w)) && self.log().contains(text) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Stops it as Kubernetes stops a pod (SIGTERM), which snapshots the store.
    fn terminate(mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "a graceful stop: {status:?}\n{}", self.log());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_store_is_seeded_once_from_the_object_store() {
    let Some(server) = S3Server::start().await else { return };
    server.bucket("data").await;
    // A copy: the upload writes the manifest into the directory it sends.
    let history = tempfile::tempdir().unwrap();
    for name in ["ml-100k.inter", "ml-100k.item", "ml-100k.user"] {
        std::fs::copy(ml100k().join(name), history.path().join(name)).unwrap();
    }
    reco_artifacts::upload(history.path(), "s3://data/ml-100k", &server.options()).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let seed = ["--seed-from=s3://data/ml-100k", "--seed-holdout=0.1"];

    let first = Features::start(&server, data.path(), &seed);
    tokio::task::block_in_place(|| {
        let seeded = first.wait_for(Some(200), "feature store seeding", Duration::from_secs(120));
        assert!(seeded, "not ready and seeded:\n{}", first.log());
    });
    let log = first.log();
    assert!(log.contains("Seeded") && log.contains("943"), "all 943 users: {log}");
    // The data set's catalog bounds ingestion: an item it does not have is refused.
    let mut events = reco_proto::events_client::EventsClient::connect(first.grpc.clone()).await.unwrap();
    let event = |item_id: &str| reco_proto::Event {
        user_id: "1".into(),
        item_id: item_id.into(),
        r#type: reco_proto::EventType::Click as i32,
        ..Default::default()
    };
    let refused = events.ingest(reco_proto::IngestRequest { events: vec![event("no-such-item")] }).await.unwrap_err();
    assert_eq!(refused.message(), "events[0].item_id: unknown item");
    let known = events.ingest(reco_proto::IngestRequest { events: vec![event("50")] }).await.unwrap();
    assert_eq!(known.into_inner().accepted, 1);
    tokio::task::block_in_place(|| first.terminate());

    // A restart finds its store populated (the snapshot on its volume): no second seeding.
    let second = Features::start(&server, data.path(), &seed);
    tokio::task::block_in_place(|| {
        assert!(second.wait_for(Some(200), "AlreadyPopulated", Duration::from_secs(120)), "{}", second.log());
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn a_history_that_cannot_be_read_keeps_the_pod_unready_and_a_bad_holdout_is_refused() {
    let Some(server) = S3Server::start().await else { return };
    server.bucket("data").await;
    let data = tempfile::tempdir().unwrap();
    let missing = Features::start(&server, data.path(), &["--seed-from=s3://data/nothing-here"]);
    tokio::task::block_in_place(|| {
        let unready = missing.wait_for(
            Some(503),
            "cannot seed the feature store from s3://data/nothing-here",
            Duration::from_secs(60),
        );
        assert!(unready, "{}", missing.log());
    });

    let out = Command::new(env!("CARGO_BIN_EXE_reco"))
        .args(["serve", "features", "--pipeline=explore", "--seed-from=/tmp/x", "--seed-holdout=0.9"])
        .arg(format!("--data-dir={}", data.path().display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--seed-holdout must be between 0 and 0.5, not 0.9"), "{stderr}");
}

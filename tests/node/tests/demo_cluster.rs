//! The demo through the operator, with faults, on the stack that
//! `scripts/demo-cluster.sh --up` leaves running (`make test` starts it):
//! genuine API servers, reco-node running the pods with podman, the
//! operator installed from the chart (two replicas, in containers),
//! Prometheus and an S3 server. The operator rolls v2 out and v3 back on
//! live CTR while, one at a time:
//!
//! - the leading operator's container is frozen (`podman pause`) for ~24 s
//!   in v2's first canary step, as a partitioned or stalled leader is: the
//!   standby takes the lease once it expires and resumes where the rollout
//!   was; the old leader, thawed, finds its lease gone and stands by; no
//!   version is rolled out twice and v2's steps run once each, in order;
//! - a gateway pod and the stable v1's ranking pod are killed in v2's 25%
//!   step: the users' requests still succeed (one client retry, to the other
//!   gateway; v1's users get the fallback page while its ranking restarts),
//!   and v2's rollout goes on. (Killing v2's only ranking replica instead is
//!   a real outage of v2: whether its error guardrail rolls it back depends
//!   on how the restart straddles a look, which made the test flaky.)
//! - the pipeline's status is replaced by an empty one at v3's first tick:
//!   v2 stays stable, v1 stays retired, v3's rollout starts over;
//! - Prometheus is stopped (SIGSTOP) for eight ticks (~16 s: its queries
//!   time out after 5 s) in v3's first canary step: the looks say the
//!   metrics are unavailable, the weight holds, nothing is decided until it
//!   is back.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use reco_demo::cluster::{ClusterOptions, run_cluster_demo};
use reco_demo::policy::{DEMO_PIPELINE_SPEC, parse_policy};
use reco_demo::report::TimelineEntry;
use reco_demo::scenario::DemoOptions;
use reco_rollout::{AnalysisVerdict, VersionPhase};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: eval \"$(scripts/demo-cluster.sh --up)\""))
}

fn run(program: &str, args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    child.stdin.take().unwrap().write_all(stdin.unwrap_or_default().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Ticks (2 s apart) Prometheus stays stopped.
const PROMETHEUS_DOWN_TICKS: usize = 8;

/// Ticks (2 s apart) the leader stays frozen: longer than its 15 s lease.
const LEADER_FROZEN_TICKS: usize = 12;

/// The faults, each injected once at its moment of the rollouts.
#[derive(Default)]
struct Faults {
    /// The frozen leader and the ticks seen since it was frozen.
    frozen_leader: Option<(String, usize)>,
    killed_pods: bool,
    status_replaced: bool,
    /// Ticks seen while Prometheus was stopped (`None` before, `Some` after it was stopped).
    prometheus_down: Option<Vec<TimelineEntry>>,
    prometheus_back: bool,
}

impl Faults {
    fn on_tick(&mut self, entry: &TimelineEntry) {
        let (operators, demo) = (env("RECO_DEMO_OPERATOR_NAMESPACE"), env("RECO_DEMO_NAMESPACE"));
        let canary = |version: &str, weight: u8| {
            entry.version == version && entry.phase == VersionPhase::Canary && entry.weight == weight
        };
        match &mut self.frozen_leader {
            None if canary("v2", 10) => {
                let holder = lease_holder(&operators);
                println!("fault: freezing the leading operator {holder}");
                run("podman", &["pause", &format!("{operators}.{holder}-operator")], None);
                self.frozen_leader = Some((holder, 0));
            }
            Some((holder, ticks)) if *ticks < LEADER_FROZEN_TICKS => {
                *ticks += 1;
                if *ticks == LEADER_FROZEN_TICKS {
                    println!("fault: thawing {holder}; the lease is {}'s", lease_holder(&operators));
                    run("podman", &["unpause", &format!("{operators}.{holder}-operator")], None);
                }
            }
            _ => {}
        }
        if !self.killed_pods && canary("v2", 25) {
            println!("fault: killing a gateway pod and v1's ranking pod");
            run(
                "podman",
                &["kill", &format!("{demo}.demo-gateway-0-gateway"), &format!("{demo}.demo-ranking-v1-0-ranking")],
                None,
            );
            self.killed_pods = true;
        }
        if !self.status_replaced && entry.version == "v3" {
            println!("fault: replacing the pipeline's status with an empty one");
            let mut pipeline: serde_json::Value = serde_json::from_str(&run(
                "kubectl",
                &["-n", &demo, "get", "recommenderpipeline", "demo", "-o", "json"],
                None,
            ))
            .unwrap();
            pipeline["status"] = serde_json::json!({});
            run("kubectl", &["-n", &demo, "replace", "--subresource=status", "-f", "-"], Some(&pipeline.to_string()));
            self.status_replaced = true;
        }
        match &mut self.prometheus_down {
            None if canary("v3", 10) => {
                println!("fault: stopping Prometheus (SIGSTOP)");
                run("kill", &["-STOP", &env("RECO_DEMO_PROMETHEUS_PID")], None);
                self.prometheus_down = Some(Vec::new());
            }
            Some(ticks) if !self.prometheus_back => {
                ticks.push(entry.clone());
                if ticks.len() == PROMETHEUS_DOWN_TICKS {
                    println!("fault: Prometheus back (SIGCONT)");
                    run("kill", &["-CONT", &env("RECO_DEMO_PROMETHEUS_PID")], None);
                    self.prometheus_back = true;
                }
            }
            _ => {}
        }
    }
}

/// The demo policy with a 5 s p99 guardrail instead of 1 s.
fn relaxed_policy() -> String {
    let relaxed = DEMO_PIPELINE_SPEC.replace("maxP99LatencyMs: 1000", "maxP99LatencyMs: 5000");
    assert_ne!(relaxed, DEMO_PIPELINE_SPEC, "the demo policy names its p99 guardrail");
    relaxed
}

fn lease_holder(namespace: &str) -> String {
    run("kubectl", &["-n", namespace, "get", "lease", "reco-operator", "-o", "jsonpath={.spec.holderIdentity}"], None)
}

fn options(out: PathBuf) -> ClusterOptions {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    ClusterOptions {
        demo: DemoOptions {
            // The test build's pods on two cores, three versions at once: fewer requests, and a
            // latency guardrail far above what a starved debug build takes (this test is about
            // faults, and a slow shadow must not end a rollout before they are injected).
            rate: 30.0,
            policy: parse_policy(&relaxed_policy()).expect("the relaxed demo policy is valid"),
            policy_text: relaxed_policy(),
            max_wall: Duration::from_secs(20 * 60),
            ready_timeout: Duration::from_secs(300),
            ..DemoOptions::defaults(
                out,
                PathBuf::from("reco"),
                reco_trainer::pipeline::resolve_data("ml-100k").expect("ml-100k (scripts/ensure-ml100k.sh)"),
                std::env::var_os("RECO_DEMO_CACHE").map_or_else(|| home.join(".cache/reco/demo-models"), PathBuf::from),
            )
        },
        namespace: env("RECO_DEMO_NAMESPACE"),
        store: env("RECO_DEMO_STORE"),
        credentials_secret: Some(env("RECO_DEMO_CREDENTIALS")),
        prometheus_url: env("RECO_DEMO_PROMETHEUS_URL"),
        gateway_node_port: env("RECO_DEMO_NODE_PORT").parse().expect("a port"),
        kubectl: PathBuf::from("kubectl"),
    }
}

/// How many times the operator started a rollout of `version` (its `ShadowStarted` Events).
async fn rollouts_started(events: &Api<Event>, version: &str) -> usize {
    let list = events.list(&ListParams::default()).await.expect("events");
    list.items
        .iter()
        .filter(|e| e.reason.as_deref() == Some("ShadowStarted"))
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(version))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the stack of scripts/demo-cluster.sh --up (make test starts it)"]
async fn the_operator_rolls_v2_out_and_v3_back_through_faults() {
    reco_runtime::tls::install_crypto_provider();
    let out = tempfile::tempdir().unwrap();
    let mut faults = Faults::default();
    let report = run_cluster_demo(options(out.path().to_owned()), &mut |entry| faults.on_tick(entry))
        .await
        .expect("the demo runs to its end");

    assert_eq!(report.versions["v2"].outcome, "promoted", "{:?}", report.versions["v2"]);
    assert_eq!(report.versions["v3"].outcome, "rolled_back", "{:?}", report.versions["v3"]);
    assert_eq!(report.requests.failed, 0, "every request succeeded, with one retry at most: {:?}", report.requests);
    assert!(report.requests.total > 1_000, "{:?}", report.requests);

    // The leader froze mid-canary: the standby took over, and v2 went on through every step once.
    let (frozen, _) = faults.frozen_leader.expect("v2 reached its first canary step");
    let holder = lease_holder(&env("RECO_DEMO_OPERATOR_NAMESPACE"));
    assert_ne!(holder, frozen, "the standby holds the lease the frozen leader lost");
    let weights: Vec<u8> =
        report.timeline.iter().filter(|t| t.version == "v2" && t.phase == VersionPhase::Canary).map(|t| t.weight).fold(
            Vec::new(),
            |mut seen, w| {
                if seen.last() != Some(&w) {
                    seen.push(w);
                }
                seen
            },
        );
    assert_eq!(weights, [10, 25, 50], "v2's canary steps in order, none repeated");
    assert!(faults.killed_pods, "v2 reached its 25% step");

    // The replaced status: v2 stayed stable, v1 was never rolled out, v2 once.
    assert!(faults.status_replaced);
    let client = kube::Client::try_default().await.unwrap();
    let events: Api<Event> = Api::namespaced(client, &env("RECO_DEMO_NAMESPACE"));
    assert_eq!(rollouts_started(&events, "v1").await, 0, "the first version is promoted, never rolled out");
    assert_eq!(rollouts_started(&events, "v2").await, 1, "a finished version never rolls out again");
    // The status reads empty until the operator has rebuilt it (a tick or two); it says v2 throughout.
    let v3: Vec<&TimelineEntry> = report.timeline.iter().filter(|t| t.version == "v3").collect();
    assert!(v3.iter().all(|t| t.stable == "v2" || t.stable.is_empty()), "v2 stays stable: {v3:?}");
    let rebuilding = v3.iter().filter(|t| t.stable.is_empty()).count();
    assert!(rebuilding <= 3, "the status is rebuilt within seconds: {rebuilding} ticks");
    // v1 came back for nobody: its count stopped before v3's rollout went on.
    let v1_requests = |t: &TimelineEntry| t.traffic.get("v1").map_or(0, |c| c.requests);
    let rebuilt =
        v3.iter().position(|t| t.stable == "v2" && t.phase == VersionPhase::Shadow).expect("v3 in shadow again");
    assert_eq!(v1_requests(v3[rebuilt]), v1_requests(v3[v3.len() - 1]), "v1 serves no one after v2's promotion");

    // Prometheus stopped: looks without data, the weight held, nothing decided.
    let down = faults.prometheus_down.expect("v3 reached its first canary step");
    assert_eq!(down.len(), PROMETHEUS_DOWN_TICKS);
    for tick in &down {
        assert_eq!((tick.phase, tick.weight), (VersionPhase::Canary, 10), "the weight holds: {tick:?}");
        assert!(tick.transitions.is_empty(), "no decision without metrics: {tick:?}");
    }
    assert!(
        down.iter()
            .any(|t| t.verdict == Some(AnalysisVerdict::Inconclusive) && t.message.contains("metrics unavailable")),
        "a look said the metrics were unavailable: {down:?}"
    );
}

use std::sync::Mutex;

use futures::future::BoxFuture;
use reco_metric_source::SourceError;
use reco_rollout::{AnalysisVerdict, GroupCounts, Groups, SideMetrics, WindowMetrics};

use super::*;
use crate::policy::demo_policy;

/// A metric source answering canned windows, or failing.
struct FakeSource {
    answer: Mutex<Option<WindowMetrics>>,
}

impl FakeSource {
    fn set(&self, answer: Option<WindowMetrics>) {
        *self.answer.lock().unwrap() = answer;
    }
}

impl MetricSource for FakeSource {
    fn window<'a>(&'a self, _q: &'a WindowQuery) -> BoxFuture<'a, Result<WindowMetrics, SourceError>> {
        let answer = self.answer.lock().unwrap().clone();
        Box::pin(async move { answer.ok_or(SourceError::NoTargets) })
    }
}

/// A side owning user groups `groups` (the canary at 10%: 0–99, stable
/// 100–999), impressions and clicks spread evenly, every other group one
/// click over, so the CTR has a small variance across groups.
fn side(groups: std::ops::Range<u16>, impressions: u64, clicks: u64, requests: u64) -> SideMetrics {
    let count = u64::from(groups.end - groups.start);
    let groups = groups
        .enumerate()
        .map(|(index, group)| {
            let extra = u64::from(index % 2 == 0 && clicks > 0);
            let clicks = (clicks / count).saturating_sub(1 - extra) + extra;
            (group, GroupCounts { impressions: impressions / count, clicks })
        })
        .filter(|(_, counts)| counts.impressions > 0)
        .collect::<Groups>();
    SideMetrics {
        impressions: groups.values().map(|g| g.impressions).sum(),
        clicks: groups.values().map(|g| g.clicks).sum(),
        requests,
        errors: 0,
        latency: vec![(0.01, requests)],
        latency_count: requests,
        groups,
    }
}

fn stable() -> SideMetrics {
    side(100..1000, 90_000, 9_000, 9_000)
}

/// A canary clearly better than stable at its first step (10%).
fn better() -> WindowMetrics {
    better_at(10)
}

/// A canary clearly better than stable at `weight` percent, 100 impressions
/// per user group on both sides.
fn better_at(weight: u16) -> WindowMetrics {
    let split = weight * 10;
    let (canary, stable) = (u64::from(split) * 100, u64::from(1000 - split) * 100);
    WindowMetrics {
        stable: side(split..1000, stable, stable / 10, stable / 10),
        candidate: side(0..split, canary, canary * 15 / 100, canary / 10),
        before: Groups::new(),
    }
}

/// A canary far worse than stable.
fn worse() -> WindowMetrics {
    WindowMetrics { stable: stable(), candidate: side(0..100, 10_000, 100, 1_000), before: Groups::new() }
}

/// Healthy mirrored traffic for a shadow step.
fn shadow_ok() -> WindowMetrics {
    WindowMetrics { stable: stable(), candidate: side(0..100, 0, 0, 1_000), before: Groups::new() }
}

fn config(dir: &Path) -> RunnerConfig {
    RunnerConfig {
        pipeline: "demo".into(),
        salt: "demo".into(),
        state_path: dir.join("state.json"),
        models_dir: dir.join("models"),
        policy: demo_policy().unwrap(),
    }
}

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + seconds).unwrap()
}

fn routing_on_disk(dir: &Path) -> RoutingTable {
    let text = std::fs::read_to_string(dir.join("models").join(ROUTING_FILE)).unwrap();
    serde_saphyr::from_str(&text).unwrap()
}

#[tokio::test]
async fn rolls_a_better_version_through_every_step_and_writes_routing() {
    let dir = tempfile::tempdir().unwrap();
    let source = FakeSource { answer: Mutex::new(None) };
    let mut runner = LocalRunner::open(config(dir.path())).unwrap();
    runner.add_version("v1", at(0)).unwrap();
    let tick = runner.tick(&source, None, at(1)).await.unwrap();
    assert!(tick.analysis.is_none());
    assert!(tick.routing_changed);
    assert_eq!(tick.decision.state.stable.as_deref(), Some("v1"));
    assert_eq!(routing_on_disk(dir.path()).versions.len(), 1);

    runner.add_version("v2", at(2)).unwrap();
    let tick = runner.tick(&source, None, at(3)).await.unwrap();
    assert_eq!(phase_of(&tick.decision, "v2"), Some(VersionPhase::Shadow));
    assert_eq!(routing_on_disk(dir.path()).shadow.as_deref(), Some("v2"));

    // Shadow lasts 10 s: healthy mirrored traffic passes it once over.
    source.set(Some(shadow_ok()));
    let tick = runner.tick(&source, None, at(8)).await.unwrap();
    assert_eq!(phase_of(&tick.decision, "v2"), Some(VersionPhase::Shadow));
    let tick = runner.tick(&source, None, at(14)).await.unwrap();
    assert_eq!(phase_of(&tick.decision, "v2"), Some(VersionPhase::Canary));
    assert_eq!(tick.decision.canary_weight(), 10);

    let mut weights = vec![10];
    for t in 0..10 {
        source.set(Some(better_at(weights.last().copied().unwrap_or(10).into())));
        let tick = runner.tick(&source, None, at(20 + t)).await.unwrap();
        assert_eq!(tick.analysis.as_ref().map(|a| a.verdict), Some(AnalysisVerdict::Pass));
        if tick.decision.state.stable.as_deref() == Some("v2") {
            break;
        }
        weights.push(tick.decision.canary_weight());
        assert_eq!(routing_on_disk(dir.path()).versions[0].weight, tick.decision.canary_weight());
    }
    assert_eq!(weights, [10, 25, 50]);
    assert_eq!(runner.file().rollout.stable.as_deref(), Some("v2"));
    let table = routing_on_disk(dir.path());
    assert_eq!(table.versions, vec![reco_contracts::RoutedVersion { name: "v2".into(), weight: 100 }]);
    assert_eq!(table.shadow, None);
}

#[tokio::test]
async fn a_worse_canary_is_rolled_back_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let source = FakeSource { answer: Mutex::new(Some(shadow_ok())) };
    let mut runner = LocalRunner::open(config(dir.path())).unwrap();
    runner.add_version("v1", at(0)).unwrap();
    runner.tick(&source, None, at(0)).await.unwrap();
    runner.add_version("v3", at(1)).unwrap();
    runner.tick(&source, None, at(1)).await.unwrap();
    runner.tick(&source, None, at(12)).await.unwrap();
    source.set(Some(worse()));
    let tick = runner.tick(&source, None, at(14)).await.unwrap();
    assert_eq!(phase_of(&tick.decision, "v3"), Some(VersionPhase::RolledBack));
    let reason = &tick.decision.versions["v3"].reason;
    assert!(reason.contains("canary CTR is lower than stable's"), "{reason}");
    assert_eq!(
        routing_on_disk(dir.path()).versions,
        vec![reco_contracts::RoutedVersion { name: "v1".into(), weight: 100 }]
    );
}

#[tokio::test]
async fn missing_metrics_hold_the_weight_and_never_promote() {
    let dir = tempfile::tempdir().unwrap();
    let source = FakeSource { answer: Mutex::new(Some(shadow_ok())) };
    let mut runner = LocalRunner::open(config(dir.path())).unwrap();
    runner.add_version("v1", at(0)).unwrap();
    runner.tick(&source, None, at(0)).await.unwrap();
    runner.add_version("v2", at(1)).unwrap();
    runner.tick(&source, None, at(1)).await.unwrap();
    let tick = runner.tick(&source, None, at(12)).await.unwrap();
    assert_eq!(tick.decision.canary_weight(), 10);

    // The source fails, then the gateway is reported down: Inconclusive, held.
    source.set(None);
    for (t, down) in [(14, None), (16, Some("gateway not ready".to_owned())), (60, None)] {
        let tick = runner.tick(&source, down, at(t)).await.unwrap();
        let analysis = tick.analysis.expect("a look");
        assert_eq!(analysis.verdict, AnalysisVerdict::Inconclusive);
        assert!(analysis.message.starts_with("metrics unavailable"), "{}", analysis.message);
        assert!(tick.decision.transitions.is_empty());
        assert_eq!(tick.decision.canary_weight(), 10);
        assert!(!tick.routing_changed);
    }
    // Back: the next look passes the step.
    source.set(Some(better()));
    let tick = runner.tick(&source, None, at(62)).await.unwrap();
    assert_eq!(tick.decision.canary_weight(), 25);

    // Missing past the step's maximum duration: rolled back, not promoted.
    source.set(None);
    let tick = runner.tick(&source, None, at(62 + 121)).await.unwrap();
    assert_eq!(phase_of(&tick.decision, "v2"), Some(VersionPhase::RolledBack));
    assert_eq!(tick.decision.state.stable.as_deref(), Some("v1"));
}

#[tokio::test]
async fn a_restarted_runner_resumes_from_its_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let source = FakeSource { answer: Mutex::new(Some(shadow_ok())) };
    let mut runner = LocalRunner::open(config(dir.path())).unwrap();
    runner.add_version("v1", at(0)).unwrap();
    runner.tick(&source, None, at(0)).await.unwrap();
    runner.add_version("v2", at(1)).unwrap();
    runner.tick(&source, None, at(1)).await.unwrap();
    runner.tick(&source, None, at(12)).await.unwrap();
    let before = runner.file().clone();
    drop(runner);

    let mut resumed = LocalRunner::open(config(dir.path())).unwrap();
    assert_eq!(resumed.file(), &before);
    let candidate = resumed.file().rollout.candidate.clone().unwrap();
    assert_eq!((candidate.version.as_str(), candidate.step), ("v2", 1));
    // Same step, same start: the window reaches back to before the restart.
    let query = resumed.window_query(at(20)).unwrap();
    assert_eq!(query.start, candidate.step_started_at);
    assert!(!query.candidate_is_shadow);
    source.set(Some(better()));
    let tick = resumed.tick(&source, None, at(20)).await.unwrap();
    assert_eq!(tick.decision.canary_weight(), 25);
}

#[test]
fn bad_state_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    for garbage in [&b"{"[..], b"[]", b"\xff\xfe", b"{\"pipeline\": 3}"] {
        std::fs::write(&cfg.state_path, garbage).unwrap();
        let error = LocalRunner::open(cfg.clone()).unwrap_err();
        assert!(matches!(error, RunnerError::CorruptState { .. }), "{error}");
        assert!(error.to_string().contains("state.json"), "{error}");
    }
    let mut other = cfg.clone();
    other.pipeline = "other".into();
    std::fs::remove_file(&cfg.state_path).unwrap();
    let mut runner = LocalRunner::open(cfg.clone()).unwrap();
    runner.add_version("v1", at(0)).unwrap();
    let error = LocalRunner::open(other).unwrap_err();
    assert!(matches!(error, RunnerError::OtherPipeline { .. }), "{error}");
}

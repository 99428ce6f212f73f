//! The ranking service against a fixture version (real layout, random weights): the trainer's
//! order, bad input, skipping, value weights, TorchScript and the gRPC round trip.

use std::sync::Arc;

use prometheus_client::registry::Registry;
use reco_model::artifacts::{VersionArtifacts, files, write_random_version};
use reco_model::drift::{DENSE_FEATURE_NAMES, DriftReference};
use reco_model::features::{FeatureSpace, Item};
use reco_model::scoring::{self, N_DENSE, SourceEvidence, ValueModel};
use reco_model::{Ranker, RankerBatch, pad_bags};
use reco_proto::ranking_client::RankingClient;
use reco_proto::ranking_server::Ranking;
use reco_proto::{Candidate, RankRequest, RankResponse, UserFeatures};
use reco_ranking::{BuildError, DriftSettings, MAX_CANDIDATES, Metrics, RankingService, Scorer, ScorerSettings};
use tch::{Kind, Tensor};
use tonic::{Code, Request};

const N_ITEMS: usize = 40;

fn catalog() -> Vec<Item> {
    (0..N_ITEMS)
        .map(|i| Item {
            id: format!("m{i}"),
            title: Some(format!("Movie number {i}")),
            year: Some(1980 + (i as i32 * 3) % 30),
            genres: match i % 4 {
                0 => vec!["Drama".into()],
                1 => vec!["Comedy".into(), "Drama".into()],
                2 => vec![],
                _ => vec!["Action".into(), "Sci-Fi".into(), "Thriller".into()],
            },
        })
        .collect()
}

struct Fixture {
    _dir: tempfile::TempDir,
    artifacts: Arc<VersionArtifacts>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let users: Vec<String> = (0..6).map(|u| format!("u{u}")).collect();
    write_random_version(dir.path(), &catalog(), &users, 11).unwrap();
    let artifacts = Arc::new(VersionArtifacts::load(dir.path()).unwrap());
    Fixture { _dir: dir, artifacts }
}

fn service(f: &Fixture, settings: ScorerSettings) -> (RankingService, Registry) {
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    (RankingService::new(f.artifacts.clone(), "v1", &settings, metrics).unwrap(), registry)
}

fn settings(batch_size: usize, weights: &str) -> ScorerSettings {
    ScorerSettings { batch_size, value_weights: weights.parse().unwrap(), ..Default::default() }
}

fn user() -> UserFeatures {
    UserFeatures {
        user_id: "u3".into(),
        known: true,
        age: Some(31),
        gender: "F".into(),
        occupation: "engineer".into(),
        history: vec!["m1".into(), "m2".into(), "m9".into()],
        ..Default::default()
    }
}

/// 25 candidates with varied source evidence (ranks -1 where a source did not return them).
fn candidates() -> Vec<Candidate> {
    (0..25)
        .map(|k| {
            let i = (k * 7 + 3) % N_ITEMS;
            Candidate {
                item_id: format!("m{i}"),
                source: ["two_tower", "item_to_item", "popular"][k % 3].into(),
                score: 0.0,
                two_tower_score: ((k * 37) % 17) as f32 / 17.0 - 0.3,
                item_to_item_score: ((k * 11) % 13) as f32 / 40.0,
                two_tower_rank: if k % 3 == 0 { k as i32 } else { -1 },
                item_to_item_rank: if k % 3 == 1 { k as i32 / 2 } else { -1 },
                popular_rank: if k % 3 == 2 { 40 - k as i32 } else { -1 },
                category: format!("c{}", i % 3),
                published_at: 1_000 + i as i64,
            }
        })
        .collect()
}

fn user_embedding(dim: usize) -> Vec<f32> {
    let v: Vec<f32> = (0..dim).map(|j| ((j * 5 % 7) as f32 - 3.0) / 4.0).collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / norm).collect()
}

fn request(f: &Fixture, candidates: Vec<Candidate>) -> RankRequest {
    let dim = f.artifacts.item_embeddings.size()[1] as usize;
    RankRequest { user: Some(user()), candidates, user_embedding: user_embedding(dim), context: None }
}

/// What `reco train`'s `rank_candidates` computes, written against the model directly:
/// `(item id, served score)` best first.
fn trainer_order(v: &VersionArtifacts, req: &RankRequest, vm: ValueModel) -> Vec<(String, f32)> {
    let rows: Vec<i64> =
        req.candidates.iter().map(|c| v.items.iter().position(|i| i.id == c.item_id).unwrap() as i64).collect();
    let rank = |r: i32| (r >= 0).then_some(r as usize);
    let evidence: Vec<SourceEvidence> = req
        .candidates
        .iter()
        .zip(&rows)
        .map(|(c, &row)| SourceEvidence {
            two_tower_score: c.two_tower_score,
            item_to_item_score: c.item_to_item_score,
            train_count: v.features.item_train_count[row as usize],
            two_tower_rank: rank(c.two_tower_rank),
            item_to_item_rank: rank(c.item_to_item_rank),
            popular_rank: rank(c.popular_rank),
        })
        .collect();
    let u = req.user.as_ref().unwrap();
    let dense = scoring::dense_features(&evidence, u.history.len());
    let n = rows.len() as i64;
    let idx = Tensor::from_slice(&rows);
    let all_genres = v.features.item_batch(&v.items).genres;
    let full = |x: i64| Tensor::from_slice(&vec![x; rows.len()]);
    let batch = RankerBatch {
        user_emb: Tensor::from_slice(&req.user_embedding).view([1, -1]).repeat([n, 1]),
        item_emb: v.item_embeddings.index_select(0, &idx),
        dense: Tensor::from_slice(&v.ranker_file.dense_scaler.apply(&dense)).view([n, N_DENSE as i64]),
        item: &idx + 1,
        occupation: full(v.features.occupations.index(Some(&u.occupation))),
        age: full(FeatureSpace::age_bucket(u.age)),
        gender: full(v.features.genders.index(Some(&u.gender))),
        genres: pad_bags(&rows.iter().map(|&r| all_genres[r as usize].clone()).collect::<Vec<_>>()),
    };
    let out = tch::no_grad(|| v.ranker.forward(&batch, false));
    let values = Vec::<f32>::try_from(out.value(vm.high_rating_weight)).unwrap();
    let tt: Vec<f32> = req.candidates.iter().map(|c| c.two_tower_score).collect();
    let s = vm.served_scores(&values, &tt);
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by(|&a, &b| s[b].total_cmp(&s[a]).then(rows[a].cmp(&rows[b])));
    order.into_iter().map(|j| (req.candidates[j].item_id.clone(), s[j])).collect()
}

fn assert_same_ranking(got: &RankResponse, want: &[(String, f32)]) {
    let ids: Vec<&str> = got.items.iter().map(|i| i.item_id.as_str()).collect();
    let want_ids: Vec<&str> = want.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, want_ids);
    for (item, (_, s)) in got.items.iter().zip(want) {
        assert!((item.score - s).abs() < 1e-5, "{}: {} vs {s}", item.item_id, item.score);
    }
}

async fn rank(svc: &RankingService, req: RankRequest) -> Result<RankResponse, tonic::Status> {
    svc.rank(Request::new(req)).await.map(|r| r.into_inner())
}

fn metrics_text(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
    out
}

#[tokio::test]
async fn serves_in_the_order_the_trainer_ranked() {
    let f = fixture();
    let (svc, registry) = service(&f, settings(7, ""));
    let req = request(&f, candidates());
    let got = rank(&svc, req.clone()).await.unwrap();
    assert_eq!(got.model_version, "v1");
    assert_same_ranking(&got, &trainer_order(&f.artifacts, &req, f.artifacts.ranker_file.value_model));
    let first = &got.items[0];
    let cand = req.candidates.iter().find(|c| c.item_id == first.item_id).unwrap();
    assert_eq!((&first.source, &first.category, first.published_at), (&cand.source, &cand.category, cand.published_at));
    let row = f.artifacts.items.iter().position(|i| i.id == first.item_id).unwrap() as i64;
    assert_eq!(first.embedding, Vec::<f32>::try_from(f.artifacts.item_embeddings.get(row)).unwrap());
    for item in &got.items {
        let mut tasks: Vec<&String> = item.tasks.keys().collect();
        tasks.sort();
        assert_eq!(tasks, ["high_rating", "interaction"]);
        assert!(item.tasks.values().all(|p| (0.0..=1.0).contains(p)));
    }
    // 25 rows in batches of at most 7: 7 + 7 + 7 + 4.
    let text = metrics_text(&registry);
    assert!(text.contains("reco_ranking_rows_per_forward_count{model_version=\"v1\"} 4"), "{text}");
    assert!(text.contains("reco_ranking_rows_per_forward_sum{model_version=\"v1\"} 25.0"), "{text}");
    assert!(text.contains("reco_ranking_rank_duration_seconds_count{model_version=\"v1\",outcome=\"ok\"} 1"), "{text}");
}

#[tokio::test]
async fn batch_size_does_not_change_the_scores() {
    let f = fixture();
    let req = request(&f, candidates());
    let one = rank(&service(&f, settings(1, "")).0, req.clone()).await.unwrap();
    let all = rank(&service(&f, settings(4096, "")).0, req).await.unwrap();
    let pairs = |r: &RankResponse| r.items.iter().map(|i| (i.item_id.clone(), i.score)).collect::<Vec<_>>();
    assert_same_ranking(&one, &pairs(&all));
}

#[tokio::test]
async fn value_weights_override_the_trained_value_model() {
    let f = fixture();
    let req = request(&f, candidates());
    let trained = f.artifacts.ranker_file.value_model;
    // The fixture's trained weight is 0.5, so the operator's `click=1,like=0.5` changes nothing.
    assert_eq!(trained.high_rating_weight, 0.5);
    let same = rank(&service(&f, settings(64, "click=1,like=0.5")).0, req.clone()).await.unwrap();
    assert_same_ranking(&same, &trainer_order(&f.artifacts, &req, trained));
    let heavy = ValueModel { high_rating_weight: 8.0, ..trained };
    let got = rank(&service(&f, settings(64, "high_rating=8")).0, req.clone()).await.unwrap();
    assert_same_ranking(&got, &trainer_order(&f.artifacts, &req, heavy));
    let default = trainer_order(&f.artifacts, &req, trained);
    assert_ne!(got.items.iter().map(|i| i.score).collect::<Vec<_>>(), default.iter().map(|p| p.1).collect::<Vec<_>>());
}

#[test]
fn unknown_value_weight_tasks_are_refused_naming_the_valid_ones() {
    let f = fixture();
    let err =
        RankingService::new(f.artifacts.clone(), "v1", &settings(8, "click=1,purchase=2"), metrics()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, BuildError::Weights(_)));
    assert!(
        msg.contains("purchase")
            && msg.contains("interaction (alias click)")
            && msg.contains("high_rating (alias like)"),
        "{msg}"
    );
    let err = RankingService::new(f.artifacts.clone(), "v1", &settings(0, ""), metrics()).unwrap_err();
    assert!(matches!(err, BuildError::BatchSize), "{err}");
}

fn metrics() -> Metrics {
    Metrics::register(&mut Registry::default())
}

#[tokio::test]
async fn unknown_duplicate_and_non_finite_candidates_are_skipped_and_counted() {
    let f = fixture();
    let (svc, registry) = service(&f, settings(16, ""));
    let mut cands = candidates();
    let known = cands.clone();
    let unknown = |id: &str| Candidate { item_id: id.into(), ..known[0].clone() };
    cands.insert(3, unknown("not-in-catalogue"));
    cands.push(unknown(""));
    cands.push(known[5].clone());
    cands.push(Candidate { item_id: "m1".into(), two_tower_score: f32::NAN, ..known[0].clone() });
    cands.push(Candidate { item_id: "m6".into(), item_to_item_score: f32::INFINITY, ..known[0].clone() });
    let got = rank(&svc, request(&f, cands)).await.unwrap();
    // Exactly the known candidates, ranked as if the others were never sent.
    let want = rank(&svc, request(&f, known.clone())).await.unwrap();
    assert_eq!(got, want);
    assert!(got.items.iter().all(|i| i.score.is_finite() && i.tasks.values().all(|p| p.is_finite())));
    let text = metrics_text(&registry);
    for line in [
        "reco_ranking_skipped_candidates_total{model_version=\"v1\",reason=\"unknown_item\"} 2",
        "reco_ranking_skipped_candidates_total{model_version=\"v1\",reason=\"duplicate\"} 1",
        "reco_ranking_skipped_candidates_total{model_version=\"v1\",reason=\"invalid_score\"} 2",
    ] {
        assert!(text.contains(line), "{line} missing in\n{text}");
    }
    // Only unknown items: an empty list, not an error.
    let none = rank(&svc, request(&f, vec![unknown("x"), unknown("y")])).await.unwrap();
    assert!(none.items.is_empty());
}

#[tokio::test]
async fn empty_candidates_give_an_empty_response() {
    let f = fixture();
    let (svc, _) = service(&f, settings(16, ""));
    let got = rank(&svc, RankRequest::default()).await.unwrap();
    assert_eq!(got, RankResponse { model_version: "v1".into(), items: vec![] });
}

#[tokio::test]
async fn bad_input_is_invalid_argument_naming_the_field() {
    let f = fixture();
    let (svc, registry) = service(&f, settings(16, ""));
    let mut req = request(&f, candidates());
    req.user_embedding.push(0.0);
    let err = rank(&svc, req.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("user_embedding has 17 values") && err.message().contains("expects 16"), "{err:?}");
    req.user_embedding.clear();
    assert_eq!(rank(&svc, req.clone()).await.unwrap_err().code(), Code::InvalidArgument);
    let mut req = request(&f, candidates());
    req.user_embedding[2] = f32::NAN;
    let err = rank(&svc, req).await.unwrap_err();
    assert!(err.code() == Code::InvalidArgument && err.message().contains("user_embedding"), "{err:?}");
    let huge = request(&f, vec![candidates()[0].clone(); MAX_CANDIDATES + 1]);
    let err = rank(&svc, huge).await.unwrap_err();
    assert!(err.code() == Code::InvalidArgument && err.message().contains("candidates"), "{err:?}");
    // A request without user features still ranks (unknown demographics).
    let mut anonymous = request(&f, candidates());
    anonymous.user = None;
    assert_eq!(rank(&svc, anonymous).await.unwrap().items.len(), 25);
    assert!(
        metrics_text(&registry)
            .contains("reco_ranking_rank_duration_seconds_count{model_version=\"v1\",outcome=\"invalidargument\"} 4")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_round_trip_with_the_generated_client() {
    let f = fixture();
    let (svc, _) = service(&f, settings(32, ""));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(reco_proto::serve_on(reco_ranking::grpc_routes(svc.clone()), listener, async {
        let _ = stopped.await;
    }));
    let mut client = RankingClient::connect(format!("http://{addr}")).await.unwrap();
    let req = request(&f, candidates());
    let remote = client.rank(req.clone()).await.unwrap().into_inner();
    assert_eq!(remote, rank(&svc, req.clone()).await.unwrap());
    assert_eq!(remote.items.len(), 25);
    let mut bad = req;
    bad.user_embedding.truncate(3);
    let err = client.rank(bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("user_embedding"));
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// Traces our own ranker (the version's weights, frozen so that tracing keeps them as constants)
/// into a TorchScript file with `f` applied to its logits.
fn trace_ranker(v: &VersionArtifacts, path: &std::path::Path, f: impl Fn(Tensor) -> Tensor) {
    let mut vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let ranker = Ranker::new(&vs.root(), v.ranker_file.model.clone());
    vs.load(v.dir.join(files::RANKER_WEIGHTS)).unwrap();
    vs.freeze();
    let dim = v.item_embeddings.size()[1];
    let inputs = [
        Tensor::randn([3, dim], (Kind::Float, tch::Device::Cpu)),
        Tensor::randn([3, dim], (Kind::Float, tch::Device::Cpu)),
        Tensor::randn([3, N_DENSE as i64], (Kind::Float, tch::Device::Cpu)),
        Tensor::from_slice(&[1i64, 2, 3]),
        Tensor::from_slice(&[0i64, 0, 0]),
        Tensor::from_slice(&[1i64, 2, 3]),
        Tensor::from_slice(&[0i64, 0, 0]),
        pad_bags(&[vec![1, 2], vec![], vec![3]]),
    ];
    let module = tch::no_grad(|| {
        tch::CModule::create_by_tracing("Ranker", "forward", &inputs, &mut |x: &[Tensor]| {
            let b = RankerBatch {
                user_emb: x[0].shallow_clone(),
                item_emb: x[1].shallow_clone(),
                dense: x[2].shallow_clone(),
                item: x[3].shallow_clone(),
                occupation: x[4].shallow_clone(),
                age: x[5].shallow_clone(),
                gender: x[6].shallow_clone(),
                genres: x[7].shallow_clone(),
            };
            vec![f(ranker.forward(&b, false).logits)]
        })
    })
    .unwrap();
    module.save(path).unwrap();
}

#[tokio::test]
async fn a_torchscript_ranker_scores_like_the_native_one() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ranker.pt");
    trace_ranker(&f.artifacts, &path, |x| x);
    let ts = ScorerSettings { torchscript: Some(path), ..settings(7, "") };
    let (svc, _) = service(&f, ts);
    let req = request(&f, candidates());
    let native = rank(&service(&f, settings(7, "")).0, req.clone()).await.unwrap();
    let scripted = rank(&svc, req.clone()).await.unwrap();
    let pairs: Vec<(String, f32)> = native.items.iter().map(|i| (i.item_id.clone(), i.score)).collect();
    assert_same_ranking(&scripted, &pairs);
    assert_same_ranking(&scripted, &trainer_order(&f.artifacts, &req, f.artifacts.ranker_file.value_model));
}

#[test]
fn torchscript_files_that_break_the_contract_are_refused() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let build = |path: std::path::PathBuf| {
        let ts = ScorerSettings { torchscript: Some(path), ..settings(7, "") };
        RankingService::new(f.artifacts.clone(), "v1", &ts, metrics()).unwrap_err()
    };
    let missing = dir.path().join("missing.pt");
    let err = build(missing.clone());
    assert!(matches!(err, BuildError::TorchScriptLoad { .. }) && err.to_string().contains("missing.pt"), "{err}");
    let garbage = dir.path().join("garbage.pt");
    std::fs::write(&garbage, b"not a zip archive").unwrap();
    assert!(matches!(build(garbage), BuildError::TorchScriptLoad { .. }));
    let one_task = dir.path().join("one_task.pt");
    trace_ranker(&f.artifacts, &one_task, |x| x.narrow(1, 0, 1));
    let err = build(one_task);
    assert!(matches!(err, BuildError::TorchScriptContract { .. }) && err.to_string().contains("[2, 2]"), "{err}");
}

/// A fixture version whose `ranker.json` carries the drift reference of the rows the scorer
/// builds for `reference_request`.
fn fixture_with_reference(reference_request: &RankRequest) -> Fixture {
    let f = fixture();
    let rows =
        Scorer::new(f.artifacts.clone(), &ScorerSettings::default()).unwrap().rank(reference_request).unwrap().dense;
    let path = f._dir.path().join(files::RANKER_CONFIG);
    let mut ranker: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    ranker["feature_reference"] = serde_json::to_value(DriftReference::fit(&rows).unwrap()).unwrap();
    std::fs::write(&path, ranker.to_string()).unwrap();
    let artifacts = Arc::new(VersionArtifacts::load(f._dir.path()).unwrap());
    Fixture { artifacts, ..f }
}

fn series_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The drift monitors: requests like the reference's keep every feature's PSI at 0; users with
/// far longer histories whose candidates the two-tower no longer returns push exactly those two
/// features past the 0.2 alert level, and values beyond the reference's range are counted.
#[tokio::test]
async fn feature_drift_is_measured_window_by_window_against_the_versions_reference() {
    let probe = fixture();
    let usual = request(&probe, candidates());
    let f = fixture_with_reference(&usual);
    let settings =
        ScorerSettings { drift: DriftSettings { window_requests: 10, sample_every: 1 }, ..Default::default() };
    let (svc, registry) = service(&f, settings);
    let psi = |text: &str, feature: &str| {
        series_value(text, &format!("reco_ranking_feature_psi{{model_version=\"v1\",feature=\"{feature}\"}}"))
    };
    for _ in 0..9 {
        rank(&svc, usual.clone()).await.unwrap();
    }
    assert_eq!(psi(&metrics_text(&registry), "two_tower_score"), None, "9 of 10 requests: the window is open");
    rank(&svc, usual.clone()).await.unwrap();
    let text = metrics_text(&registry);
    for feature in DENSE_FEATURE_NAMES {
        assert_eq!(psi(&text, feature), Some(0.0), "{feature}");
    }

    let mut shifted = usual.clone();
    shifted.user.as_mut().unwrap().history = (0..40).map(|i| format!("m{i}")).collect();
    shifted.candidates.iter_mut().for_each(|c| c.two_tower_rank = -1);
    for _ in 0..10 {
        rank(&svc, shifted.clone()).await.unwrap();
    }
    let text = metrics_text(&registry);
    for feature in DENSE_FEATURE_NAMES {
        let got = psi(&text, feature).unwrap();
        if ["two_tower_rank_weight", "log_history_length"].contains(&feature) {
            assert!(got > 0.2, "{feature}: PSI {got}");
        } else {
            assert!(got < 0.01, "{feature} did not move: PSI {got}");
        }
    }
    let count = |name: &str, feature: &str| {
        series_value(&text, &format!("reco_ranking_feature_{name}_total{{model_version=\"v1\",feature=\"{feature}\"}}"))
    };
    assert_eq!(count("out_of_range", "log_history_length"), Some(250.0), "every shifted row");
    assert_eq!(count("out_of_range", "log_popularity"), Some(0.0));
    assert_eq!(count("missing", "two_tower_score"), Some(0.0));
    assert_eq!(series_value(&text, "reco_ranking_feature_rows_total{model_version=\"v1\"}"), Some(500.0));

    // One request in three is sampled.
    let settings =
        ScorerSettings { drift: DriftSettings { window_requests: 10, sample_every: 3 }, ..Default::default() };
    let (svc, registry) = service(&f, settings);
    for _ in 0..9 {
        rank(&svc, usual.clone()).await.unwrap();
    }
    let rows = series_value(&metrics_text(&registry), "reco_ranking_feature_rows_total{model_version=\"v1\"}");
    assert_eq!(rows, Some(75.0));
    // A version trained before drift monitoring has no reference: no monitors, no series.
    let (svc, registry) = service(&probe, ScorerSettings::default());
    rank(&svc, usual).await.unwrap();
    assert!(!metrics_text(&registry).contains("reco_ranking_feature_rows_total{"));
    let refused = RankingService::new(
        f.artifacts.clone(),
        "v1",
        &ScorerSettings { drift: DriftSettings { window_requests: 1, sample_every: 0 }, ..Default::default() },
        metrics(),
    );
    assert!(matches!(refused, Err(BuildError::DriftSampling)));
}

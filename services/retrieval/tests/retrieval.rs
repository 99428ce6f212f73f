//! The service end to end on a random-weights version (real file layout and architecture) with the
//! embedded vector store: candidate evidence against a direct computation, exclusions, filters, cold
//! start, new items, batching and bad input over gRPC.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use reco_model::artifacts::{VersionArtifacts, write_random_version};
use reco_model::features::{Item, User};
use reco_model::{ItemBatch, UserBatch};
use reco_proto::retrieval_client::RetrievalClient;
use reco_proto::{Context, EventType, RetrieveRequest, SessionEvent, UserFeatures};
use reco_retrieval::{Metrics, RetrievalService, Settings};
use reco_vector_store::{Backend, CollectionSpec, Distance, HnswParams, OpenMode};

const GENRES: [&str; 4] = ["Drama", "Comedy", "Action", "Horror"];
const N_ITEMS: usize = 60;

fn catalog() -> Vec<Item> {
    (0..N_ITEMS)
        .map(|i| Item {
            id: format!("i{i}"),
            title: Some(format!("Title number {i}")),
            year: (i % 5 != 0).then_some(1980 + i as i32 % 30),
            genres: vec![GENRES[i % 4].to_string(), GENRES[(i / 4) % 4].to_string()],
        })
        .collect()
}

// Fields drop in order: the service (and its vector store, which flushes on drop) before the directory.
struct Fixture {
    artifacts: Arc<VersionArtifacts>,
    service: RetrievalService,
    registry: Registry,
    _dir: tempfile::TempDir,
}

async fn fixture(tune: impl FnOnce(&mut Settings)) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let users: Vec<String> = (0..10).map(|u| format!("u{u}")).collect();
    write_random_version(&dir.path().join("model"), &catalog(), &users, 11).unwrap();
    let artifacts = Arc::new(VersionArtifacts::load(&dir.path().join("model")).unwrap());
    let spec = CollectionSpec { pipeline: "explore".into(), version: "v1".into(), dim: 16, distance: Distance::Dot };
    let backend = Backend::Embedded { dir: dir.path().join("vectors") };
    let store =
        reco_vector_store::open(&backend, &spec, OpenMode::CreateIfMissing, HnswParams::default()).await.unwrap();
    let mut settings = Settings::new(artifacts.ranker_file.candidates);
    settings.per_source = 10;
    settings.popular = 5;
    settings.fresh = 5;
    tune(&mut settings);
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let service = RetrievalService::new(Arc::clone(&artifacts), "v1".into(), settings, store, metrics).await.unwrap();
    Fixture { artifacts, service, registry, _dir: dir }
}

impl Fixture {
    fn metrics_text(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
        text
    }

    fn metric(&self, name: &str) -> f64 {
        self.metrics_text()
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no {name} in\n{}", self.metrics_text()))
    }

    fn row(&self, id: &str) -> usize {
        self.artifacts.items.iter().position(|i| i.id == id).unwrap()
    }

    fn item_embedding(&self, row: usize) -> Vec<f32> {
        Vec::<f32>::try_from(self.artifacts.item_embeddings.get(row as i64)).unwrap()
    }

    fn ease(&self, history: &[usize], row: usize) -> f32 {
        history.iter().map(|&h| f32::try_from(self.artifacts.item_item.get(h as i64).get(row as i64)).unwrap()).sum()
    }

    /// The user tower run directly, outside the service.
    fn direct_embedding(&self, index: i64, user: &User, history: &[i64], now: i64) -> Vec<f32> {
        let mut b = UserBatch::default();
        self.artifacts.features.push_user(&mut b, index, user, history, now);
        let t = tch::no_grad(|| self.artifacts.two_tower.encode_users(&b, false)).unwrap();
        Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5)
}

const NOW_MS: i64 = 1_700_000_000_000;

fn request(user_id: &str, history: &[&str], k: u32) -> RetrieveRequest {
    RetrieveRequest {
        user: Some(UserFeatures {
            user_id: user_id.into(),
            known: true,
            history: history.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }),
        k,
        context: Some(Context { now_ms: NOW_MS, ..Default::default() }),
        exclude_item_ids: vec![],
    }
}

#[tokio::test]
async fn candidate_evidence_matches_a_direct_computation() {
    let f = fixture(|_| {}).await;
    let history = ["i3", "i7", "i12"];
    let resp = f.service.retrieve(&request("u2", &history, 100)).await.unwrap();
    assert_eq!(resp.model_version, "v1");
    let hist_rows: Vec<usize> = history.iter().map(|h| f.row(h)).collect();
    let model_history: Vec<i64> = hist_rows.iter().map(|&r| r as i64 + 1).collect();
    let user = User { id: "u2".into(), ..Default::default() };
    let expected = f.direct_embedding(3, &user, &model_history, NOW_MS / 1000);
    assert!(close(&resp.user_embedding, &expected), "user embedding differs from the user tower's");

    let mut sources = HashSet::new();
    for c in &resp.candidates {
        let row = f.row(&c.item_id);
        let item = &f.artifacts.items[row];
        sources.insert(c.source.clone());
        assert!((c.two_tower_score - dot(&expected, &f.item_embedding(row))).abs() < 1e-5, "{c:?}");
        assert!((c.item_to_item_score - f.ease(&hist_rows, row)).abs() < 1e-5, "{c:?}");
        assert_eq!(c.category, item.genres[0]);
        let year = item.year.map_or(0, |y| {
            jiff::civil::date(y as i16, 1, 1).to_zoned(jiff::tz::TimeZone::UTC).unwrap().timestamp().as_second()
        });
        assert_eq!(c.published_at, year);
        assert!(!history.contains(&c.item_id.as_str()), "history is excluded");
    }
    assert!(sources.is_superset(&HashSet::from(["two_tower".into(), "item_to_item".into()])), "{sources:?}");

    // Two-tower ranks are the exact top-10 by dot product among the items not in the history.
    let mut exact: Vec<usize> = (0..N_ITEMS).filter(|r| !hist_rows.contains(r)).collect();
    exact.sort_by(|&a, &b| dot(&expected, &f.item_embedding(b)).total_cmp(&dot(&expected, &f.item_embedding(a))));
    let mut tt: Vec<_> = resp.candidates.iter().filter(|c| c.two_tower_rank >= 0).collect();
    tt.sort_by_key(|c| c.two_tower_rank);
    let tt_rows: Vec<usize> = tt.iter().map(|c| f.row(&c.item_id)).collect();
    assert_eq!(tt_rows, exact[..10]);
    // Item-to-item ranks are the top-10 EASE scores.
    let mut ii: Vec<usize> = (0..N_ITEMS).filter(|r| !hist_rows.contains(r)).collect();
    ii.sort_by(|&a, &b| f.ease(&hist_rows, b).total_cmp(&f.ease(&hist_rows, a)).then(a.cmp(&b)));
    let mut got: Vec<_> = resp.candidates.iter().filter(|c| c.item_to_item_rank >= 0).collect();
    got.sort_by_key(|c| c.item_to_item_rank);
    assert_eq!(got.iter().map(|c| f.row(&c.item_id)).collect::<Vec<_>>(), ii[..10]);
    // Popular ranks follow the train counts.
    let counts = &f.artifacts.features.item_train_count;
    let mut pop: Vec<_> = resp.candidates.iter().filter(|c| c.popular_rank >= 0).collect();
    pop.sort_by_key(|c| c.popular_rank);
    assert_eq!(pop.len(), 5);
    assert!(pop.windows(2).all(|w| counts[f.row(&w[0].item_id)] >= counts[f.row(&w[1].item_id)]));
    // Mixed scores are sorted.
    assert!(resp.candidates.windows(2).all(|w| w[0].score >= w[1].score));
}

#[tokio::test]
async fn exclusions_hidden_items_and_content_types_are_honoured() {
    let f = fixture(|s| s.per_source = N_ITEMS).await;
    let mut req = request("u1", &["i1", "i2"], 1000);
    let user = req.user.as_mut().unwrap();
    user.session = vec![
        SessionEvent { item_id: "i5".into(), r#type: EventType::Click as i32, at_ms: 1, dwell_ms: 0 },
        SessionEvent { item_id: "i6".into(), r#type: EventType::Hide as i32, at_ms: 2, dwell_ms: 0 },
    ];
    req.exclude_item_ids = vec!["i9".into(), "not-an-item".into()];
    let resp = f.service.retrieve(&req).await.unwrap();
    let ids: HashSet<&str> = resp.candidates.iter().map(|c| c.item_id.as_str()).collect();
    assert_eq!(ids.len(), N_ITEMS - 5, "everything but the five excluded items");
    for gone in ["i1", "i2", "i5", "i6", "i9"] {
        assert!(!ids.contains(gone), "{gone} returned");
    }

    req.context.as_mut().unwrap().content_types = vec!["Horror".into()];
    req.k = 7;
    let resp = f.service.retrieve(&req).await.unwrap();
    assert_eq!(resp.candidates.len(), 7, "k caps the total");
    for c in &resp.candidates {
        assert!(f.artifacts.items[f.row(&c.item_id)].genres.contains(&"Horror".to_string()), "{c:?}");
    }
    req.context.as_mut().unwrap().content_types = vec!["NoSuchType".into()];
    assert!(f.service.retrieve(&req).await.unwrap().candidates.is_empty());
}

#[tokio::test]
async fn an_unknown_user_gets_popular_and_demographic_items() {
    let f = fixture(|_| {}).await;
    let mut req = request("stranger", &[], 50);
    let u = req.user.as_mut().unwrap();
    u.known = false;
    u.age = Some(30);
    u.gender = "F".into();
    let resp = f.service.retrieve(&req).await.unwrap();
    let user = User { id: "stranger".into(), age: Some(30), gender: Some("F".into()), ..Default::default() };
    assert!(close(&resp.user_embedding, &f.direct_embedding(0, &user, &[], NOW_MS / 1000)));
    let sources: HashSet<&str> = resp.candidates.iter().map(|c| c.source.as_str()).collect();
    assert!(sources.contains("popular") && sources.contains("two_tower"), "{sources:?}");
    assert!(resp.candidates.iter().all(|c| c.item_to_item_rank == -1 && c.item_to_item_score == 0.0));
    // Another age and hour is another cold-start query.
    let mut other = req.clone();
    other.user.as_mut().unwrap().age = Some(60);
    other.context.as_mut().unwrap().now_ms += 5 * 3_600_000;
    let resp2 = f.service.retrieve(&other).await.unwrap();
    assert!(!close(&resp.user_embedding, &resp2.user_embedding));
}

#[tokio::test]
async fn a_new_item_is_retrieved_through_its_content() {
    let f = fixture(|s| {
        s.per_source = 5;
        s.weights = "fresh=0,popular=0,item_to_item=0".parse().unwrap();
    })
    .await;
    let new = Item {
        id: "brand-new".into(),
        title: Some("Night of the Horror".into()),
        year: None,
        genres: vec!["Horror".into(), "Action".into()],
    };
    // Its content embedding, from the item tower with index 0 and no interactions.
    let mut b = ItemBatch::default();
    f.artifacts.features.push_item(&mut b, 0, &new, 0);
    let content =
        Vec::<f32>::try_from(tch::no_grad(|| f.artifacts.two_tower.encode_items(&b, false)).unwrap().flatten(0, -1))
            .unwrap();
    // A user whose tastes match: among users and histories, one whose embedding puts the new item above
    // every catalogue item but a few.
    let mut best: Option<(RetrieveRequest, usize)> = None;
    for u in 0..10 {
        for h in 0..N_ITEMS {
            let req = request(&format!("u{u}"), &[&format!("i{h}")], 5);
            let emb = f.service.retrieve(&req).await.unwrap().user_embedding;
            let beaten =
                (0..N_ITEMS).filter(|&r| r != h && dot(&emb, &f.item_embedding(r)) > dot(&emb, &content)).count();
            if best.as_ref().is_none_or(|b| beaten < b.1) {
                best = Some((req, beaten));
            }
        }
    }
    let (req, beaten) = best.unwrap();
    assert!(beaten < 5, "no user prefers the new item's content (beaten by {beaten})");
    let before = f.service.retrieve(&req).await.unwrap();
    assert!(before.candidates.iter().all(|c| c.item_id != "brand-new"));

    f.service.add_items(vec![new.clone()]).await.unwrap();
    let after = f.service.retrieve(&req).await.unwrap();
    let c = after.candidates.iter().find(|c| c.item_id == "brand-new").expect("the new item is retrieved");
    assert_eq!((c.source.as_str(), c.two_tower_rank, c.category.as_str()), ("content", beaten as i32, "Horror"));
    assert!((c.two_tower_score - dot(&after.user_embedding, &content)).abs() < 1e-5);
    assert_eq!((c.item_to_item_score, c.popular_rank, c.published_at), (0.0, -1, 0));
    assert_eq!(f.metric("reco_retrieval_items_added_total{model_version=\"v1\"}"), 1.0);

    let dup = f.service.add_items(vec![new]).await.unwrap_err().to_string();
    assert!(dup.contains("brand-new"), "{dup}");
    assert!(f.service.add_items(vec![Item { id: "i1".into(), ..Default::default() }]).await.is_err());
}

#[tokio::test]
async fn concurrent_requests_are_batched_and_embed_as_one_by_one() {
    let f = fixture(|s| {
        s.embedding_cache_size = 0;
        s.batch_wait = Duration::from_millis(20);
    })
    .await;
    let requests: Vec<RetrieveRequest> =
        (0..64).map(|i| request(&format!("u{}", i % 12), &[&format!("i{i}"), &format!("i{}", i / 2)], 20)).collect();
    let mut one_by_one = Vec::new();
    for r in &requests {
        one_by_one.push(f.service.retrieve(r).await.unwrap());
    }
    let batches_before = f.metric("reco_retrieval_batch_size_count{model_version=\"v1\"}");
    let tasks: Vec<_> = requests
        .iter()
        .cloned()
        .map(|r| {
            let s = f.service.clone();
            tokio::spawn(async move { s.retrieve(&r).await.unwrap() })
        })
        .collect();
    for (task, single) in tasks.into_iter().zip(&one_by_one) {
        let batched = task.await.unwrap();
        assert!(close(&batched.user_embedding, &single.user_embedding));
        let ids = |r: &reco_proto::RetrieveResponse| r.candidates.iter().map(|c| c.item_id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&batched), ids(single));
    }
    let batches = f.metric("reco_retrieval_batch_size_count{model_version=\"v1\"}") - batches_before;
    assert!(batches < 64.0, "64 concurrent requests ran in {batches} forward passes");
    assert_eq!(f.metric("reco_retrieval_batch_size_sum{model_version=\"v1\"}"), 128.0);
}

#[tokio::test]
async fn repeated_requests_hit_the_embedding_cache() {
    let f = fixture(|_| {}).await;
    let req = request("u4", &["i1"], 10);
    let a = f.service.retrieve(&req).await.unwrap();
    let b = f.service.retrieve(&req).await.unwrap();
    assert_eq!(a.user_embedding, b.user_embedding);
    let text = f.metrics_text();
    assert!(text.contains("reco_retrieval_embedding_cache_total{model_version=\"v1\",result=\"hit\"} 1"), "{text}");
    assert!(text.contains("reco_retrieval_embedding_cache_total{model_version=\"v1\",result=\"miss\"} 1"), "{text}");
    // A new history is a new key.
    f.service.retrieve(&request("u4", &["i1", "i2"], 10)).await.unwrap();
    assert!(f.metrics_text().contains("reco_retrieval_embedding_cache_total{model_version=\"v1\",result=\"miss\"} 2"));
}

#[tokio::test]
async fn grpc_serves_and_rejects_bad_input_by_field() {
    let f = fixture(|_| {}).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(reco_proto::serve_on(reco_retrieval::grpc_routes(f.service.clone()), listener, async {
        let _ = stopped.await;
    }));
    let mut client = RetrievalClient::connect(format!("http://{addr}")).await.unwrap();
    let ok = client.retrieve(request("u1", &["i1"], 10)).await.unwrap().into_inner();
    assert_eq!(ok.candidates.len(), 10);

    let cases = [
        (RetrieveRequest { k: 0, ..request("u1", &[], 1) }, "k"),
        (RetrieveRequest { k: 1_000_000, ..request("u1", &[], 1) }, "k"),
        (request("", &[], 10), "user.user_id"),
        (RetrieveRequest { user: None, ..request("u1", &[], 10) }, "user"),
    ];
    for (req, field) in cases {
        let status = client.retrieve(req).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().starts_with(&format!("{field}:")), "{}", status.message());
    }
    // An oversized history is truncated, not rejected.
    let long: Vec<String> = (0..20_000).map(|i| format!("i{}", i % N_ITEMS)).collect();
    let long: Vec<&str> = long.iter().map(String::as_str).collect();
    assert!(client.retrieve(request("u1", &long, 10)).await.is_ok());

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

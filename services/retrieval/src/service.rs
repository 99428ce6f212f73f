//! The Retrieval service of one model version: validates the request, embeds the user (cache, then the
//! batched user tower), gathers every source's top list, mixes them and fills each candidate with the same
//! evidence the ranker was trained on (two-tower and EASE scores for every candidate, per-source ranks).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use reco_model::artifacts::VersionArtifacts;
use reco_model::features::{FeatureSpace, Item};
use reco_proto::{Candidate, RetrieveRequest, RetrieveResponse};
use reco_vector_store::{ItemPayload, Point, SearchFilter, StoreError, VectorStore};
use tonic::{Request, Response, Status};

use crate::args::Settings;
use crate::catalog::{Catalog, CatalogError, ItemItem, top_scores};
use crate::encoder::{EncodeError, UserEncoder, encode_new_items};
use crate::metrics::Metrics;
use crate::mix::{Source, mix};
use crate::query::{InvalidArgument, Plan, plan};

/// Points upserted per call when filling the vector store.
const UPSERT_CHUNK: usize = 1024;

/// Why the service could not start or an item could not be added.
#[derive(Debug, thiserror::Error)]
pub enum RetrievalError {
    #[error("model artifacts: {0}")]
    Artifacts(String),
    #[error("vector store: {0}")]
    Store(#[from] StoreError),
    #[error("vector store has dimension {store}, the model embeds in {model}")]
    Dimension { store: usize, model: usize },
    #[error("catalogue: {0}")]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error(transparent)]
    Invalid(#[from] InvalidArgument),
}

impl From<RetrievalError> for Status {
    fn from(e: RetrievalError) -> Self {
        match e {
            RetrievalError::Invalid(e) => Status::invalid_argument(e.to_string()),
            e => Status::internal(e.to_string()),
        }
    }
}

type EmbeddingCache = moka::future::Cache<(String, u64), Arc<Vec<f32>>>;

struct Inner {
    version: String,
    artifacts: Arc<VersionArtifacts>,
    features: Arc<FeatureSpace>,
    user_index: HashMap<String, i64>,
    catalog: RwLock<Catalog>,
    item_item: ItemItem,
    store: Arc<dyn VectorStore>,
    encoder: UserEncoder,
    cache: Option<EmbeddingCache>,
    settings: Settings,
    metrics: Metrics,
}

/// `reco_proto::retrieval_server::Retrieval` for one model version; cheap to clone.
#[derive(Clone)]
pub struct RetrievalService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RetrievalService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetrievalService").field("version", &self.inner.version).finish_non_exhaustive()
    }
}

fn tensor_vec(t: &tch::Tensor, what: &str) -> Result<Vec<f32>, RetrievalError> {
    Vec::<f32>::try_from(t.flatten(0, -1)).map_err(|e| RetrievalError::Artifacts(format!("{what}: {e}")))
}

fn point(catalog: &Catalog, row: usize) -> Point {
    Point {
        id: row as u64 + 1,
        vector: catalog.embedding(row).to_vec(),
        payload: ItemPayload { category: catalog.items[row].genres.clone(), published_at: catalog.published_at[row] },
    }
}

impl RetrievalService {
    /// Serves `artifacts` as `version`. Fills `store` with the catalogue's item embeddings (point id = model
    /// item index) when it holds fewer points, and starts the user-tower batcher on the current runtime.
    /// (Not an `async fn`: the `!Sync` artifacts are wrapped before the future is built, so it is `Send`.)
    pub fn new(
        artifacts: Arc<VersionArtifacts>,
        version: String,
        settings: Settings,
        store: Arc<dyn VectorStore>,
        metrics: Metrics,
    ) -> impl Future<Output = Result<Self, RetrievalError>> + Send {
        Self::start(artifacts, version, settings, store, metrics)
    }

    pub(crate) async fn start(
        artifacts: Arc<VersionArtifacts>,
        version: String,
        settings: Settings,
        store: Arc<dyn VectorStore>,
        metrics: Metrics,
    ) -> Result<Self, RetrievalError> {
        tch::set_num_threads(settings.torch_threads as i32);
        let metrics = metrics.for_version(&version);
        let (features, mut items, user_ids, mut embeddings, dim, item_item) = {
            let a = &*artifacts;
            let dim = a.item_embeddings.size().get(1).copied().unwrap_or(0) as usize;
            (
                a.features.clone(),
                a.items.clone(),
                a.user_ids.clone(),
                tensor_vec(&a.item_embeddings, "item embeddings")?,
                dim,
                tensor_vec(&a.item_item, "item-to-item weights")?,
            )
        };
        if store.dim() != dim {
            return Err(RetrievalError::Dimension { store: store.dim(), model: dim });
        }
        // A version may list items beyond those it was trained on (content embeddings only, as
        // `reco synthetic-catalog` writes): they join the catalogue as items added after training.
        let trained = artifacts.n_trained_items;
        let later_items = items.split_off(trained.min(items.len()));
        let later_embeddings = embeddings.split_off((trained * dim).min(embeddings.len()));
        let mut catalog = Catalog::new(items, embeddings, dim, &features.item_train_count)?;
        catalog.add(later_items, later_embeddings)?;
        let item_item = ItemItem::new(item_item, trained)?;
        let n = catalog.len();
        if store.info().await?.points < n as u64 {
            let points: Vec<Point> = (0..n).map(|r| point(&catalog, r)).collect();
            for chunk in points.chunks(UPSERT_CHUNK) {
                store.upsert(chunk).await?;
            }
            store.commit().await?;
            tracing::info!(collection = store.collection(), items = n, "indexed item embeddings");
        }
        let features = Arc::new(features);
        let encoder = UserEncoder::spawn(
            artifacts.clone(),
            Arc::clone(&features),
            settings.batch_max,
            settings.batch_wait,
            metrics.clone(),
        );
        let cache = (settings.embedding_cache_size > 0).then(|| {
            moka::future::Cache::builder()
                .max_capacity(settings.embedding_cache_size)
                .time_to_live(std::time::Duration::from_secs(600))
                .build()
        });
        let user_index = user_ids.into_iter().enumerate().map(|(i, id)| (id, i as i64 + 1)).collect();
        let inner = Inner {
            version,
            artifacts,
            features,
            user_index,
            catalog: RwLock::new(catalog),
            item_item,
            store,
            encoder,
            cache,
            settings,
            metrics,
        };
        Ok(RetrievalService { inner: Arc::new(inner) })
    }

    pub fn version(&self) -> &str {
        &self.inner.version
    }

    fn catalog(&self) -> std::sync::RwLockReadGuard<'_, Catalog> {
        self.inner.catalog.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds items the model has never seen: embeds them from their content with the item tower (item index
    /// 0, no interactions), indexes them in the vector store and the catalogue, so two-tower retrieval and
    /// the fresh source can return them. Ids already in the catalogue are refused (nothing is added).
    pub async fn add_items(&self, items: Vec<Item>) -> Result<(), RetrievalError> {
        if items.is_empty() {
            return Ok(());
        }
        self.catalog().check_new(&items)?;
        let (a, f, batch) = (self.inner.artifacts.clone(), Arc::clone(&self.inner.features), items.clone());
        let embeddings = tokio::task::spawn_blocking(move || encode_new_items(&a, &f, &batch))
            .await
            .map_err(|e| EncodeError::Model(format!("item tower panicked: {e}")))??;
        let count = items.len();
        let points = {
            let mut c = self.inner.catalog.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            let rows = c.add(items, embeddings.concat())?;
            rows.map(|r| point(&c, r)).collect::<Vec<_>>()
        };
        self.inner.store.upsert(&points).await?;
        self.inner.store.commit().await?;
        self.inner.metrics.items_added(count);
        Ok(())
    }

    async fn user_embedding(&self, plan: &Plan) -> Result<Arc<Vec<f32>>, RetrievalError> {
        let started = Instant::now();
        let key = (plan.user_id.clone(), plan.query.fingerprint());
        if let Some(cache) = &self.inner.cache
            && let Some(e) = cache.get(&key).await
        {
            self.inner.metrics.cache(true);
            self.inner.metrics.observe_stage("user_tower", started);
            return Ok(e);
        }
        let e = Arc::new(self.inner.encoder.encode(plan.query.clone()).await?);
        if let Some(cache) = &self.inner.cache {
            self.inner.metrics.cache(false);
            cache.insert(key, Arc::clone(&e)).await;
        }
        self.inner.metrics.observe_stage("user_tower", started);
        Ok(e)
    }

    /// The candidates for one request (the gRPC handler minus the transport).
    pub async fn retrieve(&self, req: &RetrieveRequest) -> Result<RetrieveResponse, RetrievalError> {
        let started = Instant::now();
        let wall = jiff::Timestamp::now().as_second();
        let plan = plan(req, &self.catalog(), &self.inner.user_index, wall)?;
        let s = &self.inner.settings;
        let m = &self.inner.metrics;
        let emb = self.user_embedding(&plan).await?;

        let mut lists: [Vec<usize>; 4] = Default::default();
        if s.weights.get(Source::TwoTower) > 0.0 && s.per_source > 0 {
            let ann_started = Instant::now();
            let filter = SearchFilter {
                exclude: plan.exclude.iter().map(|&r| r as u64 + 1).collect(),
                categories: plan.categories.as_ref().map(|c| c.iter().cloned().collect()),
            };
            let hits = self.inner.store.search(&emb, s.per_source, &filter).await?;
            m.observe_stage("ann", ann_started);
            let len = self.catalog().len();
            // Points beyond the catalogue (left in a persisted store by an earlier process) are skipped.
            lists[Source::TwoTower as usize] =
                hits.iter().filter_map(|h| (h.id as usize).checked_sub(1)).filter(|&r| r < len).collect();
        }

        let catalog = self.catalog();
        let ii_started = Instant::now();
        let ii_scores = self.inner.item_item.scores(&plan.history_rows);
        let keep = |r: usize| !plan.exclude.contains(&r) && catalog.matches(r, plan.categories.as_ref());
        if s.weights.get(Source::ItemToItem) > 0.0 && !plan.history_rows.is_empty() {
            lists[Source::ItemToItem as usize] = top_scores(&ii_scores, s.per_source, keep);
        }
        m.observe_stage("item_to_item", ii_started);
        if s.weights.get(Source::Popular) > 0.0 {
            lists[Source::Popular as usize] = catalog.top_popular(s.popular, &plan.exclude, plan.categories.as_ref());
        }
        if s.weights.get(Source::Fresh) > 0.0 {
            lists[Source::Fresh as usize] = catalog.top_fresh(s.fresh, &plan.exclude, plan.categories.as_ref());
        }

        let mixed = mix(&lists, s.weights, plan.k.min(s.max_candidates));
        let rank = |r: Option<usize>| r.map_or(-1, |r| r as i32);
        let candidates: Vec<Candidate> = mixed
            .iter()
            .map(|c| {
                // Items added after training surface through their content embedding.
                let source =
                    if c.row >= catalog.trained && c.source == Source::TwoTower { "content" } else { c.source.name() };
                Candidate {
                    item_id: catalog.items[c.row].id.clone(),
                    source: source.to_string(),
                    score: c.score,
                    two_tower_score: reco_vector_store::exact::dot(&emb, catalog.embedding(c.row)),
                    item_to_item_score: ii_scores.get(c.row).copied().unwrap_or(0.0),
                    two_tower_rank: rank(c.ranks[Source::TwoTower as usize]),
                    item_to_item_rank: rank(c.ranks[Source::ItemToItem as usize]),
                    popular_rank: rank(c.ranks[Source::Popular as usize]),
                    category: catalog.category(c.row).to_string(),
                    published_at: catalog.published_at[c.row],
                }
            })
            .collect();
        drop(catalog);
        for source in reco_proto::CANDIDATE_SOURCES {
            let n = candidates.iter().filter(|c| c.source == source).count();
            m.candidates(source, n);
        }
        m.observe_stage("total", started);
        Ok(RetrieveResponse { model_version: self.inner.version.clone(), candidates, user_embedding: emb.to_vec() })
    }
}

#[tonic::async_trait]
impl reco_proto::retrieval_server::Retrieval for RetrievalService {
    async fn retrieve(&self, request: Request<RetrieveRequest>) -> Result<Response<RetrieveResponse>, Status> {
        RetrievalService::retrieve(self, request.get_ref()).await.map(Response::new).map_err(|e| {
            if !matches!(e, RetrievalError::Invalid(_)) {
                tracing::warn!(error = %e, "retrieval failed");
            }
            Status::from(e)
        })
    }
}

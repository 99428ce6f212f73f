//! Embedded backend: the Qdrant engine in-process (`qdrant-edge`), one shard directory per collection.
//!
//! The engine is synchronous, so every call runs on tokio's blocking pool. Writes (upsert, flush, index
//! build) are serialised by one mutex: the engine's own flush asserts that no write holds its WAL lock.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use qdrant_edge::{
    CreateIndex, EdgeConfig, EdgeOptimizersConfig, EdgeShard, EdgeVectorParams, FieldIndexOperations, HnswIndexConfig,
    JsonPath, NamedQuery, PayloadFieldSchema, PayloadSchemaType, PointId, PointInsertOperations, PointOperations,
    PointStruct, QueryEnum, QueryRequest, ScoringQuery, SearchParams, UpdateOperation, WithPayloadInterface,
    WithVector,
};
use serde_json::json;

use crate::{
    CATEGORY_FIELD, CollectionInfo, CollectionSpec, Distance, Hit, HnswParams, OpenMode, PUBLISHED_AT_FIELD, Point,
    Result, SearchFilter, StoreError, VectorStore, validate,
};

/// Points per engine update: bounds one WAL record (the engine's WAL segments are 32 MiB).
const UPSERT_CHUNK: usize = 1_000;
/// Largest collection kept in one segment (KiB): the engine searches segments one after another, so one
/// big HNSW graph answers faster than several small ones. 4 GB is ~15M 64-d vectors.
const MAX_SEGMENT_KB: usize = 4_000_000;

/// A collection stored by the in-process engine under `{dir}/{pipeline}__{version}/`.
pub struct EdgeStore {
    inner: Arc<Inner>,
    ef_search: usize,
}

struct Inner {
    name: String,
    dim: usize,
    distance: Distance,
    shard: EdgeShard,
    writes: Mutex<()>,
}

impl EdgeStore {
    /// Opens the collection under `dir` (creating `dir` and the collection if `mode` allows). An existing
    /// collection must have the same dimension and distance as `spec`; its HNSW build parameters are
    /// updated to `hnsw` for the next [`VectorStore::commit`].
    pub async fn open(dir: PathBuf, spec: CollectionSpec, mode: OpenMode, hnsw: HnswParams) -> Result<Self> {
        let name = validate::spec(&spec)?;
        let collection = name.clone();
        let inner = tokio::task::spawn_blocking(move || Inner::open(dir, name, spec, mode, hnsw))
            .await
            .map_err(|e| StoreError::Engine { collection, message: format!("open task failed: {e}") })??;
        Ok(Self { inner: Arc::new(inner), ef_search: hnsw.ef_search })
    }

    /// The same collection searched with another HNSW beam width (shares the engine; for tuning and for
    /// callers that trade recall for latency per request).
    pub fn with_ef_search(&self, ef_search: usize) -> Self {
        Self { inner: Arc::clone(&self.inner), ef_search }
    }

    /// Searches on the calling thread (no blocking-pool hop): for callers that already run off the async
    /// executor, and for measuring the engine itself.
    pub fn search_blocking(&self, query: &[f32], k: usize, filter: &SearchFilter) -> Result<Vec<Hit>> {
        self.inner.search(query, k, self.ef_search, filter)
    }

    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&Inner) -> Result<T> + Send + 'static) -> Result<T> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner)).await.map_err(|e| StoreError::Engine {
            collection: self.inner.name.clone(),
            message: format!("blocking task failed: {e}"),
        })?
    }
}

fn engine_distance(d: Distance) -> qdrant_edge::Distance {
    match d {
        Distance::Cosine => qdrant_edge::Distance::Cosine,
        Distance::Dot => qdrant_edge::Distance::Dot,
    }
}

fn hnsw_config(hnsw: HnswParams) -> HnswIndexConfig {
    HnswIndexConfig { m: hnsw.m, ef_construct: hnsw.ef_construct.max(4), ..HnswIndexConfig::default() }
}

impl Inner {
    fn open(dir: PathBuf, name: String, spec: CollectionSpec, mode: OpenMode, hnsw: HnswParams) -> Result<Self> {
        let engine = |message: String| StoreError::Engine { collection: name.clone(), message };
        let path = dir.join(&name);
        let exists = path.join("edge_config.json").is_file();
        let shard = if exists {
            let shard = EdgeShard::load(&path, None).map_err(|e| engine(format!("loading {}: {e}", path.display())))?;
            let found = shard.config().vectors.get("").map(|v| (v.size, v.distance));
            let requested = (spec.dim, engine_distance(spec.distance));
            if found != Some(requested) {
                return Err(StoreError::SpecMismatch {
                    collection: name,
                    found: format!("{found:?}"),
                    requested: format!("{requested:?}"),
                });
            }
            shard.set_hnsw_config(hnsw_config(hnsw)).map_err(|e| engine(e.to_string()))?;
            tracing::info!(collection = %name, path = %path.display(), points = shard.info().points_count, "opened vector collection");
            shard
        } else {
            if mode == OpenMode::Existing {
                return Err(StoreError::MissingCollection { collection: name });
            }
            std::fs::create_dir_all(&path).map_err(|source| StoreError::Io {
                collection: name.clone(),
                context: format!("creating {}", path.display()),
                source,
            })?;
            let config = EdgeConfig::builder()
                .vector("", EdgeVectorParams::builder(spec.dim, engine_distance(spec.distance)).on_disk(false).build())
                .hnsw_config(hnsw_config(hnsw))
                .optimizers(EdgeOptimizersConfig {
                    default_segment_number: Some(1),
                    max_segment_size: Some(MAX_SEGMENT_KB),
                    ..EdgeOptimizersConfig::default()
                })
                .on_disk_payload(false)
                .build();
            let shard =
                EdgeShard::new(&path, config).map_err(|e| engine(format!("creating {}: {e}", path.display())))?;
            for (field, schema) in
                [(CATEGORY_FIELD, PayloadSchemaType::Keyword), (PUBLISHED_AT_FIELD, PayloadSchemaType::Integer)]
            {
                let field_name: JsonPath =
                    field.parse().map_err(|()| engine(format!("invalid payload path {field}")))?;
                shard
                    .update(UpdateOperation::FieldIndexOperation(FieldIndexOperations::CreateIndex(CreateIndex {
                        field_name,
                        field_schema: Some(PayloadFieldSchema::FieldType(schema)),
                    })))
                    .map_err(|e| engine(format!("creating payload index on {field}: {e}")))?;
            }
            tracing::info!(collection = %name, path = %path.display(), "created vector collection");
            shard
        };
        Ok(Self { name, dim: spec.dim, distance: spec.distance, shard, writes: Mutex::new(()) })
    }

    fn engine_err(&self, what: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Engine { collection: self.name.clone(), message: format!("{what}: {e}") }
    }

    /// Writes already-validated points.
    fn upsert(&self, points: &[Point]) -> Result<()> {
        let _writes = self.writes.lock().map_err(|e| self.engine_err("write lock", e))?;
        for chunk in points.chunks(UPSERT_CHUNK) {
            let batch = chunk
                .iter()
                .map(|p| {
                    let payload = json!({
                        CATEGORY_FIELD: p.payload.category,
                        PUBLISHED_AT_FIELD: p.payload.published_at,
                    });
                    PointStruct::new(p.id, p.vector.clone(), payload).into()
                })
                .collect();
            self.shard
                .update(UpdateOperation::PointOperation(PointOperations::UpsertPoints(
                    PointInsertOperations::PointsList(batch),
                )))
                .map_err(|e| self.engine_err("upsert", e))?;
        }
        Ok(())
    }

    fn commit(&self) -> Result<()> {
        let _writes = self.writes.lock().map_err(|e| self.engine_err("write lock", e))?;
        let started = std::time::Instant::now();
        let changed = self.shard.optimize().map_err(|e| self.engine_err("building index", e))?;
        self.shard.flush();
        if changed {
            let info = self.shard.info();
            tracing::info!(
                collection = %self.name,
                points = info.points_count,
                indexed = info.indexed_vectors_count,
                seconds = started.elapsed().as_secs_f64(),
                "vector index built"
            );
        }
        Ok(())
    }

    fn search(&self, query: &[f32], k: usize, ef_search: usize, filter: &SearchFilter) -> Result<Vec<Hit>> {
        validate::search(&self.name, query, self.dim, k, filter)?;
        if filter.categories.as_ref().is_some_and(Vec::is_empty) {
            return Ok(Vec::new());
        }
        let request = QueryRequest {
            prefetches: Vec::new(),
            query: Some(ScoringQuery::Vector(QueryEnum::Nearest(NamedQuery::default_dense(query.to_vec())))),
            filter: engine_filter(filter).map_err(|e| self.engine_err("building filter", e))?,
            score_threshold: None,
            limit: k,
            offset: 0,
            params: Some(SearchParams { hnsw_ef: Some(ef_search.max(k)), ..SearchParams::default() }),
            with_vector: WithVector::Bool(false),
            with_payload: WithPayloadInterface::Bool(false),
        };
        let points = self.shard.query(request).map_err(|e| self.engine_err("search", e))?;
        points
            .into_iter()
            .map(|p| match p.id {
                PointId::NumId(id) => Ok(Hit { id, score: p.score }),
                PointId::Uuid(u) => Err(self.engine_err("search", format!("unexpected uuid point id {u}"))),
            })
            .collect()
    }

    fn info(&self) -> CollectionInfo {
        let info = self.shard.info();
        CollectionInfo {
            name: self.name.clone(),
            dim: self.dim,
            distance: self.distance,
            points: info.points_count as u64,
            indexed_points: info.indexed_vectors_count as u64,
        }
    }
}

/// The engine's filter for ours, built through its JSON form (the same one Qdrant's REST API accepts),
/// which keeps us off the engine's internal set and path types.
fn engine_filter(filter: &SearchFilter) -> serde_json::Result<Option<qdrant_edge::Filter>> {
    let mut clauses = serde_json::Map::new();
    if !filter.exclude.is_empty() {
        clauses.insert("must_not".into(), json!([{ "has_id": filter.exclude }]));
    }
    if let Some(categories) = &filter.categories {
        clauses.insert("must".into(), json!([{ "key": CATEGORY_FIELD, "match": { "any": categories } }]));
    }
    if clauses.is_empty() {
        return Ok(None);
    }
    serde_json::from_value(serde_json::Value::Object(clauses)).map(Some)
}

impl VectorStore for EdgeStore {
    fn collection(&self) -> &str {
        &self.inner.name
    }

    fn dim(&self) -> usize {
        self.inner.dim
    }

    fn upsert<'a>(&'a self, points: &'a [Point]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            // Validate before copying the batch to the blocking pool.
            validate::points(&self.inner.name, points, self.inner.dim)?;
            let owned = points.to_vec();
            self.blocking(move |inner| inner.upsert(&owned)).await
        })
    }

    fn commit(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.blocking(Inner::commit))
    }

    fn search<'a>(&'a self, query: &'a [f32], k: usize, filter: &'a SearchFilter) -> BoxFuture<'a, Result<Vec<Hit>>> {
        Box::pin(async move {
            validate::search(&self.inner.name, query, self.inner.dim, k, filter)?;
            let (query, filter, ef) = (query.to_vec(), filter.clone(), self.ef_search);
            self.blocking(move |inner| inner.search(&query, k, ef, &filter)).await
        })
    }

    fn info(&self) -> BoxFuture<'_, Result<CollectionInfo>> {
        Box::pin(self.blocking(|inner| Ok(inner.info())))
    }
}

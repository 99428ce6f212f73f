//! Server backend: a Qdrant collection per (pipeline, version) on a Qdrant server, over gRPC.

use futures::future::BoxFuture;
use qdrant_client::Qdrant;
use qdrant_client::qdrant::point_id::PointIdOptions;
use qdrant_client::qdrant::vectors_config::Config;
use qdrant_client::qdrant::{
    Condition, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder, FieldType, Filter, HnswConfigDiffBuilder,
    PointStruct, Query, QueryPointsBuilder, SearchParamsBuilder, UpsertPointsBuilder, Value, VectorParamsBuilder,
};

use crate::{
    CATEGORY_FIELD, CollectionInfo, CollectionSpec, Distance, Hit, HnswParams, OpenMode, PUBLISHED_AT_FIELD, Point,
    Result, SearchFilter, StoreError, VectorStore, validate,
};

/// Points per upsert request: keeps each gRPC message well under the server's 32 MiB default limit.
const UPSERT_CHUNK: usize = 1_000;

/// A collection on a Qdrant server.
pub struct ServerStore {
    client: Qdrant,
    name: String,
    dim: usize,
    distance: Distance,
    ef_search: usize,
}

fn server_distance(d: Distance) -> qdrant_client::qdrant::Distance {
    match d {
        Distance::Cosine => qdrant_client::qdrant::Distance::Cosine,
        Distance::Dot => qdrant_client::qdrant::Distance::Dot,
    }
}

impl ServerStore {
    /// Connects to `url` (gRPC, e.g. `http://qdrant:6334`) and opens the collection for `spec`, creating it
    /// with payload indexes on `category` (keyword) and `published_at` (integer) if `mode` allows. An
    /// existing collection must have the same dimension and distance.
    pub async fn open(url: &str, spec: &CollectionSpec, mode: OpenMode, hnsw: HnswParams) -> Result<Self> {
        let name = validate::spec(spec)?;
        let server = |source| StoreError::Server { collection: name.clone(), source: Box::new(source) };
        let client = Qdrant::from_url(url).build().map_err(server)?;
        let store =
            Self { client, name: name.clone(), dim: spec.dim, distance: spec.distance, ef_search: hnsw.ef_search };
        if store.client.collection_exists(&name).await.map_err(server)? {
            let found = store.vector_params().await?;
            let requested = (spec.dim as u64, server_distance(spec.distance) as i32);
            if found != requested {
                return Err(StoreError::SpecMismatch {
                    collection: name,
                    found: format!("dim {}, distance {}", found.0, found.1),
                    requested: format!("dim {}, distance {}", requested.0, requested.1),
                });
            }
            return Ok(store);
        }
        if mode == OpenMode::Existing {
            return Err(StoreError::MissingCollection { collection: name });
        }
        store
            .client
            .create_collection(
                CreateCollectionBuilder::new(&name)
                    .vectors_config(VectorParamsBuilder::new(spec.dim as u64, server_distance(spec.distance)))
                    .hnsw_config(
                        HnswConfigDiffBuilder::default().m(hnsw.m as u64).ef_construct(hnsw.ef_construct as u64),
                    ),
            )
            .await
            .map_err(server)?;
        for (field, kind) in [(CATEGORY_FIELD, FieldType::Keyword), (PUBLISHED_AT_FIELD, FieldType::Integer)] {
            store
                .client
                .create_field_index(CreateFieldIndexCollectionBuilder::new(&name, field, kind).wait(true))
                .await
                .map_err(server)?;
        }
        tracing::info!(collection = %name, url, "created vector collection on the Qdrant server");
        Ok(store)
    }

    fn server_err(&self, source: qdrant_client::QdrantError) -> StoreError {
        StoreError::Server { collection: self.name.clone(), source: Box::new(source) }
    }

    fn response_err(&self, message: impl Into<String>) -> StoreError {
        StoreError::ServerResponse { collection: self.name.clone(), message: message.into() }
    }

    /// (dimension, distance) of the collection's single unnamed vector.
    async fn vector_params(&self) -> Result<(u64, i32)> {
        let info = self.client.collection_info(&self.name).await.map_err(|e| self.server_err(e))?;
        let params = info
            .result
            .and_then(|r| r.config)
            .and_then(|c| c.params)
            .and_then(|p| p.vectors_config)
            .and_then(|v| v.config);
        match params {
            Some(Config::Params(p)) => Ok((p.size, p.distance)),
            Some(Config::ParamsMap(_)) => Err(self.response_err("collection has named vectors, expected one unnamed")),
            None => Err(self.response_err("collection info has no vector config")),
        }
    }

    async fn upsert_points(&self, points: &[Point]) -> Result<()> {
        validate::points(&self.name, points, self.dim)?;
        for chunk in points.chunks(UPSERT_CHUNK) {
            let batch: Vec<PointStruct> = chunk
                .iter()
                .map(|p| {
                    let payload = [
                        (CATEGORY_FIELD, Value::from(p.payload.category.clone())),
                        (PUBLISHED_AT_FIELD, Value::from(p.payload.published_at)),
                    ];
                    PointStruct::new(p.id, p.vector.clone(), payload)
                })
                .collect();
            self.client
                .upsert_points(UpsertPointsBuilder::new(&self.name, batch).wait(true))
                .await
                .map_err(|e| self.server_err(e))?;
        }
        Ok(())
    }

    async fn search_points(&self, query: &[f32], k: usize, filter: &SearchFilter) -> Result<Vec<Hit>> {
        validate::search(&self.name, query, self.dim, k, filter)?;
        if filter.categories.as_ref().is_some_and(Vec::is_empty) {
            return Ok(Vec::new());
        }
        let mut request = QueryPointsBuilder::new(&self.name)
            .query(Query::new_nearest(query.to_vec()))
            .limit(k as u64)
            .params(SearchParamsBuilder::default().hnsw_ef(self.ef_search.max(k) as u64));
        if let Some(f) = server_filter(filter) {
            request = request.filter(f);
        }
        let response = self.client.query(request).await.map_err(|e| self.server_err(e))?;
        response
            .result
            .into_iter()
            .map(|p| match p.id.and_then(|id| id.point_id_options) {
                Some(PointIdOptions::Num(id)) => Ok(Hit { id, score: p.score }),
                other => Err(self.response_err(format!("unexpected point id {other:?}"))),
            })
            .collect()
    }

    async fn collection_info(&self) -> Result<CollectionInfo> {
        let info = self.client.collection_info(&self.name).await.map_err(|e| self.server_err(e))?;
        let result = info.result.ok_or_else(|| self.response_err("collection info is empty"))?;
        Ok(CollectionInfo {
            name: self.name.clone(),
            dim: self.dim,
            distance: self.distance,
            points: result.points_count.unwrap_or(0),
            indexed_points: result.indexed_vectors_count.unwrap_or(0),
        })
    }
}

fn server_filter(filter: &SearchFilter) -> Option<Filter> {
    let mut f = Filter::default();
    if !filter.exclude.is_empty() {
        f.must_not.push(Condition::has_id(filter.exclude.iter().copied()));
    }
    if let Some(categories) = &filter.categories {
        f.must.push(Condition::matches(CATEGORY_FIELD, categories.clone()));
    }
    (!f.must.is_empty() || !f.must_not.is_empty()).then_some(f)
}

impl VectorStore for ServerStore {
    fn collection(&self) -> &str {
        &self.name
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn upsert<'a>(&'a self, points: &'a [Point]) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.upsert_points(points))
    }

    /// Upserts already wait for the server to apply them; it builds its index in the background.
    fn commit(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn search<'a>(&'a self, query: &'a [f32], k: usize, filter: &'a SearchFilter) -> BoxFuture<'a, Result<Vec<Hit>>> {
        Box::pin(self.search_points(query, k, filter))
    }

    fn info(&self) -> BoxFuture<'_, Result<CollectionInfo>> {
        Box::pin(self.collection_info())
    }
}

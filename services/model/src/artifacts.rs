//! The artifact directory of one model version: what `reco train` writes
//! and what the retrieval and ranking services load, file by file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor, nn};

use crate::drift::DriftReference;
use crate::features::{FeatureOptions, FeatureSpace, Item};
use crate::scoring::{DenseScaler, ValueModel};
use crate::{Ranker, RankerConfig, TwoTower, TwoTowerConfig};

/// File names inside the artifact directory.
pub use reco_contracts::artifacts as files;

/// Tensor names inside the safetensors files.
pub const EMBEDDINGS_TENSOR: &str = "embeddings";
pub const ITEM_ITEM_TENSOR: &str = "weights";

/// `two_tower.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TwoTowerFile {
    pub model: TwoTowerConfig,
    pub features: FeatureOptions,
}

/// How many candidates each source contributes to the ranker.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CandidateCounts {
    pub per_source: usize,
    pub popular: usize,
}

/// `ranker.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankerFile {
    pub model: RankerConfig,
    pub dense_scaler: DenseScaler,
    pub value_model: ValueModel,
    pub candidates: CandidateCounts,
    pub item_item_lambda: f64,
    /// The dense features' distribution on the validation users, for the drift monitors;
    /// absent in versions trained before it existed (no drift monitoring then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_reference: Option<DriftReference>,
}

/// Why an artifact directory cannot be served; names the file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{path}: libtorch: {source}")]
    Torch { path: PathBuf, source: tch::TchError },
    #[error("artifacts in {dir} disagree: {message}")]
    Inconsistent { dir: PathBuf, message: String },
    /// The blocking load task of [`load_uri_blocking`] panicked or was cancelled.
    #[error("loading {uri}: the blocking load task failed: {message}")]
    Task { uri: String, message: String },
}

/// Everything a model version serves with, loaded on the CPU.
#[derive(Debug)]
pub struct VersionArtifacts {
    pub dir: PathBuf,
    pub features: FeatureSpace,
    /// Item catalogue, row `i` = item index `i`. The first
    /// [`Self::n_trained_items`] rows are the items the model was trained on
    /// (model index `i + 1`); later rows were added after training and are
    /// embedded from their content alone (model index 0, see [`Self::model_index`]).
    pub items: Vec<Item>,
    pub n_trained_items: usize,
    /// User ids the model has an embedding for, row `i` = model index `i + 1`.
    pub user_ids: Vec<String>,
    pub two_tower: TwoTower,
    /// `[items.len(), dim]` L2-normalised item embeddings.
    pub item_embeddings: Tensor,
    /// `[n_trained_items, n_trained_items]` EASE item-to-item weights.
    pub item_item: Tensor,
    pub ranker: Ranker,
    pub ranker_file: RankerFile,
    // The weights live in these stores; the modules above refer to them.
    _two_tower_vars: nn::VarStore,
    _ranker_vars: nn::VarStore,
}

// SAFETY: `VersionArtifacts` is `!Sync` only because `tch::Tensor` (and the
// modules holding them) are not marked `Sync`. Nothing mutates a loaded
// version: the services run forward passes under `no_grad` (concurrent reads
// of the weights, which libtorch supports from several threads) and create
// every input tensor per call. So `reco standalone` shares one loaded
// version between retrieval and ranking through an `Arc`.
unsafe impl Sync for VersionArtifacts {}

fn read_json<T: for<'de> Deserialize<'de>>(dir: &Path, name: &str) -> Result<T, ArtifactError> {
    let path = dir.join(name);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| ArtifactError::File { path: path.clone(), message: e.to_string() })?;
    serde_json::from_str(&text).map_err(|e| ArtifactError::File { path, message: e.to_string() })
}

fn read_tensor(dir: &Path, name: &str, tensor: &str) -> Result<Tensor, ArtifactError> {
    let path = dir.join(name);
    let tensors =
        Tensor::read_safetensors(&path).map_err(|source| ArtifactError::Torch { path: path.clone(), source })?;
    tensors
        .into_iter()
        .find_map(|(n, t)| (n == tensor).then_some(t))
        .ok_or_else(|| ArtifactError::File { path, message: format!("no tensor named {tensor:?}") })
}

fn load_vars(vs: &mut nn::VarStore, dir: &Path, name: &str) -> Result<(), ArtifactError> {
    let path = dir.join(name);
    vs.load(&path).map_err(|source| ArtifactError::Torch { path, source })
}

impl VersionArtifacts {
    /// Loads and cross-checks every file of the version in `dir`.
    pub fn load(dir: &Path) -> Result<Self, ArtifactError> {
        let inconsistent = |message: String| ArtifactError::Inconsistent { dir: dir.to_path_buf(), message };
        let two_tower_file: TwoTowerFile = read_json(dir, files::TWO_TOWER_CONFIG)?;
        let ranker_file: RankerFile = read_json(dir, files::RANKER_CONFIG)?;
        if let Some(Err(message)) = ranker_file.feature_reference.as_ref().map(DriftReference::check) {
            return Err(ArtifactError::File { path: dir.join(files::RANKER_CONFIG), message });
        }
        let features: FeatureSpace = read_json(dir, files::FEATURES)?;
        let items: Vec<Item> = read_json(dir, files::ITEMS)?;
        let user_ids: Vec<String> = read_json(dir, files::USER_IDS)?;

        let mut two_tower_vars = nn::VarStore::new(Device::Cpu);
        let two_tower = TwoTower::new(&two_tower_vars.root(), two_tower_file.model.clone());
        load_vars(&mut two_tower_vars, dir, files::TWO_TOWER_WEIGHTS)?;
        let mut ranker_vars = nn::VarStore::new(Device::Cpu);
        let ranker = Ranker::new(&ranker_vars.root(), ranker_file.model.clone());
        load_vars(&mut ranker_vars, dir, files::RANKER_WEIGHTS)?;
        let item_embeddings = read_tensor(dir, files::ITEM_EMBEDDINGS, EMBEDDINGS_TENSOR)?;
        let item_item = read_tensor(dir, files::ITEM_ITEM_WEIGHTS, ITEM_ITEM_TENSOR)?;

        let n = items.len() as i64;
        let trained = two_tower_file.model.n_items - 1;
        if !(0..=n).contains(&trained) {
            return Err(inconsistent(format!(
                "two_tower.json has {} item slots for {n} items",
                two_tower_file.model.n_items
            )));
        }
        if item_embeddings.size() != [n, two_tower_file.model.out_dim] {
            return Err(inconsistent(format!(
                "item embeddings are {:?}, expected [{n}, {}]",
                item_embeddings.size(),
                two_tower_file.model.out_dim
            )));
        }
        if item_item.size() != [trained, trained] {
            return Err(inconsistent(format!(
                "item-to-item weights are {:?}, expected [{trained}, {trained}]",
                item_item.size()
            )));
        }
        if features.item_train_count.len() as i64 != trained {
            return Err(inconsistent(format!(
                "features.json counts {} items, the model was trained on {trained}",
                features.item_train_count.len()
            )));
        }
        if two_tower_file.model.n_users != user_ids.len() as i64 + 1 {
            return Err(inconsistent(format!(
                "two_tower.json has {} user slots for {} user ids",
                two_tower_file.model.n_users,
                user_ids.len()
            )));
        }
        Ok(VersionArtifacts {
            dir: dir.to_path_buf(),
            features,
            items,
            n_trained_items: trained as usize,
            user_ids,
            two_tower,
            item_embeddings,
            item_item,
            ranker,
            ranker_file,
            _two_tower_vars: two_tower_vars,
            _ranker_vars: ranker_vars,
        })
    }

    /// Loads the version an artifact URI names (see [`local_dir`]).
    pub fn load_uri(uri: &str) -> Result<Self, ArtifactError> {
        Self::load(&local_dir(uri)?)
    }

    /// The model index of catalogue row `row`: `row + 1` for a trained item,
    /// 0 (unknown, content only) for one added after training.
    pub fn model_index(&self, row: usize) -> i64 {
        if row < self.n_trained_items { row as i64 + 1 } else { 0 }
    }

    /// Training interactions of catalogue row `row` (0 for items added later).
    pub fn train_count(&self, row: usize) -> u32 {
        self.features.item_train_count.get(row).copied().unwrap_or(0)
    }
}

/// [`VersionArtifacts::load_uri`] on tokio's blocking pool (it reads and checks files), shared as an `Arc`
/// because `reco standalone` serves one loaded version from both retrieval and ranking.
pub async fn load_uri_blocking(uri: &str) -> Result<Arc<VersionArtifacts>, ArtifactError> {
    let owned = uri.to_owned();
    let loaded = tokio::task::spawn_blocking(move || VersionArtifacts::load_uri(&owned))
        .await
        .map_err(|e| ArtifactError::Task { uri: uri.to_owned(), message: e.to_string() })??;
    Ok(Arc::new(loaded))
}

/// The local directory of an artifact URI: `file:///abs/path` or a plain
/// path. Object-store URIs are fetched into a local directory first (`reco
/// serve` does, through `reco-artifacts`); here they are refused saying so.
pub fn local_dir(uri: &str) -> Result<PathBuf, ArtifactError> {
    let path = match uri.split_once("://") {
        None => PathBuf::from(uri),
        Some(("file", rest)) => PathBuf::from(rest),
        Some((scheme, _)) => {
            return Err(ArtifactError::File {
                path: PathBuf::from(uri),
                message: format!(
                    "artifact scheme {scheme:?} names an object store: `reco serve retrieval|ranking` fetches it; \
                     `reco standalone` serves local directories (file:// or a path)"
                ),
            });
        }
    };
    if path.as_os_str().is_empty() {
        return Err(ArtifactError::File { path, message: "empty artifact path".into() });
    }
    Ok(path)
}

/// Writes a version directory with the real file layout and architecture
/// but random weights, for tests of the services (never for figures).
pub fn write_random_version(dir: &Path, items: &[Item], user_ids: &[String], seed: i64) -> Result<(), ArtifactError> {
    use crate::features::User;
    std::fs::create_dir_all(dir)
        .map_err(|e| ArtifactError::File { path: dir.to_path_buf(), message: e.to_string() })?;
    tch::manual_seed(seed);
    let users: Vec<User> = user_ids.iter().map(|id| User { id: id.clone(), ..Default::default() }).collect();
    let train: Vec<u32> = (0..items.len() as u32).flat_map(|i| std::iter::repeat_n(i, (i % 7) as usize)).collect();
    let features = FeatureSpace::fit(&users, items, train, FeatureOptions::default());
    let model = TwoTowerConfig {
        n_users: users.len() as i64 + 1,
        n_items: items.len() as i64 + 1,
        n_ages: features.n_ages(),
        n_genders: features.genders.size(),
        n_occupations: features.occupations.size(),
        n_zips: features.zips.size(),
        n_genres: features.genres.size(),
        n_years: features.n_year_buckets,
        n_pop_buckets: features.n_pop_buckets,
        n_title_buckets: features.options.title_buckets as i64,
        n_dows: 8,
        n_hours: 25,
        embed_dim: 16,
        hidden_dim: 32,
        out_dim: 16,
        temperature: 0.1,
        dropout: 0.0,
    };
    let tt_vars = nn::VarStore::new(Device::Cpu);
    let two_tower = TwoTower::new(&tt_vars.root(), model.clone());
    let embeddings = tch::no_grad(|| two_tower.encode_items(&features.item_batch(items), false))
        .map_err(|e| ArtifactError::Inconsistent { dir: dir.to_path_buf(), message: e.to_string() })?;
    let ranker_config = RankerConfig {
        tower_dim: model.out_dim,
        n_dense: crate::scoring::N_DENSE as i64,
        n_items: items.len() as i64 + 1,
        n_genres: features.genres.size(),
        n_occupations: features.occupations.size(),
        n_ages: features.n_ages(),
        n_genders: features.genders.size(),
        embed_dim: 8,
        cross_layers: 1,
        hidden_dim: 16,
        dropout: 0.0,
        tasks: vec!["interaction".into(), "high_rating".into()],
    };
    let ranker_vars = nn::VarStore::new(Device::Cpu);
    let _ranker = Ranker::new(&ranker_vars.root(), ranker_config.clone());
    let n = items.len() as i64;
    let item_item = Tensor::randn([n, n], (tch::Kind::Float, Device::Cpu)) * 0.01;
    let torch = |name: &str, e: tch::TchError| ArtifactError::Torch { path: dir.join(name), source: e };
    tt_vars.save(dir.join(files::TWO_TOWER_WEIGHTS)).map_err(|e| torch(files::TWO_TOWER_WEIGHTS, e))?;
    ranker_vars.save(dir.join(files::RANKER_WEIGHTS)).map_err(|e| torch(files::RANKER_WEIGHTS, e))?;
    Tensor::write_safetensors(&[(EMBEDDINGS_TENSOR, &embeddings)], dir.join(files::ITEM_EMBEDDINGS))
        .map_err(|e| torch(files::ITEM_EMBEDDINGS, e))?;
    Tensor::write_safetensors(&[(ITEM_ITEM_TENSOR, &item_item)], dir.join(files::ITEM_ITEM_WEIGHTS))
        .map_err(|e| torch(files::ITEM_ITEM_WEIGHTS, e))?;
    let ranker_file = RankerFile {
        model: ranker_config,
        dense_scaler: DenseScaler { mean: vec![0.0; crate::scoring::N_DENSE], std: vec![1.0; crate::scoring::N_DENSE] },
        value_model: ValueModel { high_rating_weight: 0.5, ranker_blend: 0.5 },
        candidates: CandidateCounts { per_source: 100, popular: 50 },
        item_item_lambda: 100.0,
        feature_reference: None,
    };
    write_json(dir, files::TWO_TOWER_CONFIG, &TwoTowerFile { model, features: features.options })?;
    write_json(dir, files::RANKER_CONFIG, &ranker_file)?;
    write_json(dir, files::FEATURES, &features)?;
    write_json(dir, files::ITEMS, &items)?;
    write_json(dir, files::USER_IDS, &user_ids)?;
    Ok(())
}

fn write_json(dir: &Path, name: &str, value: &impl Serialize) -> Result<(), ArtifactError> {
    let path = dir.join(name);
    let text =
        serde_json::to_string(value).map_err(|e| ArtifactError::File { path: path.clone(), message: e.to_string() })?;
    std::fs::write(&path, text).map_err(|e| ArtifactError::File { path, message: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Vec<Item> {
        (0..30)
            .map(|i| Item {
                id: format!("i{i}"),
                title: Some(format!("Title {i}")),
                year: Some(1990 + i % 10),
                genres: vec![["Drama", "Comedy", "Action"][i as usize % 3].to_string()],
            })
            .collect()
    }

    #[test]
    fn a_written_version_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let users: Vec<String> = (0..5).map(|u| format!("u{u}")).collect();
        write_random_version(dir.path(), &catalog(), &users, 7).unwrap();
        let v = VersionArtifacts::load(dir.path()).unwrap();
        assert_eq!(v.items.len(), 30);
        assert_eq!(v.item_embeddings.size(), [30, 16]);
        assert_eq!(v.user_ids, users);
    }

    #[test]
    fn broken_versions_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = VersionArtifacts::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains(files::TWO_TOWER_CONFIG), "{err}");
        write_random_version(dir.path(), &catalog(), &["u".to_string()], 1).unwrap();
        std::fs::write(dir.path().join(files::ITEMS), "[]").unwrap();
        let err = VersionArtifacts::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("item slots"), "{err}");
        std::fs::write(dir.path().join(files::ITEMS), serde_json::to_string(&catalog()).unwrap()).unwrap();
        // A drift reference that does not add up.
        let path = dir.path().join(files::RANKER_CONFIG);
        let mut ranker: RankerFile = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let rows: Vec<[f32; crate::scoring::N_DENSE]> = (0..50).map(|i| [i as f32; crate::scoring::N_DENSE]).collect();
        let mut reference = DriftReference::fit(&rows).unwrap();
        reference.features[6].shares[1] += 0.5;
        ranker.feature_reference = Some(reference);
        std::fs::write(&path, serde_json::to_string(&ranker).unwrap()).unwrap();
        let err = VersionArtifacts::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains(files::RANKER_CONFIG) && err.contains("log_history_length"), "{err}");
        std::fs::write(&path, "{not json").unwrap();
        let err = VersionArtifacts::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains(files::RANKER_CONFIG), "{err}");
    }

    #[tokio::test]
    async fn a_version_loads_from_its_uri_on_the_blocking_pool() {
        let dir = tempfile::tempdir().unwrap();
        write_random_version(dir.path(), &catalog(), &["u".to_string()], 3).unwrap();
        let v = load_uri_blocking(&format!("file://{}", dir.path().display())).await.unwrap();
        assert_eq!(v.items.len(), 30);
        let err = load_uri_blocking("s3://bucket/v1").await.unwrap_err().to_string();
        assert!(err.contains("\"s3\""), "{err}");
    }

    #[test]
    fn uris_resolve_to_local_dirs() {
        assert_eq!(local_dir("file:///m/v1").unwrap(), PathBuf::from("/m/v1"));
        assert_eq!(local_dir("models/v1").unwrap(), PathBuf::from("models/v1"));
        assert!(local_dir("s3://bucket/v1").unwrap_err().to_string().contains("\"s3\""));
        assert!(local_dir("").is_err());
    }
}

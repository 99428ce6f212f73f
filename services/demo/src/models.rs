//! The three model versions of the demo, trained once and cached:
//!
//! - `v1`, stable: a smaller two-tower (narrow embeddings, few epochs);
//! - `v2`: the default, better model;
//! - `v3`, broken: `v2` with the rows of its item embeddings shuffled
//!   (seeded), so retrieval returns the wrong items for every user.
//!
//! The cache (`~/.cache/reco/demo-models/<key>`) is keyed by everything
//! that changes the artifacts; it is filled through a temporary directory
//! and a rename, so concurrent runs never see half a model.

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use reco_trainer::artifacts::files;
use reco_trainer::{Progress, TrainOptions};
use tch::Tensor;

/// Names of the demo's versions.
pub const STABLE: &str = "v1";
pub const BETTER: &str = "v2";
pub const BROKEN: &str = "v3";

/// Bumped whenever what goes into the cache changes meaning (3: `ranker.json` carries the
/// feature-drift reference).
const CACHE_FORMAT: u32 = 3;

/// What is trained; every field but `threads` is part of the cache keys.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelOptions {
    /// ml-100k (or another data directory in the trainer's layout).
    pub data: PathBuf,
    pub seed: u64,
    pub pipeline: String,
    /// Keep only the first N users (quick runs and tests).
    pub max_users: Option<usize>,
    /// v1's two-tower embedding width and epochs.
    pub v1_embedding_dim: i64,
    pub v1_epochs: usize,
    /// v1's ranker candidates per source and ranker epochs.
    pub v1_candidates: usize,
    pub v1_ranker_epochs: usize,
    /// v2's maximum two-tower epochs (early stopping may stop sooner).
    pub v2_epochs: usize,
    /// libtorch threads while training (not part of the key).
    pub threads: Option<usize>,
}

/// Why the models could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("training {version}: {reason}")]
    Train { version: &'static str, reason: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("shuffling {path}: {reason}")]
    Shuffle { path: PathBuf, reason: String },
    #[error(transparent)]
    Manifest(#[from] reco_artifacts::ArtifactStoreError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io { path: path.to_owned(), source }
}

/// The cached artifact directory of each demo version.
#[derive(Clone, Debug, PartialEq)]
pub struct CachedModels {
    pub v1: PathBuf,
    pub v2: PathBuf,
    pub v3: PathBuf,
    /// Versions trained by this call (empty when all came from the cache).
    pub trained: Vec<&'static str>,
}

impl ModelOptions {
    /// The cache key of `version` (`v1`, or `v2` which also holds `v3`): a
    /// hash of every option that changes its artifacts. Pure.
    pub fn cache_key(&self, version: &str) -> String {
        let specific = if version == STABLE {
            format!(
                "dim={}|epochs={}|candidates={}|ranker_epochs={}",
                self.v1_embedding_dim, self.v1_epochs, self.v1_candidates, self.v1_ranker_epochs
            )
        } else {
            format!("epochs={}", self.v2_epochs)
        };
        let text = format!(
            "{CACHE_FORMAT}|{version}|{}|{}|{}|{:?}|{specific}",
            self.data.display(),
            self.seed,
            self.pipeline,
            self.max_users,
        );
        format!("{version}-s{}-{:016x}", self.seed, xxhash_rust::xxh3::xxh3_64(text.as_bytes()))
    }

    fn train_options(&self, version: &'static str, out: PathBuf) -> TrainOptions {
        let mut o = TrainOptions::new(self.data.clone(), out, self.seed);
        o.max_users = self.max_users;
        o.threads = self.threads;
        o.pipeline = self.pipeline.clone();
        o.version = Some(version.to_owned());
        // Bars with ETAs on a terminal; a log gets the "training vN" lines only.
        o.progress = Progress { enabled: std::io::IsTerminal::is_terminal(&std::io::stderr()) };
        if version == STABLE {
            o.two_tower.out_dim = self.v1_embedding_dim;
            o.two_tower.max_epochs = self.v1_epochs;
            o.ranker.per_source = self.v1_candidates;
            o.ranker.max_epochs = self.v1_ranker_epochs;
        } else {
            o.two_tower.max_epochs = self.v2_epochs;
        }
        o
    }
}

/// The cached `v1`, `v2` and `v3`, training what the cache lacks first.
pub fn ensure_models(options: &ModelOptions, cache_root: &Path) -> Result<CachedModels, ModelError> {
    let mut trained = Vec::new();
    let v1_dir = ensure_cached(options, cache_root, STABLE, &mut trained, |_| Ok(()))?;
    let v2_dir = ensure_cached(options, cache_root, BETTER, &mut trained, |dir| {
        break_copy(&dir.join(BETTER), &dir.join(BROKEN), options.seed)
    })?;
    Ok(CachedModels { v1: v1_dir.join(STABLE), v2: v2_dir.join(BETTER), v3: v2_dir.join(BROKEN), trained })
}

/// `cache_root/<key>/<version>`, trained into a temporary directory and
/// renamed into place (with what `extra` adds) when missing.
fn ensure_cached(
    options: &ModelOptions,
    cache_root: &Path,
    version: &'static str,
    trained: &mut Vec<&'static str>,
    extra: impl FnOnce(&Path) -> Result<(), ModelError>,
) -> Result<PathBuf, ModelError> {
    let key = options.cache_key(version);
    let dir = cache_root.join(&key);
    if dir.join(".complete").is_file() {
        return Ok(dir);
    }
    std::fs::create_dir_all(cache_root).map_err(io(cache_root))?;
    let tmp = cache_root.join(format!(".tmp-{key}-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    tracing::info!(version, "training (not in the cache yet)");
    println!("training {version} (cached afterwards under {})", dir.display());
    let o = options.train_options(version, tmp.join(version));
    reco_trainer::train(&o).map_err(|e| ModelError::Train { version, reason: e.to_string() })?;
    let checkpoint = tmp.join(version).join("checkpoint");
    if checkpoint.exists() {
        std::fs::remove_dir_all(&checkpoint).map_err(io(&checkpoint))?;
    }
    extra(&tmp)?;
    std::fs::write(tmp.join(".complete"), &key).map_err(io(&tmp))?;
    match std::fs::rename(&tmp, &dir) {
        Ok(()) => trained.push(version),
        // Another run filled the cache first: use its copy.
        Err(_) if dir.join(".complete").is_file() => std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?,
        Err(e) => return Err(io(&dir)(e)),
    }
    Ok(dir)
}

/// Copies the version `from` to `to` with its item embedding rows shuffled,
/// its ModelVersion manifest renamed and its artifact manifest (hashes)
/// written again: the broken `v3`, which downloads and verifies like any
/// version and only serves worse.
pub fn break_copy(from: &Path, to: &Path, seed: u64) -> Result<(), ModelError> {
    copy_version(from, to)?;
    let embeddings = to.join(files::ITEM_EMBEDDINGS);
    // Hard links share data with the source: replace the file, never write through it.
    std::fs::remove_file(&embeddings).map_err(io(&embeddings))?;
    shuffle_rows(&from.join(files::ITEM_EMBEDDINGS), &embeddings, seed)?;
    rename_manifest(from, to)?;
    if to.join(reco_artifacts::manifest::MANIFEST).exists() {
        // Written by a rename: the hard link to v2's manifest is replaced, not written through.
        reco_artifacts::manifest::write_manifest(to)?;
    }
    Ok(())
}

/// Writes `to` with every tensor of `from` permuted along its first axis by
/// one seeded permutation.
pub fn shuffle_rows(from: &Path, to: &Path, seed: u64) -> Result<(), ModelError> {
    let failed = |reason: String| ModelError::Shuffle { path: from.to_owned(), reason };
    let tensors = Tensor::read_safetensors(from).map_err(|e| failed(e.to_string()))?;
    let mut shuffled = Vec::with_capacity(tensors.len());
    for (name, tensor) in &tensors {
        let rows = tensor.size().first().copied().ok_or_else(|| failed(format!("tensor {name} is a scalar")))?;
        let mut order: Vec<i64> = (0..rows).collect();
        order.shuffle(&mut StdRng::seed_from_u64(seed));
        let index = Tensor::from_slice(&order);
        shuffled.push((name.clone(), tensor.index_select(0, &index).contiguous()));
    }
    let named: Vec<(&str, &Tensor)> = shuffled.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Tensor::write_safetensors(&named, to).map_err(|e| failed(e.to_string()))
}

/// Sets the version name in the copied `modelversion.yaml`.
fn rename_manifest(from: &Path, to: &Path) -> Result<(), ModelError> {
    let manifest = to.join(files::MODEL_VERSION);
    let Ok(text) = std::fs::read_to_string(from.join(files::MODEL_VERSION)) else { return Ok(()) };
    let (Some(old), Some(new)) = (from.file_name(), to.file_name()) else { return Ok(()) };
    let renamed =
        text.replace(&format!("name: {}", old.to_string_lossy()), &format!("name: {}", new.to_string_lossy()));
    std::fs::remove_file(&manifest).map_err(io(&manifest))?;
    std::fs::write(&manifest, renamed).map_err(io(&manifest))
}

/// Copies a version directory (files only, one level), hard-linking when it
/// can: the artifacts are never written in place.
pub fn copy_version(from: &Path, to: &Path) -> Result<(), ModelError> {
    std::fs::create_dir_all(to).map_err(io(to))?;
    for entry in std::fs::read_dir(from).map_err(io(from))? {
        let entry = entry.map_err(io(from))?;
        let source = entry.path();
        if !entry.file_type().map_err(io(&source))?.is_file() {
            continue;
        }
        let target = to.join(entry.file_name());
        if target.exists() {
            std::fs::remove_file(&target).map_err(io(&target))?;
        }
        if std::fs::hard_link(&source, &target).is_err() {
            std::fs::copy(&source, &target).map_err(io(&target))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> ModelOptions {
        ModelOptions {
            data: "/data/ml-100k".into(),
            seed: 1,
            pipeline: "demo".into(),
            max_users: None,
            v1_embedding_dim: 16,
            v1_epochs: 1,
            v1_candidates: 10,
            v1_ranker_epochs: 1,
            v2_epochs: 30,
            threads: None,
        }
    }

    #[test]
    fn the_cache_keys_change_with_what_changes_the_artifacts() {
        let key = |o: &ModelOptions| (o.cache_key(STABLE), o.cache_key(BETTER));
        let base = key(&options());
        assert_eq!(base, key(&options()));
        assert_ne!(base.0, base.1);
        assert_eq!(base, key(&ModelOptions { threads: Some(1), ..options() }));
        for other in [
            ModelOptions { seed: 2, ..options() },
            ModelOptions { max_users: Some(100), ..options() },
            ModelOptions { pipeline: "x".into(), ..options() },
            ModelOptions { data: "/elsewhere".into(), ..options() },
        ] {
            let changed = key(&other);
            assert!(changed.0 != base.0 && changed.1 != base.1, "{other:?}");
        }
        // v1's options retrain v1 only; v2's retrain v2 (and v3) only.
        for v1_only in [
            ModelOptions { v1_embedding_dim: 4, ..options() },
            ModelOptions { v1_epochs: 2, ..options() },
            ModelOptions { v1_candidates: 5, ..options() },
            ModelOptions { v1_ranker_epochs: 2, ..options() },
        ] {
            let changed = key(&v1_only);
            assert!(changed.0 != base.0 && changed.1 == base.1, "{v1_only:?}");
        }
        let changed = key(&ModelOptions { v2_epochs: 5, ..options() });
        assert!(changed.0 == base.0 && changed.1 != base.1);
    }

    #[test]
    fn the_broken_copy_has_the_same_rows_in_another_order() {
        let dir = tempfile::tempdir().unwrap();
        let (v2, v3) = (dir.path().join("v2"), dir.path().join("v3"));
        std::fs::create_dir_all(&v2).unwrap();
        let rows = Tensor::arange(40, (tch::Kind::Float, tch::Device::Cpu)).reshape([10, 4]);
        Tensor::write_safetensors(&[("embeddings", &rows)], v2.join(files::ITEM_EMBEDDINGS)).unwrap();
        std::fs::write(v2.join(files::MODEL_VERSION), "metadata:\n  name: v2\nspec:\n  pipeline: demo\n").unwrap();
        std::fs::write(v2.join(files::ITEM_IDS), "[]").unwrap();
        break_copy(&v2, &v3, 5).unwrap();

        let read = |p: &Path| Tensor::read_safetensors(p.join(files::ITEM_EMBEDDINGS)).unwrap().remove(0).1;
        let (original, shuffled) = (read(&v2), read(&v3));
        assert_eq!(original, rows, "the source is untouched");
        assert_ne!(shuffled, rows);
        let sorted = |t: &Tensor| t.sum_dim_intlist(1, false, tch::Kind::Float).sort(0, false).0;
        assert_eq!(sorted(&shuffled), sorted(&rows));
        assert_eq!(std::fs::read_to_string(v3.join(files::ITEM_IDS)).unwrap(), "[]");
        assert!(std::fs::read_to_string(v3.join(files::MODEL_VERSION)).unwrap().contains("name: v3"));

        // Seeded: the same seed gives the same order.
        let again = dir.path().join("again");
        break_copy(&v2, &again, 5).unwrap();
        assert_eq!(read(&again), shuffled);
    }

    #[test]
    fn a_missing_or_bad_embedding_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.safetensors");
        std::fs::write(&bad, b"not safetensors").unwrap();
        assert!(matches!(shuffle_rows(&bad, &dir.path().join("out"), 1), Err(ModelError::Shuffle { .. })));
        assert!(break_copy(&dir.path().join("missing"), &dir.path().join("to"), 1).is_err());
    }
}

//! Epoch checkpoints shared by the two-tower and ranker loops: after every
//! epoch, the last and the best weights and a JSON state (the loop's
//! counters, its options and seed) are written to one directory; a resumed
//! run reloads them when the options and seed are the same.
//!
//! Weights are written under names carrying the epoch, then the state that
//! names them is renamed into place, then older weights are removed: a save
//! interrupted at any point leaves a state whose weights are all on disk.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tch::nn::VarStore;

use crate::error::{Result, TrainError};

const STATE: &str = "state.json";

/// `state.json`: the loop's state and the weight files of the same epoch.
#[derive(Serialize, Deserialize)]
struct Saved<S> {
    last: String,
    best: String,
    state: S,
}

/// Loads the checkpoint in `dir`, if any, into `last` and `best`. `same_run`
/// says whether a saved state was made with this run's options and seed; a
/// checkpoint of another run is an error rather than silently mixed in.
pub fn load<S: DeserializeOwned>(
    dir: &Path,
    last: &mut VarStore,
    best: &mut VarStore,
    same_run: impl FnOnce(&S) -> bool,
) -> Result<Option<S>> {
    let path = dir.join(STATE);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    let saved: Saved<S> = serde_json::from_str(&text)
        .map_err(|e| TrainError::Format { path: path.clone(), message: format!("corrupt checkpoint state: {e}") })?;
    if !same_run(&saved.state) {
        return Err(TrainError::Options(format!(
            "checkpoint in {} was made with other options or seed; remove it or pass the same flags",
            dir.display()
        )));
    }
    last.load(dir.join(&saved.last))?;
    best.load(dir.join(&saved.best))?;
    Ok(Some(saved.state))
}

/// Loads a parent version's weights into `vars` (incremental training). Every variable must be there
/// with the same shape: a parent with another architecture is an error naming the file, not a
/// silently half-initialised model.
pub fn warm_start(vars: &mut VarStore, weights: &Path) -> Result<()> {
    vars.load(weights).map_err(|e| TrainError::Options(format!("warm start from {}: {e}", weights.display())))
}

/// Writes epoch `epoch`'s checkpoint to `dir` (created if missing).
pub fn save(dir: &Path, epoch: usize, state: &impl Serialize, last: &VarStore, best: &VarStore) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let saved = Saved { last: format!("last-{epoch}.safetensors"), best: format!("best-{epoch}.safetensors"), state };
    last.save(dir.join(&saved.last))?;
    best.save(dir.join(&saved.best))?;
    let text = serde_json::to_string_pretty(&saved)
        .map_err(|e| TrainError::Serialize { what: "checkpoint".into(), message: e.to_string() })?;
    let path = dir.join(STATE);
    reco_runtime::fs::save_atomic(&path, text.as_bytes()).map_err(|e| TrainError::io(&path, e))?;
    for entry in std::fs::read_dir(dir).map_err(|e| TrainError::io(dir, e))? {
        let name = entry.map_err(|e| TrainError::io(dir, e))?.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".safetensors") && name != saved.last && name != saved.best {
            let stale = dir.join(name.as_ref());
            std::fs::remove_file(&stale).map_err(|e| TrainError::io(&stale, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor, nn};

    fn store(value: f64) -> VarStore {
        let vs = VarStore::new(Device::Cpu);
        let _ = vs.root().var("w", &[2], nn::Init::Const(value));
        vs
    }

    fn w(vs: &VarStore) -> Tensor {
        vs.variables()["w"].shallow_clone()
    }

    #[test]
    fn saves_and_reloads_weights_and_state_and_keeps_only_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), 1, &("run", 1), &store(1.0), &store(1.5)).unwrap();
        save(dir.path(), 2, &("run", 2), &store(2.0), &store(2.5)).unwrap();
        let (mut last, mut best) = (store(0.0), store(0.0));
        let state: Option<(String, u32)> =
            load(dir.path(), &mut last, &mut best, |s: &(String, u32)| s.0 == "run").unwrap();
        assert_eq!(state, Some(("run".into(), 2)));
        assert!(w(&last).allclose(&Tensor::full([2], 2.0, (Kind::Float, Device::Cpu)), 0.0, 0.0, false));
        assert!(w(&best).allclose(&Tensor::full([2], 2.5, (Kind::Float, Device::Cpu)), 0.0, 0.0, false));
        let mut files: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        files.sort();
        assert_eq!(files, ["best-2.safetensors", "last-2.safetensors", "state.json"]);
    }

    #[test]
    fn no_checkpoint_is_none_and_another_runs_or_a_corrupt_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (mut last, mut best) = (store(0.0), store(0.0));
        assert_eq!(load::<u32>(dir.path(), &mut last, &mut best, |_| true).unwrap(), None);
        save(dir.path(), 1, &7u32, &store(1.0), &store(1.0)).unwrap();
        let err = load::<u32>(dir.path(), &mut last, &mut best, |&s| s == 8).unwrap_err();
        assert!(err.to_string().contains("other options or seed"), "{err}");
        std::fs::write(dir.path().join(STATE), "{not json").unwrap();
        let err = load::<u32>(dir.path(), &mut last, &mut best, |_| true).unwrap_err();
        assert!(err.to_string().contains("corrupt checkpoint state"), "{err}");
    }
}

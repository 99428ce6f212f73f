//! The users the simulator replays: ml-100k's users with their held-out
//! future, the test part of the trainer's per-user chronological 80/10/10
//! split, so a click means "the model found something this user really went
//! on to watch".

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use reco_trainer::pipeline::{load_dataset, subsample_users};
use reco_trainer::split::chronological_split;
use reco_trainer::validate::{Dataset, ValidationRules};

/// One replayed user: the id the gateway knows and the items of their future.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayUser {
    pub id: String,
    pub future: BTreeSet<String>,
}

/// The users a simulation draws from, in data-set order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayData {
    pub users: Vec<ReplayUser>,
}

/// Why the replay data could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("loading the replay data from {path}: {reason}")]
pub struct ReplayError {
    pub path: String,
    pub reason: String,
}

/// The share of each user's latest interactions that is their future (the
/// trainer's test split): replayed as clicks, never part of the history a
/// feature store is seeded with.
pub const HOLDOUT_FRACTION: f64 = 0.1;

impl ReplayData {
    /// Loads and validates a data directory with the trainer's code, keeps
    /// the first `max_users` users (as `reco train --max-users` does) and
    /// splits it as training did.
    pub fn load(data: &Path, max_users: Option<usize>) -> Result<Self, ReplayError> {
        let (mut ds, _) = load_dataset(data, &ValidationRules::default(), None)
            .map_err(|e| ReplayError { path: data.display().to_string(), reason: e.to_string() })?;
        if let Some(n) = max_users {
            subsample_users(&mut ds, n);
        }
        let replay = Self::from_dataset(&ds);
        if replay.users.is_empty() {
            return Err(ReplayError {
                path: data.display().to_string(),
                reason: "no user has a held-out future to replay".into(),
            });
        }
        Ok(replay)
    }

    /// The users with at least one test interaction, and those items. Pure.
    pub fn from_dataset(ds: &Dataset) -> Self {
        let split = chronological_split(ds, [0.9 - HOLDOUT_FRACTION, 0.1, HOLDOUT_FRACTION]);
        let mut future: HashMap<u32, BTreeSet<String>> = HashMap::new();
        for x in &split.test {
            if let Some(item) = ds.items.get(x.item as usize) {
                future.entry(x.user).or_default().insert(item.id.clone());
            }
        }
        let users = ds
            .users
            .iter()
            .enumerate()
            .filter_map(|(index, user)| {
                let future = future.remove(&u32::try_from(index).ok()?)?;
                Some(ReplayUser { id: user.id.clone(), future })
            })
            .collect();
        ReplayData { users }
    }
}

#[cfg(test)]
mod tests {
    use reco_trainer::validate::{Interaction, Item, User};

    use super::*;

    fn dataset() -> Dataset {
        let user = |id: &str| User { id: id.into(), ..Default::default() };
        let item = |id: &str| Item { id: id.into(), ..Default::default() };
        let mut interactions = Vec::new();
        // User "a": 10 interactions on items 0..10 in time order; the last is the test one.
        for i in 0..10 {
            interactions.push(Interaction { user: 0, item: i, rating: 4.0, timestamp: i64::from(i) });
        }
        // User "b": a single interaction, all of it train.
        interactions.push(Interaction { user: 1, item: 3, rating: 4.0, timestamp: 5 });
        Dataset {
            users: vec![user("a"), user("b")],
            items: (0..10).map(|i| item(&format!("i{i}"))).collect(),
            interactions,
        }
    }

    #[test]
    fn the_future_is_the_chronological_test_part() {
        let replay = ReplayData::from_dataset(&dataset());
        assert_eq!(replay.users.len(), 1, "a user without test interactions is not replayed");
        assert_eq!(replay.users[0].id, "a");
        assert_eq!(replay.users[0].future, BTreeSet::from(["i9".to_owned()]));
    }

    #[test]
    fn empty_and_missing_data_are_errors() {
        assert!(ReplayData::from_dataset(&Dataset::default()).users.is_empty());
        let dir = tempfile::tempdir().unwrap();
        let error = ReplayData::load(&dir.path().join("missing"), None).unwrap_err();
        assert!(error.to_string().contains("missing"), "{error}");
    }
}

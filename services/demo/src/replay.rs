//! The users the simulator replays: ml-100k's users with their held-out
//! future, the test part of the trainer's per-user chronological 80/10/10
//! split, so a click means "the model found something this user really went
//! on to watch".

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use reco_trainer::pipeline::{load_dataset, subsample_users};
use reco_trainer::split::{by_user, chronological_split};
use reco_trainer::validate::{Dataset, Interaction, ValidationRules};

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

/// The part of the trainer's per-user chronological split that a replay treats as the users'
/// future: they click it, and a seeded feature store holds only what came before it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Future {
    /// The newest part, which no version trains or tunes on: the demo's rollouts.
    #[default]
    Test,
    /// The part before it: the clicks a child version learns from (`reco train --init-from`),
    /// with the test part left to judge parent and child.
    Validation,
}

impl Future {
    /// Each user's history before the future, and the future, as the trainer splits. Pure.
    pub fn split(self, ds: &Dataset) -> (Vec<Interaction>, Vec<Interaction>) {
        let split = chronological_split(ds, [0.9 - HOLDOUT_FRACTION, 0.1, HOLDOUT_FRACTION]);
        match self {
            Future::Test => {
                let history = [split.train, split.valid].concat();
                (by_user(ds.users.len(), &history).concat(), split.test)
            }
            Future::Validation => (split.train, split.valid),
        }
    }
}

impl ReplayData {
    /// Loads and validates a data directory with the trainer's code, keeps
    /// the first `max_users` users (as `reco train --max-users` does) and
    /// splits it as training did.
    pub fn load(data: &Path, max_users: Option<usize>, future: Future) -> Result<Self, ReplayError> {
        let (mut ds, _) = load_dataset(data, &ValidationRules::default(), None)
            .map_err(|e| ReplayError { path: data.display().to_string(), reason: e.to_string() })?;
        if let Some(n) = max_users {
            subsample_users(&mut ds, n);
        }
        let replay = Self::from_dataset(&ds, future);
        if replay.users.is_empty() {
            return Err(ReplayError {
                path: data.display().to_string(),
                reason: format!("no user has a held-out future ({future:?}) to replay"),
            });
        }
        Ok(replay)
    }

    /// The users with at least one interaction in their `period` future, and those items. Pure.
    pub fn from_dataset(ds: &Dataset, period: Future) -> Self {
        let (_, future_part) = period.split(ds);
        let mut future: HashMap<u32, BTreeSet<String>> = HashMap::new();
        for x in &future_part {
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
        let replay = ReplayData::from_dataset(&dataset(), Future::Test);
        assert_eq!(replay.users.len(), 1, "a user without test interactions is not replayed");
        assert_eq!(replay.users[0].id, "a");
        assert_eq!(replay.users[0].future, BTreeSet::from(["i9".to_owned()]));
    }

    #[test]
    fn a_validation_future_comes_before_the_test_part_and_the_history_before_it() {
        let ds = dataset();
        let replay = ReplayData::from_dataset(&ds, Future::Validation);
        assert_eq!(replay.users.len(), 1);
        assert_eq!(replay.users[0].future, BTreeSet::from(["i8".to_owned()]));
        let items = |part: &[Interaction]| part.iter().filter(|x| x.user == 0).map(|x| x.item).collect::<Vec<_>>();
        let (history, future) = Future::Validation.split(&ds);
        assert_eq!((items(&history), items(&future)), ((0..8).collect(), vec![8]));
        let (history, future) = Future::Test.split(&ds);
        assert_eq!((items(&history), items(&future)), ((0..9).collect(), vec![9]));
        assert_eq!(history.iter().filter(|x| x.user == 1).count(), 1, "user b's one interaction is history");
    }

    #[test]
    fn empty_and_missing_data_are_errors() {
        assert!(ReplayData::from_dataset(&Dataset::default(), Future::Test).users.is_empty());
        let dir = tempfile::tempdir().unwrap();
        let error = ReplayData::load(&dir.path().join("missing"), None, Future::Test).unwrap_err();
        assert!(error.to_string().contains("missing"), "{error}");
    }
}

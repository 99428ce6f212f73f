//! Incremental training (`reco train --init-from VERSION --events LOG`): a run that starts from a
//! served version's weights and adds the interactions logged since that version to train.
//!
//! The parent must have been trained on the same data set (the same users and items, in the same
//! order): its weights are loaded row for row. Events naming a user or an item the parent does not
//! know are counted and left out; the next full training picks them up. Each remaining event joins
//! its user's train history (after the data set's interactions: it happened later), and a held-out
//! validation or test interaction that the events already show becomes history rather than a target,
//! so that no model is scored on an item it trained on for that user. The parent is scored on the
//! same split beside the new models, so the two figures compare.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use reco_model::artifacts::VersionArtifacts;
use serde::Serialize;

use crate::error::{Result, TrainError};
use crate::validate::{Dataset, Interaction};

/// Where an incremental run starts from.
#[derive(Debug, Clone)]
pub struct Incremental {
    /// The parent version's artifact directory.
    pub parent: PathBuf,
    /// The interactions logged since the parent, as `reco events export` writes them
    /// (`interactions.csv`: `user_id,item_id,timestamp` in seconds).
    pub events: PathBuf,
}

/// What became of the logged events; written to `training.json`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EventCounts {
    /// Rows read.
    pub rows: usize,
    /// Added to train.
    pub used: usize,
    /// Events of users the parent has no embedding for.
    pub unknown_users: usize,
    /// Events of items outside the parent's trained catalogue.
    pub unknown_items: usize,
    /// The user already had the item in train, or an earlier event had it.
    pub repeats: usize,
    /// Held-out validation and test interactions the events showed, turned into history.
    pub held_out_now_history: usize,
}

/// The events of `path` as interactions of `ds`, in file order, with the counts of what was left out.
pub fn read_events(path: &Path, ds: &Dataset) -> Result<(Vec<Interaction>, EventCounts)> {
    let users: HashMap<&str, u32> = ds.users.iter().enumerate().map(|(i, u)| (u.id.as_str(), i as u32)).collect();
    let items: HashMap<&str, u32> = ds.items.iter().enumerate().map(|(i, x)| (x.id.as_str(), i as u32)).collect();
    let format = |line: u64, message: String| TrainError::Format {
        path: path.to_path_buf(),
        message: format!("line {line}: {message} (expected user_id,item_id,timestamp as `reco events export` writes)"),
    };
    let mut reader = csv::Reader::from_path(path).map_err(|e| TrainError::Format {
        path: path.to_path_buf(),
        message: format!("cannot read the exported events: {e}"),
    })?;
    let mut counts = EventCounts::default();
    let mut events = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| format(e.position().map_or(0, |p| p.line()), e.to_string()))?;
        let line = record.position().map_or(0, |p| p.line());
        let [user, item, timestamp] = [0, 1, 2].map(|i| record.get(i));
        let (Some(user), Some(item), Some(timestamp)) = (user, item, timestamp) else {
            return Err(format(line, format!("{} fields", record.len())));
        };
        let timestamp: i64 =
            timestamp.trim().parse().map_err(|_| format(line, format!("timestamp {timestamp:?} is not an integer")))?;
        counts.rows += 1;
        match (users.get(user), items.get(item)) {
            (None, _) => counts.unknown_users += 1,
            (_, None) => counts.unknown_items += 1,
            // An exported event carries no explicit rating: read as `reco train` reads a file without one.
            (Some(&user), Some(&item)) => events.push(Interaction { user, item, rating: 1.0, timestamp }),
        }
    }
    if counts.unknown_users + counts.unknown_items > 0 {
        tracing::warn!(
            unknown_users = counts.unknown_users,
            unknown_items = counts.unknown_items,
            events = %path.display(),
            "events of users or items the parent does not know are left out (a full training learns them)"
        );
    }
    Ok((events, counts))
}

/// The parent's users and trained items must be the data set's, in order: its weights are indexed
/// by them.
pub fn check_parent(parent: &VersionArtifacts, ds: &Dataset) -> Result<()> {
    let mismatch = |what: &str, parent_n: usize, ours: usize, first: Option<usize>| {
        let at = first.map_or(String::new(), |i| format!(", first difference at row {i}"));
        TrainError::Options(format!(
            "--init-from {}: the parent was trained on other {what} ({parent_n} in the parent, {ours} in --data{at}); \
             pass the data set and --max-users it was trained with",
            parent.dir.display()
        ))
    };
    let user_ids: Vec<&str> = ds.users.iter().map(|u| u.id.as_str()).collect();
    if parent.user_ids.iter().map(String::as_str).ne(user_ids.iter().copied()) {
        let first = parent.user_ids.iter().zip(&user_ids).position(|(a, b)| a != b);
        return Err(mismatch("users", parent.user_ids.len(), user_ids.len(), first));
    }
    let trained = &parent.items[..parent.n_trained_items];
    if trained.iter().map(|x| x.id.as_str()).ne(ds.items.iter().map(|x| x.id.as_str())) {
        let first = trained.iter().zip(&ds.items).position(|(a, b)| a.id != b.id);
        return Err(mismatch("items", trained.len(), ds.items.len(), first));
    }
    Ok(())
}

/// Folds `events` into the per-user split (see the module docs). Pure.
pub fn fold(
    events: &[Interaction],
    train: &mut [Vec<Interaction>],
    valid: &mut [Vec<Interaction>],
    test: &mut [Vec<Interaction>],
    counts: &mut EventCounts,
) {
    let mut known: HashSet<(u32, u32)> = train.iter().flatten().map(|x| (x.user, x.item)).collect();
    for event in events {
        if !known.insert((event.user, event.item)) {
            counts.repeats += 1;
            continue;
        }
        let user = event.user as usize;
        train[user].push(*event);
        counts.used += 1;
        for held_out in [&mut valid[user], &mut test[user]] {
            let before = held_out.len();
            held_out.retain(|x| x.item != event.item);
            counts.held_out_now_history += before - held_out.len();
        }
    }
    for history in train {
        history.sort_by_key(|x| x.timestamp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::{Item, User};

    fn dataset() -> Dataset {
        Dataset {
            users: ["a", "b"].map(|id| User { id: id.into(), ..Default::default() }).into(),
            items: ["x", "y", "z"].map(|id| Item { id: id.into(), ..Default::default() }).into(),
            interactions: Vec::new(),
        }
    }

    fn at(user: u32, item: u32, timestamp: i64) -> Interaction {
        Interaction { user, item, rating: 1.0, timestamp }
    }

    #[test]
    fn events_of_unknown_users_and_items_are_counted_and_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("interactions.csv");
        std::fs::write(&path, "user_id,item_id,timestamp\na,y,20\nnobody,y,21\nb,gone,22\nb,x,23\n").unwrap();
        let (events, counts) = read_events(&path, &dataset()).unwrap();
        assert_eq!(events, vec![at(0, 1, 20), at(1, 0, 23)]);
        assert_eq!(counts, EventCounts { rows: 4, unknown_users: 1, unknown_items: 1, ..Default::default() });
    }

    #[test]
    fn a_malformed_export_is_an_error_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("interactions.csv");
        std::fs::write(&path, "user_id,item_id,timestamp\na,y,20\na,y,soon\n").unwrap();
        let err = read_events(&path, &dataset()).unwrap_err().to_string();
        assert!(err.contains("line 3") && err.contains("\"soon\" is not an integer"), "{err}");
        std::fs::write(&path, "user_id,item_id,timestamp\na,y\n").unwrap();
        let err = read_events(&path, &dataset()).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        let err = read_events(&dir.path().join("missing.csv"), &dataset()).unwrap_err().to_string();
        assert!(err.contains("missing.csv"), "{err}");
    }

    #[test]
    fn events_join_train_in_time_order_and_the_held_out_items_they_show_stop_being_targets() {
        let mut train = vec![vec![at(0, 0, 10)], vec![]];
        let mut valid = vec![vec![at(0, 1, 11)], vec![at(1, 2, 11)]];
        let mut test = vec![vec![at(0, 2, 12)], vec![at(1, 1, 12)]];
        let events = [at(0, 2, 30), at(0, 0, 31), at(0, 2, 32), at(1, 1, 5)];
        let mut counts = EventCounts::default();
        fold(&events, &mut train, &mut valid, &mut test, &mut counts);
        assert_eq!(train, vec![vec![at(0, 0, 10), at(0, 2, 30)], vec![at(1, 1, 5)]]);
        assert_eq!(
            valid,
            vec![vec![at(0, 1, 11)], vec![at(1, 2, 11)]],
            "validation targets the events did not show stay"
        );
        assert_eq!(test, vec![vec![], vec![]], "shown test items are history now");
        assert_eq!(counts, EventCounts { used: 2, repeats: 2, held_out_now_history: 2, ..Default::default() });
    }
}

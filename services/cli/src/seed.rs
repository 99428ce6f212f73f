//! Seeding an empty feature store with a data set's users and history:
//! `reco standalone --seed-data` and `reco serve features --seed-from`.

use std::collections::HashSet;

use reco_features::{Demographics, SeedInteraction, SeedUser};
use reco_trainer::pipeline::load_dataset;
use reco_trainer::split::chronological_split;

/// The largest share of each user's interactions that may be held out.
pub const MAX_HOLDOUT: f64 = 0.5;

/// What a data set seeds a feature store with.
pub struct SeedMaterial {
    pub users: Vec<SeedUser>,
    pub interactions: Vec<SeedInteraction>,
    /// The catalog: events naming other items are refused.
    pub items: HashSet<String>,
}

/// The users of the data set in `dir` and their interactions, less the
/// latest `holdout` fraction of each user's (the held-out future that a
/// replay or an evaluation uses, as the trainer's chronological split does),
/// and its items.
pub fn seed_material(dir: &std::path::Path, holdout: f64) -> anyhow::Result<SeedMaterial> {
    anyhow::ensure!(
        (0.0..=MAX_HOLDOUT).contains(&holdout),
        "the held-out fraction must be between 0 and {MAX_HOLDOUT}, not {holdout}"
    );
    let (ds, _) = load_dataset(dir, &Default::default(), None)?;
    let split = chronological_split(&ds, [1.0 - holdout, 0.0, holdout]);
    let users = ds
        .users
        .iter()
        .map(|u| SeedUser {
            user_id: u.id.clone(),
            demographics: Demographics {
                age: u.age,
                gender: u.gender.clone().unwrap_or_default(),
                occupation: u.occupation.clone().unwrap_or_default(),
                zip: u.zip.clone().unwrap_or_default(),
            },
        })
        .collect();
    let interactions = split
        .train
        .iter()
        .map(|x| SeedInteraction {
            user_id: ds.users[x.user as usize].id.clone(),
            item_id: ds.items[x.item as usize].id.clone(),
            at_ms: x.timestamp.saturating_mul(1000),
        })
        .collect();
    let items = ds.items.iter().map(|i| i.id.clone()).collect();
    Ok(SeedMaterial { users, interactions, items })
}

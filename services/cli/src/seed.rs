//! Seeding an empty feature store with a data set's users and history:
//! `reco standalone --seed-data` and `reco serve features --seed-from`.

use std::collections::HashSet;

use reco_demo::replay::Future;
use reco_features::{Demographics, SeedInteraction, SeedUser};
use reco_trainer::pipeline::load_dataset;
use reco_trainer::split::chronological_split;
use reco_trainer::validate::Dataset;

/// The largest share of each user's interactions that may be held out.
pub const MAX_HOLDOUT: f64 = 0.5;

/// What a data set seeds a feature store with.
pub struct SeedMaterial {
    pub users: Vec<SeedUser>,
    pub interactions: Vec<SeedInteraction>,
    /// The catalog: events naming other items are refused.
    pub items: HashSet<String>,
}

/// What each user's seeded history leaves out: the held-out future that a replay or an
/// evaluation uses, cut as the trainer's chronological split cuts.
#[derive(Clone, Copy, Debug)]
pub enum Holdout {
    /// Each user's latest share of interactions.
    Fraction(f64),
    /// The replay's future and everything after it.
    Future(Future),
}

/// The users of the data set in `dir` and their interactions less the `holdout`, and its items.
pub fn seed_material(dir: &std::path::Path, holdout: Holdout) -> anyhow::Result<SeedMaterial> {
    if let Holdout::Fraction(fraction) = holdout {
        anyhow::ensure!(
            (0.0..=MAX_HOLDOUT).contains(&fraction),
            "the held-out fraction must be between 0 and {MAX_HOLDOUT}, not {fraction}"
        );
    }
    let (ds, _) = load_dataset(dir, &Default::default(), None)?;
    Ok(material(&ds, holdout))
}

fn material(ds: &Dataset, holdout: Holdout) -> SeedMaterial {
    let history = match holdout {
        Holdout::Fraction(fraction) => chronological_split(ds, [1.0 - fraction, 0.0, fraction]).train,
        Holdout::Future(future) => future.split(ds).0,
    };
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
    let interactions = history
        .iter()
        .map(|x| SeedInteraction {
            user_id: ds.users[x.user as usize].id.clone(),
            item_id: ds.items[x.item as usize].id.clone(),
            at_ms: x.timestamp.saturating_mul(1000),
        })
        .collect();
    let items = ds.items.iter().map(|i| i.id.clone()).collect();
    SeedMaterial { users, interactions, items }
}

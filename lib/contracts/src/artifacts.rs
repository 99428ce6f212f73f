//! File names inside a model version's artifact directory: what `reco train`
//! writes, the services load and the operator's artifact init step fetches.

pub const TWO_TOWER_WEIGHTS: &str = "two_tower.safetensors";
pub const TWO_TOWER_CONFIG: &str = "two_tower.json";
pub const ITEM_EMBEDDINGS: &str = "item_embeddings.safetensors";
pub const ITEM_IDS: &str = "item_ids.json";
pub const USER_IDS: &str = "user_ids.json";
/// The item catalogue (id, title, year, genres), row `i` = item index `i`.
pub const ITEMS: &str = "items.json";
pub const ITEM_ITEM_WEIGHTS: &str = "item_item.safetensors";
pub const RANKER_WEIGHTS: &str = "ranker.safetensors";
pub const RANKER_CONFIG: &str = "ranker.json";
pub const FEATURES: &str = "features.json";
pub const FEATURE_STATS: &str = "feature_stats.json";
pub const METRICS: &str = "metrics.json";
pub const TRAINING: &str = "training.json";
pub const MODEL_VERSION: &str = "modelversion.yaml";
pub const VALIDATION_REPORT: &str = "validation_report.json";
/// sha256 and size of every other file; its own sha256 is the version digest.
pub const MANIFEST: &str = "manifest.json";

//! The feature records and the pure rules that update them. Both backends apply events through
//! these functions (the embedded store directly, Redis by mirroring the same steps in commands),
//! so the shared behaviour tests pin one set of semantics.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use reco_proto::EventType;
use serde::{Deserialize, Serialize};

/// Default bound of the long-term history (item ids).
pub const DEFAULT_HISTORY_LEN: usize = 200;
/// Default number of session events kept per user.
pub const DEFAULT_SESSION_LEN: usize = 20;

/// Default age past which session events no longer count: a session is the recent past.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(30 * 60);
/// Default time after which Redis drops the features of a user or item nobody touched.
pub const DEFAULT_STATE_TTL: Duration = Duration::from_secs(180 * 24 * 60 * 60);

/// How much each user keeps, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub history_len: usize,
    pub session_len: usize,
    /// Session events older than this are dropped when read (and Redis expires idle sessions).
    pub session_ttl: Duration,
    /// Redis keys of users and items expire after this long without an event.
    pub state_ttl: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            history_len: DEFAULT_HISTORY_LEN,
            session_len: DEFAULT_SESSION_LEN,
            session_ttl: DEFAULT_SESSION_TTL,
            state_ttl: DEFAULT_STATE_TTL,
        }
    }
}

/// Static facts about a user (MovieLens-style); empty strings mean unknown.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Demographics {
    pub age: Option<u32>,
    pub gender: String,
    pub occupation: String,
    pub zip: String,
}

/// One event of the session history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEntry {
    pub item_id: String,
    /// The event type's name (`"click"`, `"hide"`, ...), as in the counters.
    #[serde(rename = "type")]
    pub kind: String,
    pub at_ms: i64,
    pub dwell_ms: u32,
}

/// Everything the store keeps about one user.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserState {
    pub demographics: Demographics,
    /// Item ids interacted with positively, oldest first, each at most once.
    pub history: VecDeque<String>,
    /// The last events, oldest first.
    pub session: VecDeque<SessionEntry>,
    pub counters: BTreeMap<String, u64>,
}

/// An event that passed validation: ids are non-empty and bounded, the type is known.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureEvent {
    pub user_id: String,
    pub item_id: String,
    pub kind: EventKind,
    pub at_ms: i64,
    pub dwell_ms: u32,
}

/// The specified event types (no "unspecified"), so applying an event cannot fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Click,
    Like,
    Save,
    Hide,
    Dwell,
}

impl EventKind {
    pub const ALL: [EventKind; 5] =
        [EventKind::Click, EventKind::Like, EventKind::Save, EventKind::Hide, EventKind::Dwell];

    /// The counter / log name (`"click"`, ...), identical to `reco_proto::EventType::name`.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Click => "click",
            EventKind::Like => "like",
            EventKind::Save => "save",
            EventKind::Hide => "hide",
            EventKind::Dwell => "dwell",
        }
    }

    /// `None` for `Unspecified`.
    pub fn from_proto(t: EventType) -> Option<Self> {
        match t {
            EventType::Unspecified => None,
            EventType::Click => Some(EventKind::Click),
            EventType::Like => Some(EventKind::Like),
            EventType::Save => Some(EventKind::Save),
            EventType::Hide => Some(EventKind::Hide),
            EventType::Dwell => Some(EventKind::Dwell),
        }
    }

    pub fn to_proto(self) -> EventType {
        match self {
            EventKind::Click => EventType::Click,
            EventKind::Like => EventType::Like,
            EventKind::Save => EventType::Save,
            EventKind::Hide => EventType::Hide,
            EventKind::Dwell => EventType::Dwell,
        }
    }

    /// Whether the event says the user engaged with the item, which puts it in the long-term
    /// history. A hide is the opposite; it stays in the session so retrieval can exclude it.
    pub fn is_positive(self) -> bool {
        !matches!(self, EventKind::Hide)
    }
}

/// Moves `item_id` to the newest end of the history, dropping the oldest beyond `limit`.
pub fn push_history(history: &mut VecDeque<String>, item_id: &str, limit: usize) {
    if let Some(pos) = history.iter().position(|h| h == item_id) {
        history.remove(pos);
    }
    history.push_back(item_id.to_owned());
    while history.len() > limit {
        history.pop_front();
    }
}

/// Applies one event to a user: session, counters, and (for positive events) history.
pub fn apply_to_user(user: &mut UserState, event: &FeatureEvent, limits: Limits) {
    user.session.push_back(SessionEntry {
        item_id: event.item_id.clone(),
        kind: event.kind.name().to_owned(),
        at_ms: event.at_ms,
        dwell_ms: event.dwell_ms,
    });
    while user.session.len() > limits.session_len {
        user.session.pop_front();
    }
    *user.counters.entry(event.kind.name().to_owned()).or_default() += 1;
    if event.kind.is_positive() {
        push_history(&mut user.history, &event.item_id, limits.history_len);
    }
}

/// Drops the session events older than `ttl` at `now_ms`.
pub fn expire_session(user: &mut UserState, now_ms: i64, ttl: Duration) {
    let oldest = now_ms.saturating_sub(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
    user.session.retain(|e| e.at_ms >= oldest);
}

/// Applies one event to an item's engagement counters.
pub fn apply_to_item(counters: &mut BTreeMap<String, u64>, event: &FeatureEvent) {
    *counters.entry(event.kind.name().to_owned()).or_default() += 1;
}

/// A user of the dataset to seed, with demographics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeedUser {
    pub user_id: String,
    pub demographics: Demographics,
}

/// A historical interaction (e.g. a MovieLens rating) to seed the long-term history with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeedInteraction {
    pub user_id: String,
    pub item_id: String,
    pub at_ms: i64,
}

/// Builds the seeded users: demographics plus the newest `history_len` distinct items of each
/// user's interactions, oldest first. Users that only appear in interactions get empty
/// demographics. Session and counters stay empty: they describe live behaviour.
pub fn seeded_users(
    users: &[SeedUser],
    interactions: &[SeedInteraction],
    limits: Limits,
) -> BTreeMap<String, UserState> {
    let mut out: BTreeMap<String, UserState> = users
        .iter()
        .map(|u| (u.user_id.clone(), UserState { demographics: u.demographics.clone(), ..UserState::default() }))
        .collect();
    let mut sorted: Vec<&SeedInteraction> = interactions.iter().collect();
    // Stable sort: interactions with equal timestamps keep their input order.
    sorted.sort_by_key(|i| i.at_ms);
    for i in sorted {
        let user = out.entry(i.user_id.clone()).or_default();
        push_history(&mut user.history, &i.item_id, limits.history_len);
    }
    out
}

/// The wire form of a user; `state` is `None` for a user the store has never seen.
pub fn to_proto_user(user_id: &str, state: Option<UserState>) -> reco_proto::UserFeatures {
    let Some(state) = state else {
        return reco_proto::UserFeatures { user_id: user_id.to_owned(), known: false, ..Default::default() };
    };
    reco_proto::UserFeatures {
        user_id: user_id.to_owned(),
        known: true,
        age: state.demographics.age,
        gender: state.demographics.gender,
        occupation: state.demographics.occupation,
        zip: state.demographics.zip,
        history: state.history.into(),
        session: state
            .session
            .into_iter()
            .map(|e| reco_proto::SessionEvent {
                r#type: EventType::from_name(&e.kind).unwrap_or(EventType::Unspecified) as i32,
                item_id: e.item_id,
                at_ms: e.at_ms,
                dwell_ms: e.dwell_ms,
            })
            .collect(),
        counters: state.counters.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(item: &str, kind: EventKind) -> FeatureEvent {
        FeatureEvent { user_id: "u".into(), item_id: item.into(), kind, at_ms: 1, dwell_ms: 0 }
    }

    #[test]
    fn session_is_bounded_and_keeps_the_newest() {
        let limits = Limits { history_len: 10, session_len: 3, ..Limits::default() };
        let mut u = UserState::default();
        for i in 0..5 {
            apply_to_user(&mut u, &ev(&format!("i{i}"), EventKind::Click), limits);
        }
        let items: Vec<_> = u.session.iter().map(|e| e.item_id.as_str()).collect();
        assert_eq!(items, ["i2", "i3", "i4"]);
        assert_eq!(u.counters["click"], 5);
    }

    #[test]
    fn history_dedups_moves_to_newest_and_is_bounded() {
        let limits = Limits { history_len: 3, session_len: 20, ..Limits::default() };
        let mut u = UserState::default();
        for item in ["a", "b", "c", "a", "d"] {
            apply_to_user(&mut u, &ev(item, EventKind::Like), limits);
        }
        assert_eq!(Vec::from(u.history.clone()), ["c", "a", "d"]);
    }

    #[test]
    fn old_session_events_expire() {
        let mut u = UserState::default();
        for at_ms in [1_000, 50_000, 61_000] {
            apply_to_user(&mut u, &FeatureEvent { at_ms, ..ev("x", EventKind::Click) }, Limits::default());
        }
        expire_session(&mut u, 70_000, Duration::from_secs(20));
        assert_eq!(u.session.iter().map(|e| e.at_ms).collect::<Vec<_>>(), [50_000, 61_000]);
        assert_eq!(u.counters["click"], 3, "counters are long-term");
    }

    #[test]
    fn hide_goes_to_the_session_but_not_the_history() {
        let mut u = UserState::default();
        apply_to_user(&mut u, &ev("x", EventKind::Hide), Limits::default());
        assert!(u.history.is_empty());
        assert_eq!(u.session.back().map(|e| e.kind.as_str()), Some("hide"));
        assert_eq!(u.counters["hide"], 1);
    }

    #[test]
    fn seeding_orders_by_time_and_bounds_history() {
        let users = vec![SeedUser {
            user_id: "1".into(),
            demographics: Demographics { age: Some(25), gender: "F".into(), ..Default::default() },
        }];
        let inter = |u: &str, i: &str, t| SeedInteraction { user_id: u.into(), item_id: i.into(), at_ms: t };
        let interactions = vec![inter("1", "b", 20), inter("1", "a", 10), inter("1", "c", 30), inter("2", "z", 5)];
        let seeded =
            seeded_users(&users, &interactions, Limits { history_len: 2, session_len: 5, ..Limits::default() });
        assert_eq!(Vec::from(seeded["1"].history.clone()), ["b", "c"]);
        assert_eq!(seeded["1"].demographics.age, Some(25));
        assert_eq!(Vec::from(seeded["2"].history.clone()), ["z"]);
        assert!(seeded["1"].session.is_empty() && seeded["1"].counters.is_empty());
    }

    #[test]
    fn kinds_match_the_proto_names() {
        for k in EventKind::ALL {
            assert_eq!(k.to_proto().name(), Some(k.name()));
            assert_eq!(EventKind::from_proto(k.to_proto()), Some(k));
        }
        assert_eq!(EventKind::from_proto(EventType::Unspecified), None);
    }

    #[test]
    fn unknown_user_is_cold_start() {
        let p = to_proto_user("nobody", None);
        assert!(!p.known);
        assert_eq!(p.user_id, "nobody");
        assert!(p.history.is_empty());
    }
}

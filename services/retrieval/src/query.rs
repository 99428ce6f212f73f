//! From a `RetrieveRequest` to what retrieval needs: validated limits, the user-tower query (model indices),
//! the exclusions and the content-type filter. Pure logic.

use std::collections::{HashMap, HashSet};

use reco_model::features::{User, time_context};
use reco_proto::{EventType, RetrieveRequest};

use crate::args::MAX_K;
use crate::catalog::Catalog;

/// Long-term history ids kept (the most recent); longer lists are truncated, not rejected.
pub const MAX_HISTORY: usize = 1_000;
/// Session events kept (the most recent).
pub const MAX_SESSION: usize = 500;
/// Most `exclude_item_ids` one request may carry.
pub const MAX_EXCLUDE: usize = 5_000;
/// Most `context.content_types`.
pub const MAX_CONTENT_TYPES: usize = 256;
/// Longest user id.
pub const MAX_USER_ID_LEN: usize = 256;

/// A request field that cannot be served; becomes `Status::invalid_argument`.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{field}: {reason}")]
pub struct InvalidArgument {
    pub field: &'static str,
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> InvalidArgument {
    InvalidArgument { field, reason: reason.into() }
}

/// One user-tower input row, as `FeatureSpace::push_user` takes it.
#[derive(Clone, Debug, PartialEq)]
pub struct UserQuery {
    /// Model user index, 0 for a user the model has not seen.
    pub index: i64,
    pub user: User,
    /// Model item indices, oldest first.
    pub history: Vec<i64>,
    /// Unix seconds of the time context.
    pub now: i64,
}

impl UserQuery {
    /// Hash of everything the embedding depends on besides the user id (history, demographics, the
    /// day-of-week and hour of `now`), so a cached embedding is reused only while it is still exact.
    pub fn fingerprint(&self) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&self.index.to_le_bytes());
        h.update(&self.user.age.map_or(-1i64, i64::from).to_le_bytes());
        for s in [&self.user.gender, &self.user.occupation, &self.user.zip] {
            let s = s.as_deref().unwrap_or("");
            h.update(&(s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        }
        let (dow, hour) = time_context(self.now);
        h.update(&dow.to_le_bytes());
        h.update(&hour.to_le_bytes());
        for i in &self.history {
            h.update(&i.to_le_bytes());
        }
        h.digest()
    }
}

/// A validated request.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub user_id: String,
    pub query: UserQuery,
    /// Catalogue rows of the history (any row, trained or new), oldest first.
    pub history_rows: Vec<usize>,
    /// Rows never to return: history, hidden items, `exclude_item_ids`.
    pub exclude: HashSet<usize>,
    pub k: usize,
    /// `Some` restricts candidates to items having one of these genres.
    pub categories: Option<HashSet<String>>,
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// Validates `req` and maps it onto the catalogue and the model's user ids. `wall_secs` is the time used
/// when neither the context nor the session carries one.
pub fn plan(
    req: &RetrieveRequest,
    catalog: &Catalog,
    user_index: &HashMap<String, i64>,
    wall_secs: i64,
) -> Result<Plan, InvalidArgument> {
    let u = req.user.as_ref().ok_or_else(|| invalid("user", "is required"))?;
    if u.user_id.is_empty() {
        return Err(invalid("user.user_id", "is empty"));
    }
    if u.user_id.len() > MAX_USER_ID_LEN {
        return Err(invalid("user.user_id", format!("is longer than {MAX_USER_ID_LEN} bytes")));
    }
    if req.k == 0 || req.k > MAX_K {
        return Err(invalid("k", format!("{} is out of range 1..={MAX_K}", req.k)));
    }
    if req.exclude_item_ids.len() > MAX_EXCLUDE {
        let n = req.exclude_item_ids.len();
        return Err(invalid("exclude_item_ids", format!("has {n} ids, at most {MAX_EXCLUDE} allowed")));
    }
    let content_types = req.context.as_ref().map(|c| c.content_types.as_slice()).unwrap_or_default();
    if content_types.len() > MAX_CONTENT_TYPES {
        let n = content_types.len();
        return Err(invalid("context.content_types", format!("has {n} entries, at most {MAX_CONTENT_TYPES} allowed")));
    }
    let categories = (!content_types.is_empty()).then(|| content_types.iter().cloned().collect());

    let session = &u.session[u.session.len().saturating_sub(MAX_SESSION)..];
    let history = &u.history[u.history.len().saturating_sub(MAX_HISTORY)..];
    let positive = |t: i32| matches!(EventType::try_from(t), Ok(EventType::Click | EventType::Like | EventType::Save));
    let hidden = |t: i32| EventType::try_from(t) == Ok(EventType::Hide);
    let ids = history
        .iter()
        .map(String::as_str)
        .chain(session.iter().filter(|e| positive(e.r#type)).map(|e| e.item_id.as_str()));
    // Oldest first, each item once at its latest position.
    let mut history_rows: Vec<usize> = ids.filter_map(|id| catalog.row(id)).collect();
    let mut seen = HashSet::new();
    history_rows.reverse();
    history_rows.retain(|r| seen.insert(*r));
    history_rows.reverse();

    let mut exclude: HashSet<usize> = history_rows.iter().copied().collect();
    exclude.extend(session.iter().filter(|e| hidden(e.r#type)).filter_map(|e| catalog.row(&e.item_id)));
    exclude.extend(req.exclude_item_ids.iter().filter_map(|id| catalog.row(id)));

    let context_now = req.context.as_ref().map_or(0, |c| c.now_ms);
    let last_event = session.iter().map(|e| e.at_ms).filter(|&t| t > 0).max().unwrap_or(0);
    let now = [context_now, last_event].into_iter().find(|&t| t > 0).map_or(wall_secs, |ms| ms.div_euclid(1000));

    let query = UserQuery {
        index: user_index.get(&u.user_id).copied().unwrap_or(0),
        user: User {
            id: u.user_id.clone(),
            age: u.age,
            gender: non_empty(&u.gender),
            occupation: non_empty(&u.occupation),
            zip: non_empty(&u.zip),
        },
        history: history_rows.iter().filter(|&&r| r < catalog.trained).map(|&r| r as i64 + 1).collect(),
        now,
    };
    Ok(Plan { user_id: u.user_id.clone(), query, history_rows, exclude, k: req.k as usize, categories })
}

#[cfg(test)]
mod tests {
    use super::*;
    use reco_model::features::Item;
    use reco_proto::{Context, SessionEvent, UserFeatures};

    fn catalog() -> Catalog {
        let items: Vec<Item> =
            (0..5).map(|i| Item { id: format!("i{i}"), genres: vec!["Drama".into()], ..Default::default() }).collect();
        Catalog::new(items, vec![0.0; 5], 1, &[0; 5]).unwrap()
    }

    fn event(id: &str, t: EventType, at_ms: i64) -> SessionEvent {
        SessionEvent { item_id: id.into(), r#type: t as i32, at_ms, dwell_ms: 0 }
    }

    fn request(user: UserFeatures) -> RetrieveRequest {
        RetrieveRequest { user: Some(user), k: 10, context: None, exclude_item_ids: vec![] }
    }

    #[test]
    fn history_and_session_map_to_model_indices_and_exclusions() {
        let user = UserFeatures {
            user_id: "u7".into(),
            known: true,
            history: vec!["i1".into(), "nope".into(), "i2".into()],
            session: vec![
                event("i1", EventType::Click, 5_000),
                event("i3", EventType::Hide, 6_000),
                event("i4", EventType::Dwell, 7_000),
            ],
            gender: "F".into(),
            ..Default::default()
        };
        let mut req = request(user);
        req.exclude_item_ids = vec!["i0".into(), "unknown".into()];
        let users = HashMap::from([("u7".to_string(), 3)]);
        let p = plan(&req, &catalog(), &users, 99).unwrap();
        assert_eq!(p.history_rows, [2, 1], "i1 moves to its latest position; unknown ids skipped");
        assert_eq!(p.query.history, [3, 2]);
        assert_eq!(p.query.index, 3);
        assert_eq!(p.query.now, 7, "the last event time");
        assert_eq!(p.query.user.gender.as_deref(), Some("F"));
        assert_eq!(p.query.user.occupation, None);
        assert_eq!(p.exclude, HashSet::from([0, 1, 2, 3]), "history, hidden and excluded; dwell is neither");
    }

    #[test]
    fn now_prefers_the_context_then_the_wall_clock() {
        let mut req = request(UserFeatures { user_id: "x".into(), ..Default::default() });
        assert_eq!(plan(&req, &catalog(), &HashMap::new(), 42).unwrap().query.now, 42);
        req.context = Some(Context { now_ms: 1_700_000_000_500, ..Default::default() });
        let p = plan(&req, &catalog(), &HashMap::new(), 42).unwrap();
        assert_eq!((p.query.now, p.query.index), (1_700_000_000, 0));
    }

    #[test]
    fn bad_input_names_the_field() {
        let field = |req: RetrieveRequest| plan(&req, &catalog(), &HashMap::new(), 0).unwrap_err().field;
        let ok = request(UserFeatures { user_id: "x".into(), ..Default::default() });
        assert_eq!(field(RetrieveRequest { user: None, ..ok.clone() }), "user");
        assert_eq!(field(request(UserFeatures::default())), "user.user_id");
        assert_eq!(field(request(UserFeatures { user_id: "x".repeat(300), ..Default::default() })), "user.user_id");
        assert_eq!(field(RetrieveRequest { k: 0, ..ok.clone() }), "k");
        assert_eq!(field(RetrieveRequest { k: MAX_K + 1, ..ok.clone() }), "k");
        let many = vec!["i0".to_string(); MAX_EXCLUDE + 1];
        assert_eq!(field(RetrieveRequest { exclude_item_ids: many, ..ok.clone() }), "exclude_item_ids");
        let types = Context { content_types: vec!["a".into(); MAX_CONTENT_TYPES + 1], ..Default::default() };
        assert_eq!(field(RetrieveRequest { context: Some(types), ..ok }), "context.content_types");
    }

    #[test]
    fn oversized_histories_are_truncated_to_the_latest() {
        let mut history: Vec<String> = vec!["i0".into(); MAX_HISTORY * 3];
        history.push("i4".into());
        let p = plan(
            &request(UserFeatures { user_id: "x".into(), history, ..Default::default() }),
            &catalog(),
            &HashMap::new(),
            0,
        )
        .unwrap();
        assert_eq!(p.history_rows, [0, 4]);
    }

    #[test]
    fn fingerprints_change_with_the_inputs_of_the_embedding() {
        let q = UserQuery { index: 1, user: User::default(), history: vec![1, 2], now: 0 };
        let same_hour = UserQuery { now: 60, ..q.clone() };
        assert_eq!(q.fingerprint(), same_hour.fingerprint());
        assert_ne!(q.fingerprint(), UserQuery { history: vec![2, 1], ..q.clone() }.fingerprint());
        assert_ne!(q.fingerprint(), UserQuery { now: 7_200, ..q.clone() }.fingerprint());
        let aged = UserQuery { user: User { age: Some(30), ..Default::default() }, ..q.clone() };
        assert_ne!(q.fingerprint(), aged.fingerprint());
    }
}

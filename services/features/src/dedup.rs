//! Exactly-once ingestion: every event has an id, and a retry of an event already applied is
//! acknowledged again without being logged or applied a second time.
//!
//! [`RecentEvents`] remembers the ids applied in the last `window` (at most `capacity` of them).
//! An id being written by one request is *pending*: a concurrent retry of it waits for that
//! write and shares its outcome, so a retry is never acknowledged before the event is durable.
//! After a restart the embedded store's service rebuilds the window from the event log (see
//! `FeatureService::recover`); with Redis the window is the process's own and starts empty.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::sink::{LogPoint, Offsets};
use xxhash_rust::xxh3::Xxh3;

/// An event's identity (see [`event_id`]).
pub type EventId = u128;

/// The id of an event: the client's `event_id` when it gives one; else the gateway's key of
/// (request, item, type), which its token vouches for; else (user, item, type, time) when the
/// client gave the time. An event with none of these has no id and is applied at least once.
pub fn event_id(e: &reco_proto::Event) -> Option<EventId> {
    let event_type = reco_proto::EventType::try_from(e.r#type).unwrap_or_default();
    if !e.event_id.is_empty() {
        let mut hasher = Xxh3::new();
        hasher.update(b"client-id\0");
        hasher.update(e.event_id.as_bytes());
        return Some(hasher.digest128());
    }
    if !e.request_id.is_empty() {
        return Some(reco_proto::event_key(&e.request_id, &e.item_id, event_type));
    }
    if e.at_ms != 0 {
        let mut hasher = Xxh3::new();
        hasher.update(b"user-item-type-time\0");
        for part in [e.user_id.as_bytes(), e.item_id.as_bytes()] {
            hasher.update(&(part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        hasher.update(&i32::from(event_type).to_be_bytes());
        hasher.update(&e.at_ms.to_be_bytes());
        return Some(hasher.digest128());
    }
    None
}

/// Renders an id for the log (32 hex digits).
pub fn format_id(id: EventId) -> String {
    format!("{id:032x}")
}

/// Parses an id written by [`format_id`].
pub fn parse_id(text: &str) -> Option<EventId> {
    (text.len() == 32).then(|| u128::from_str_radix(text, 16).ok()).flatten()
}

/// What became of a pending write: `true` once durable and applied.
pub type Outcome = watch::Receiver<Option<bool>>;

enum State {
    Pending(Outcome),
    /// Applied; where its record is in the log, to rebuild the window from after a restart.
    Applied {
        at: LogPoint,
    },
}

/// What [`RecentEvents::claim`] says about each event of a batch.
pub enum Claim {
    /// New: write it, then call [`Reservation::applied`].
    Fresh,
    /// Already applied: acknowledge it again.
    Duplicate,
    /// Being written by another request, or earlier in this batch: wait for that outcome.
    InFlight(Outcome),
}

/// The ids applied recently. All methods take one short lock.
pub struct RecentEvents {
    window: Duration,
    capacity: usize,
    inner: Mutex<Window>,
}

#[derive(Default)]
struct Window {
    states: HashMap<EventId, State>,
    /// Applied ids in the order applied, with when.
    order: VecDeque<(EventId, Instant)>,
}

/// The ids a request claimed as fresh; resolves their waiters when finished (or dropped).
pub struct Reservation {
    recent: Arc<RecentEvents>,
    ids: Vec<EventId>,
    outcome: watch::Sender<Option<bool>>,
}

impl RecentEvents {
    pub fn new(window: Duration, capacity: usize) -> Self {
        Self { window, capacity, inner: Mutex::new(Window::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Claims each id of a batch (`None`: an event without id, always fresh). Fresh ids are
    /// pending until the returned reservation finishes.
    pub fn claim(self: &Arc<Self>, ids: &[Option<EventId>]) -> (Vec<Claim>, Reservation) {
        let (outcome, watcher) = watch::channel(None);
        let mut reserved = Vec::new();
        let mut window = self.lock();
        window.expire(self.window, self.capacity);
        let claims = ids
            .iter()
            .map(|id| {
                let Some(id) = *id else { return Claim::Fresh };
                match window.states.entry(id) {
                    Entry::Occupied(state) => match state.get() {
                        State::Applied { .. } => Claim::Duplicate,
                        State::Pending(outcome) => Claim::InFlight(outcome.clone()),
                    },
                    Entry::Vacant(slot) => {
                        slot.insert(State::Pending(watcher.clone()));
                        reserved.push(id);
                        Claim::Fresh
                    }
                }
            })
            .collect();
        (claims, Reservation { recent: self.clone(), ids: reserved, outcome })
    }

    /// Records ids applied while rebuilding the window from the log. Returns false for an id
    /// already in the window (a record logged twice: apply it once).
    pub fn replayed(&self, id: EventId, at: LogPoint) -> bool {
        let mut window = self.lock();
        if window.states.contains_key(&id) {
            return false;
        }
        window.states.insert(id, State::Applied { at });
        window.order.push_back((id, Instant::now()));
        window.expire(self.window, self.capacity);
        true
    }

    /// The offsets from which replaying the log rebuilds the current window: each partition's
    /// oldest record of an id in it (partitions without one are absent).
    pub fn oldest_offsets(&self) -> Offsets {
        let window = self.lock();
        let mut oldest = Offsets::new();
        for state in window.states.values() {
            if let State::Applied { at } = state {
                let offset = oldest.entry(at.partition).or_insert(at.offset);
                *offset = (*offset).min(at.offset);
            }
        }
        oldest
    }

    /// Ids held (pending or applied), for the metrics.
    pub fn len(&self) -> usize {
        self.lock().states.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Window {
    fn expire(&mut self, window: Duration, capacity: usize) {
        while let Some(&(id, at)) = self.order.front() {
            if at.elapsed() <= window && self.order.len() <= capacity {
                break;
            }
            self.order.pop_front();
            if matches!(self.states.get(&id), Some(State::Applied { .. })) {
                self.states.remove(&id);
            }
        }
    }
}

impl Reservation {
    /// Marks the reserved ids applied, each with where its record went, and wakes waiters.
    pub fn applied(mut self, points: &[(EventId, LogPoint)]) {
        self.ids.clear();
        let now = Instant::now();
        let mut window = self.recent.lock();
        for &(id, at) in points {
            window.states.insert(id, State::Applied { at });
            window.order.push_back((id, now));
        }
        window.expire(self.recent.window, self.recent.capacity);
        drop(window);
        let _ = self.outcome.send(Some(true));
    }
}

impl Drop for Reservation {
    /// Not applied (a failed write, or a cancelled request): forget the ids so that a retry is
    /// fresh, and tell waiters it failed.
    fn drop(&mut self) {
        if self.ids.is_empty() {
            let _ = self.outcome.send_if_modified(|o| {
                let unset = o.is_none();
                if unset {
                    *o = Some(false);
                }
                unset
            });
            return;
        }
        let mut window = self.recent.lock();
        for id in self.ids.drain(..) {
            if matches!(window.states.get(&id), Some(State::Pending(_))) {
                window.states.remove(&id);
            }
        }
        drop(window);
        let _ = self.outcome.send(Some(false));
    }
}

/// Waits for a pending write of another request; `true` when it was applied.
pub async fn outcome(mut pending: Outcome) -> bool {
    match pending.wait_for(Option::is_some).await {
        Ok(done) => done.unwrap_or(false),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offset: u64) -> LogPoint {
        LogPoint { partition: 0, offset }
    }

    fn event(request_id: &str, event_id: &str, at_ms: i64) -> reco_proto::Event {
        reco_proto::Event {
            user_id: "u".into(),
            item_id: "i".into(),
            r#type: reco_proto::EventType::Click as i32,
            request_id: request_id.into(),
            event_id: event_id.into(),
            at_ms,
            ..Default::default()
        }
    }

    #[test]
    fn ids_come_from_the_client_the_token_or_the_time() {
        let by_request = event_id(&event("r1", "", 0)).unwrap();
        assert_eq!(by_request, reco_proto::event_key("r1", "i", reco_proto::EventType::Click));
        assert_ne!(event_id(&event("r1", "e1", 0)), Some(by_request), "a client id wins");
        assert_eq!(event_id(&event("r1", "e1", 0)), event_id(&event("r2", "e1", 5)));
        assert_eq!(event_id(&event("", "", 7)), event_id(&event("", "", 7)));
        assert_ne!(event_id(&event("", "", 7)), event_id(&event("", "", 8)));
        assert_eq!(event_id(&event("", "", 0)), None, "nothing to tell a retry by");
        assert_eq!(parse_id(&format_id(by_request)), Some(by_request));
        assert_eq!(parse_id("xyz"), None);
    }

    #[tokio::test]
    async fn a_retry_waits_for_the_pending_write_and_then_is_a_duplicate() {
        let recent = Arc::new(RecentEvents::new(Duration::from_secs(60), 100));
        let (claims, first) = recent.claim(&[Some(1), Some(1), None]);
        assert!(matches!(claims[..], [Claim::Fresh, Claim::InFlight(_), Claim::Fresh]));
        let (claims, _second) = recent.claim(&[Some(1)]);
        let Claim::InFlight(pending) = claims.into_iter().next().unwrap() else { panic!("not in flight") };
        let waiter = tokio::spawn(outcome(pending));
        first.applied(&[(1, at(10))]);
        assert!(waiter.await.unwrap());
        let (claims, _third) = recent.claim(&[Some(1)]);
        assert!(matches!(claims[..], [Claim::Duplicate]));
        assert_eq!(recent.oldest_offsets(), Offsets::from([(0, 10)]));
    }

    #[tokio::test]
    async fn a_failed_write_frees_its_ids_and_fails_its_waiters() {
        let recent = Arc::new(RecentEvents::new(Duration::from_secs(60), 100));
        let (_, first) = recent.claim(&[Some(1)]);
        let (claims, _) = recent.claim(&[Some(1)]);
        let Claim::InFlight(pending) = claims.into_iter().next().unwrap() else { panic!("not in flight") };
        drop(first);
        assert!(!outcome(pending).await);
        let (claims, _) = recent.claim(&[Some(1)]);
        assert!(matches!(claims[..], [Claim::Fresh]), "the retry is fresh");
    }

    #[test]
    fn the_window_is_bounded_by_capacity_and_time() {
        let recent = RecentEvents::new(Duration::from_secs(60), 3);
        for id in 0..5 {
            assert!(recent.replayed(id, at(id as u64)));
        }
        assert!(!recent.replayed(4, at(9)), "already there");
        assert!(recent.replayed(9, LogPoint { partition: 3, offset: 7 }));
        assert_eq!(recent.len(), 3);
        assert_eq!(recent.oldest_offsets(), Offsets::from([(0, 3), (3, 7)]));
        let recent = Arc::new(RecentEvents::new(Duration::ZERO, 100));
        recent.replayed(1, at(0));
        std::thread::sleep(Duration::from_millis(2));
        let (claims, _) = recent.claim(&[Some(1)]);
        assert!(matches!(claims[..], [Claim::Fresh]), "expired");
    }
}

//! Validation of requests at the service boundary (pure). An ingest batch is accepted whole or
//! rejected whole, naming its first problem.

use std::collections::HashSet;

use reco_proto::{EventType, IdError};

use crate::model::{EventKind, FeatureEvent};
use crate::sink::LoggedEvent;

/// Most events accepted in one ingest request.
pub const MAX_BATCH: usize = 1000;
/// Most item ids in one GetItemCounters request.
pub const MAX_ITEM_IDS: usize = 1000;
/// Longest dwell accepted: 6 hours; more is a broken client, not attention.
pub const MAX_DWELL_MS: u32 = 6 * 60 * 60 * 1000;
/// How far in the future an event time may be (client clock skew).
pub const MAX_FUTURE_MS: i64 = 24 * 60 * 60 * 1000;

/// Why a request was rejected: `events[3].item_id: empty`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{field}: {reason}", index.map(|i| format!("events[{i}].")).unwrap_or_default())]
pub struct Rejection {
    /// The event's position in the batch; `None` for a problem with the request itself.
    pub index: Option<usize>,
    pub field: &'static str,
    pub reason: String,
}

/// Checks an id with the rule every service shares ([`reco_proto::check_id`]); an id that is not
/// `required` may be empty.
pub fn check_id(value: &str, required: bool) -> Result<(), String> {
    match reco_proto::check_id(value) {
        Err(IdError::Empty) if !required => Ok(()),
        checked => checked.map_err(|error| error.to_string()),
    }
}

/// What an ingest batch is checked against.
pub struct IngestContext<'a> {
    /// The service's pipeline; events naming another are misrouted.
    pub pipeline: &'a str,
    /// Known item ids; `None` accepts any item.
    pub catalog: Option<&'a HashSet<String>>,
    /// Server time, used for events without a time (`at_ms == 0`).
    pub now_ms: i64,
}

/// Validates a whole batch, returning each event as the store applies it and as the log keeps it.
pub fn validate_batch(
    events: &[reco_proto::Event],
    ctx: &IngestContext<'_>,
) -> Result<Vec<(FeatureEvent, LoggedEvent)>, Rejection> {
    if events.len() > MAX_BATCH {
        return Err(Rejection {
            index: None,
            field: "events",
            reason: format!("{} events, more than the limit of {MAX_BATCH}", events.len()),
        });
    }
    events
        .iter()
        .enumerate()
        .map(|(i, e)| validate_event(e, ctx).map_err(|(field, reason)| Rejection { index: Some(i), field, reason }))
        .collect()
}

fn validate_event(
    e: &reco_proto::Event,
    ctx: &IngestContext<'_>,
) -> Result<(FeatureEvent, LoggedEvent), (&'static str, String)> {
    check_id(&e.user_id, true).map_err(|r| ("user_id", r))?;
    check_id(&e.item_id, true).map_err(|r| ("item_id", r))?;
    if let Some(catalog) = ctx.catalog
        && !catalog.contains(&e.item_id)
    {
        return Err(("item_id", "unknown item".into()));
    }
    let kind = match EventType::try_from(e.r#type) {
        Err(_) => return Err(("type", format!("unknown event type {}", e.r#type))),
        Ok(t) => EventKind::from_proto(t).ok_or(("type", "must be specified".to_owned()))?,
    };
    if kind == EventKind::Dwell && e.dwell_ms == 0 {
        return Err(("dwell_ms", "required for dwell events".into()));
    }
    if e.dwell_ms > MAX_DWELL_MS {
        return Err(("dwell_ms", format!("{} ms, more than the limit of {MAX_DWELL_MS}", e.dwell_ms)));
    }
    let at_ms = match e.at_ms {
        0 => ctx.now_ms,
        t if t < 0 => return Err(("at_ms", "must not be negative".into())),
        t if t > ctx.now_ms.saturating_add(MAX_FUTURE_MS) => {
            return Err(("at_ms", "more than a day in the future".into()));
        }
        t => t,
    };
    check_id(&e.pipeline, false).map_err(|r| ("pipeline", r))?;
    if !e.pipeline.is_empty() && e.pipeline != ctx.pipeline {
        return Err(("pipeline", format!("event of pipeline {:?} sent to pipeline {:?}", e.pipeline, ctx.pipeline)));
    }
    check_id(&e.model_version, false).map_err(|r| ("model_version", r))?;
    check_id(&e.request_id, false).map_err(|r| ("request_id", r))?;
    let feature =
        FeatureEvent { user_id: e.user_id.clone(), item_id: e.item_id.clone(), kind, at_ms, dwell_ms: e.dwell_ms };
    let logged = LoggedEvent {
        user_id: e.user_id.clone(),
        item_id: e.item_id.clone(),
        kind,
        dwell_ms: e.dwell_ms,
        at_ms,
        pipeline: ctx.pipeline.to_owned(),
        model_version: e.model_version.clone(),
        request_id: e.request_id.clone(),
        event_id: None,
    };
    Ok((feature, logged))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn ok() -> reco_proto::Event {
        reco_proto::Event {
            user_id: "u".into(),
            item_id: "i".into(),
            r#type: EventType::Click as i32,
            ..Default::default()
        }
    }

    fn reject(e: reco_proto::Event, catalog: Option<&HashSet<String>>) -> Rejection {
        let ctx = IngestContext { pipeline: "p", catalog, now_ms: NOW };
        validate_batch(&[ok(), e], &ctx).unwrap_err()
    }

    #[test]
    fn accepted_events_get_the_server_time_and_pipeline() {
        let ctx = IngestContext { pipeline: "p", catalog: None, now_ms: NOW };
        let out = validate_batch(&[ok()], &ctx).unwrap();
        assert_eq!(out[0].0.at_ms, NOW);
        assert_eq!(out[0].1.pipeline, "p");
        assert_eq!(out[0].1.kind, EventKind::Click);
    }

    #[test]
    fn each_problem_is_named_with_index_and_field() {
        let cases: Vec<(reco_proto::Event, &str)> = vec![
            (reco_proto::Event { user_id: String::new(), ..ok() }, "user_id"),
            (reco_proto::Event { item_id: String::new(), ..ok() }, "item_id"),
            (reco_proto::Event { user_id: "x".repeat(reco_proto::MAX_ID_BYTES + 1), ..ok() }, "user_id"),
            (reco_proto::Event { item_id: "a\nb".into(), ..ok() }, "item_id"),
            (reco_proto::Event { r#type: 0, ..ok() }, "type"),
            (reco_proto::Event { r#type: 42, ..ok() }, "type"),
            (reco_proto::Event { r#type: EventType::Dwell as i32, dwell_ms: 0, ..ok() }, "dwell_ms"),
            (reco_proto::Event { dwell_ms: MAX_DWELL_MS + 1, ..ok() }, "dwell_ms"),
            (reco_proto::Event { at_ms: -5, ..ok() }, "at_ms"),
            (reco_proto::Event { at_ms: NOW + MAX_FUTURE_MS + 1, ..ok() }, "at_ms"),
            (reco_proto::Event { pipeline: "other".into(), ..ok() }, "pipeline"),
            (reco_proto::Event { request_id: "r".repeat(10_000), ..ok() }, "request_id"),
        ];
        for (event, field) in cases {
            let r = reject(event, None);
            assert_eq!((r.index, r.field), (Some(1), field), "{r}");
            assert!(r.to_string().starts_with(&format!("events[1].{field}: ")), "{r}");
        }
    }

    #[test]
    fn unknown_items_are_rejected_only_with_a_catalog() {
        let catalog: HashSet<String> = ["i".to_owned()].into();
        let r = reject(reco_proto::Event { item_id: "nope".into(), ..ok() }, Some(&catalog));
        assert_eq!(r.to_string(), "events[1].item_id: unknown item");
        let ctx = IngestContext { pipeline: "p", catalog: None, now_ms: NOW };
        assert!(validate_batch(&[reco_proto::Event { item_id: "nope".into(), ..ok() }], &ctx).is_ok());
    }

    #[test]
    fn oversized_batches_are_rejected_before_looking_at_events() {
        let ctx = IngestContext { pipeline: "p", catalog: None, now_ms: NOW };
        let r = validate_batch(&vec![reco_proto::Event::default(); MAX_BATCH + 1], &ctx).unwrap_err();
        assert_eq!((r.index, r.field), (None, "events"));
        assert!(validate_batch(&vec![ok(); MAX_BATCH], &ctx).is_ok());
    }
}

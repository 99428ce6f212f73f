//! The request types of both faces (HTTP/JSON and gRPC), their validation, and the errors the
//! clients see. Validation lives here once, so the two faces refuse the same inputs.

use std::collections::{BTreeMap, HashMap};

use reco_proto::{Context, EventType, IdError, MAX_ID_BYTES};
use serde::{Deserialize, Serialize};

/// Page size when the client names none.
pub const DEFAULT_PAGE_SIZE: usize = 20;
/// Largest page a client may ask for.
pub const MAX_PAGE_SIZE: usize = 100;
/// Most content types or attributes in a context.
pub const MAX_CONTEXT_ENTRIES: usize = 32;
/// Longest content type, attribute key or attribute value, in bytes.
pub const MAX_CONTEXT_STRING_LEN: usize = 256;

/// A recommend request that passed validation.
#[derive(Clone, Debug, PartialEq)]
pub struct RecommendQuery {
    pub user_id: String,
    pub page_size: usize,
    /// `now_ms` 0 means "now on the server".
    pub context: Context,
}

/// An event that passed validation (its token not yet verified).
#[derive(Clone, Debug, PartialEq)]
pub struct EventInput {
    pub token: String,
    pub user_id: String,
    pub item_id: String,
    pub event_type: EventType,
    pub dwell_ms: u32,
}

/// Why a request was refused before reaching any backend. Messages name the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("{field} must not be empty")]
    Empty { field: &'static str },
    #[error("{field} is {len} bytes, longer than the {max}-byte limit")]
    TooLong { field: &'static str, len: usize, max: usize },
    #[error("{field} contains control characters")]
    ControlCharacters { field: &'static str },
    #[error("page_size must be between 1 and {MAX_PAGE_SIZE}, got {0}")]
    PageSize(u64),
    #[error("{field} has {count} entries, more than the {MAX_CONTEXT_ENTRIES} allowed")]
    TooMany { field: &'static str, count: usize },
    #[error("context.now_ms must not be negative, got {0}")]
    NegativeTime(i64),
    #[error("type must be one of click, like, save, hide, dwell; got {0:?}")]
    EventType(String),
    #[error("dwell_ms is required for a dwell event")]
    MissingDwell,
}

/// The services' one id rule ([`reco_proto::check_id`]): an id the gateway accepts is never
/// refused by the services it calls, where the failure would be charged to a model version.
fn check_id(field: &'static str, value: &str) -> Result<(), InputError> {
    reco_proto::check_id(value).map_err(|error| match error {
        IdError::Empty => InputError::Empty { field },
        IdError::TooLong(len) => InputError::TooLong { field, len, max: MAX_ID_BYTES },
        IdError::ControlCharacters => InputError::ControlCharacters { field },
    })
}

fn check_len(field: &'static str, value: &str, max: usize) -> Result<(), InputError> {
    if value.len() > max {
        return Err(InputError::TooLong { field, len: value.len(), max });
    }
    Ok(())
}

fn check_context(context: &Context) -> Result<(), InputError> {
    if context.now_ms < 0 {
        return Err(InputError::NegativeTime(context.now_ms));
    }
    if context.content_types.len() > MAX_CONTEXT_ENTRIES {
        return Err(InputError::TooMany { field: "context.content_types", count: context.content_types.len() });
    }
    if context.attributes.len() > MAX_CONTEXT_ENTRIES {
        return Err(InputError::TooMany { field: "context.attributes", count: context.attributes.len() });
    }
    for content_type in &context.content_types {
        check_len("context.content_types[]", content_type, MAX_CONTEXT_STRING_LEN)?;
    }
    for (key, value) in &context.attributes {
        check_len("context.attributes key", key, MAX_CONTEXT_STRING_LEN)?;
        check_len("context.attributes value", value, MAX_CONTEXT_STRING_LEN)?;
    }
    Ok(())
}

impl RecommendQuery {
    /// `page_size` `None` means the default.
    pub fn new(user_id: String, page_size: Option<u64>, context: Context) -> Result<Self, InputError> {
        check_id("user_id", &user_id)?;
        let page_size = match page_size {
            None => DEFAULT_PAGE_SIZE,
            Some(size) => usize::try_from(size)
                .ok()
                .filter(|size| (1..=MAX_PAGE_SIZE).contains(size))
                .ok_or(InputError::PageSize(size))?,
        };
        check_context(&context)?;
        Ok(Self { user_id, page_size, context })
    }

    /// From the gRPC message, where page_size 0 means the default.
    pub fn from_proto(request: reco_proto::RecommendRequest) -> Result<Self, InputError> {
        let page_size = (request.page_size != 0).then_some(u64::from(request.page_size));
        Self::new(request.user_id, page_size, request.context.unwrap_or_default())
    }
}

impl EventInput {
    pub fn new(
        token: String,
        user_id: String,
        item_id: String,
        event_type: EventType,
        dwell_ms: Option<u32>,
    ) -> Result<Self, InputError> {
        check_id("user_id", &user_id)?;
        check_id("item_id", &item_id)?;
        if token.is_empty() {
            return Err(InputError::Empty { field: "token" });
        }
        let dwell_ms = match (event_type, dwell_ms) {
            (EventType::Dwell, None) => return Err(InputError::MissingDwell),
            (_, dwell) => dwell.unwrap_or(0),
        };
        Ok(Self { token, user_id, item_id, event_type, dwell_ms })
    }

    pub fn from_proto(request: reco_proto::RecordEventRequest) -> Result<Self, InputError> {
        let event_type = EventType::try_from(request.r#type)
            .ok()
            .filter(|t| *t != EventType::Unspecified)
            .ok_or_else(|| InputError::EventType(request.r#type.to_string()))?;
        let dwell = (event_type != EventType::Dwell || request.dwell_ms > 0).then_some(request.dwell_ms);
        Self::new(request.token, request.user_id, request.item_id, event_type, dwell)
    }
}

/// `POST /v1/recommend` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecommendBody {
    pub user_id: String,
    #[serde(default)]
    pub page_size: Option<u64>,
    #[serde(default)]
    pub context: Option<ContextBody>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextBody {
    #[serde(default)]
    pub now_ms: Option<i64>,
    #[serde(default)]
    pub content_types: Option<Vec<String>>,
    #[serde(default)]
    pub attributes: Option<BTreeMap<String, String>>,
}

impl RecommendBody {
    pub fn into_query(self) -> Result<RecommendQuery, InputError> {
        let context = self.context.unwrap_or_default();
        let context = Context {
            now_ms: context.now_ms.unwrap_or(0),
            content_types: context.content_types.unwrap_or_default(),
            attributes: context.attributes.unwrap_or_default().into_iter().collect::<HashMap<_, _>>(),
        };
        RecommendQuery::new(self.user_id, self.page_size, context)
    }
}

/// `POST /v1/events` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventBody {
    pub token: String,
    pub user_id: String,
    pub item_id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(default)]
    pub dwell_ms: Option<u32>,
}

impl EventBody {
    pub fn into_input(self) -> Result<EventInput, InputError> {
        let event_type = EventType::from_name(&self.event_type).ok_or(InputError::EventType(self.event_type))?;
        EventInput::new(self.token, self.user_id, self.item_id, event_type, self.dwell_ms)
    }
}

/// One item of a recommendation page.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Item {
    pub item_id: String,
    pub score: f32,
    pub source: String,
}

/// The answer to a recommend request (the HTTP body as is).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Recommendation {
    pub request_id: String,
    pub model_version: String,
    pub token: String,
    pub items: Vec<Item>,
    pub degraded: bool,
}

impl From<Recommendation> for reco_proto::RecommendResponse {
    fn from(r: Recommendation) -> Self {
        Self {
            request_id: r.request_id,
            model_version: r.model_version,
            token: r.token,
            items: r
                .items
                .into_iter()
                .map(|item| reco_proto::RecommendedItem {
                    item_id: item.item_id,
                    score: item.score,
                    source: item.source,
                })
                .collect(),
            degraded: r.degraded,
        }
    }
}

/// What became of an accepted event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Forwarded and counted.
    New,
    /// Its request, item and type were already recorded: accepted again, not counted again.
    Duplicate,
}

/// Why an event was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("{0}")]
    Input(#[from] InputError),
    #[error("invalid token: {0}")]
    Token(String),
    /// A valid token that does not cover the event: `reason` is `wrong_user` or `item_not_on_page`.
    #[error("{reason}: {message}")]
    NotCovered { reason: &'static str, message: String },
    /// The events service refused the event (unknown item, ...); its message is for the client.
    #[error("{0}")]
    Refused(String),
    /// Not durable: the client should retry.
    #[error("events service unavailable: {0}")]
    Unavailable(String),
    /// The deduplication store cannot tell whether the event is new: the client should retry.
    #[error("deduplication store unavailable: {0}")]
    DedupUnavailable(String),
}

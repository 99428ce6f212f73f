//! reco-proto: the gRPC contracts of the reco services (`reco.v1`).
//!
//! Every service implements the generated server trait (`retrieval_server::Retrieval`,
//! `ranking_server::Ranking`, ...). The gateway holds them as trait objects, so
//! `reco standalone` calls the implementations in-process and `reco serve` reaches
//! them over gRPC through the generated clients, with the same messages.

#![allow(clippy::doc_markdown, clippy::large_enum_variant)]

pub mod v1 {
    tonic::include_proto!("reco.v1");
}

pub use v1::*;

impl EventType {
    /// The JSON / counter name of an event type (`"click"`, ...); `None` for unspecified.
    pub fn name(self) -> Option<&'static str> {
        match self {
            EventType::Unspecified => None,
            EventType::Click => Some("click"),
            EventType::Like => Some("like"),
            EventType::Save => Some("save"),
            EventType::Hide => Some("hide"),
            EventType::Dwell => Some("dwell"),
        }
    }

    /// Parses the JSON name of an event type.
    pub fn from_name(name: &str) -> Option<Self> {
        [EventType::Click, EventType::Like, EventType::Save, EventType::Hide, EventType::Dwell]
            .into_iter()
            .find(|t| t.name() == Some(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names_round_trip() {
        for t in [EventType::Click, EventType::Like, EventType::Save, EventType::Hide, EventType::Dwell] {
            assert_eq!(EventType::from_name(t.name().unwrap()), Some(t));
        }
        assert_eq!(EventType::from_name("purchase"), None);
        assert_eq!(EventType::Unspecified.name(), None);
    }
}

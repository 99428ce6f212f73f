//! The training log in the trainer's input format: `interactions.csv` with the columns
//! `user_id,item_id,timestamp` (seconds), one row per positive event (click, like, save, dwell;
//! a hide says the opposite and is left out), each event once however often it was logged.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::dedup::parse_id;
use crate::sink::{LogEntries, LogEntry, LogReader, SinkError};

/// What [`export_interactions`] read and wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportSummary {
    /// Records read.
    pub records: u64,
    /// Rows written.
    pub interactions: u64,
    /// Records of an event already exported (the same id logged again after a failed apply).
    pub duplicates: u64,
    /// Hides, and events before `since_ms`.
    pub skipped: u64,
    /// Lines skipped as corrupt (each logged with its file and offset).
    pub corrupt: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Log(#[from] SinkError),
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// The file logs at `paths`, one after the other.
pub fn file_logs(paths: &[PathBuf]) -> Result<Vec<LogEntries>, SinkError> {
    paths.iter().map(|p| Ok(Box::new(LogReader::open(p, 0)?) as LogEntries)).collect()
}

/// Reads the logs in order and writes `out/interactions.csv` atomically. `since_ms` keeps only
/// the events at or after that time (the interactions logged since a version was trained).
pub fn export_interactions(
    logs: Vec<LogEntries>,
    out: &Path,
    since_ms: Option<i64>,
) -> Result<ExportSummary, ExportError> {
    let mut summary = ExportSummary::default();
    let mut seen = HashSet::new();
    let mut rows = csv::Writer::from_writer(Vec::new());
    let write_err = |source: std::io::Error| ExportError::Write { path: out.join("interactions.csv"), source };
    rows.write_record(["user_id", "item_id", "timestamp"]).map_err(|e| write_err(e.into()))?;
    for log in logs {
        for entry in log {
            let event = match entry? {
                LogEntry::Record { event, .. } => event,
                LogEntry::Corrupt { .. } => {
                    summary.corrupt += 1;
                    continue;
                }
            };
            summary.records += 1;
            if event.event_id.as_deref().and_then(parse_id).is_some_and(|id| !seen.insert(id)) {
                summary.duplicates += 1;
                continue;
            }
            if !event.kind.is_positive() || since_ms.is_some_and(|t| event.at_ms < t) {
                summary.skipped += 1;
                continue;
            }
            let seconds = (event.at_ms / 1000).to_string();
            rows.write_record([&event.user_id, &event.item_id, &seconds]).map_err(|e| write_err(e.into()))?;
            summary.interactions += 1;
        }
    }
    let bytes = rows.into_inner().map_err(|e| write_err(e.into_error()))?;
    std::fs::create_dir_all(out).map_err(write_err)?;
    reco_runtime::fs::save_atomic(&out.join("interactions.csv"), &bytes).map_err(write_err)?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EventKind;
    use crate::sink::LoggedEvent;

    fn logged(user: &str, item: &str, kind: EventKind, at_ms: i64, id: Option<u128>) -> String {
        let event = LoggedEvent {
            user_id: user.into(),
            item_id: item.into(),
            kind,
            dwell_ms: 0,
            at_ms,
            pipeline: "p".into(),
            model_version: "v1".into(),
            request_id: String::new(),
            event_id: id.map(crate::dedup::format_id),
        };
        serde_json::to_string(&event).unwrap() + "\n"
    }

    #[test]
    fn positive_events_once_each_with_hostile_ids_quoted_and_corrupt_lines_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
        std::fs::write(
            &a,
            [
                logged("1", "m1", EventKind::Click, 5_000, Some(1)),
                "garbage\n".into(),
                logged("1", "m2", EventKind::Hide, 6_000, Some(2)),
                logged("2", "odd,\"id\"", EventKind::Like, 7_000, None),
            ]
            .concat(),
        )
        .unwrap();
        std::fs::write(
            &b,
            [logged("1", "m1", EventKind::Click, 5_000, Some(1)), logged("3", "m3", EventKind::Save, 1_000, Some(3))]
                .concat(),
        )
        .unwrap();
        let out = dir.path().join("out");
        let summary = export_interactions(file_logs(&[a, b]).unwrap(), &out, Some(2_000)).unwrap();
        assert_eq!(
            summary,
            ExportSummary { records: 5, interactions: 2, duplicates: 1, skipped: 2, corrupt: 1 },
            "{summary:?}"
        );
        let csv = std::fs::read_to_string(out.join("interactions.csv")).unwrap();
        assert_eq!(csv, "user_id,item_id,timestamp\n1,m1,5\n2,\"odd,\"\"id\"\"\",7\n");
    }

    #[test]
    fn a_missing_log_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = file_logs(&[dir.path().join("nope.jsonl")]).err().unwrap();
        assert!(err.to_string().contains("nope.jsonl"), "{err}");
    }
}

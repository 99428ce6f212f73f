//! The training log: where accepted events go before they are acknowledged.
//!
//! [`FileSink`] appends JSON lines to one file with group commit: a single writer thread takes
//! every append queued while the previous fsync ran, writes them in one go and fsyncs once, then
//! answers all of them. An append returns only after its records are on disk, so no event is
//! acknowledged before it is durable, and concurrent requests share the cost of one fsync.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Instant;

use prometheus_client::metrics::histogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tonic::async_trait;

use crate::model::{EventKind, FeatureEvent};

/// One line of the training log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedEvent {
    pub user_id: String,
    pub item_id: String,
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub dwell_ms: u32,
    pub at_ms: i64,
    pub pipeline: String,
    pub model_version: String,
    pub request_id: String,
    /// The event's id ([`crate::dedup::event_id`]) in hex; absent for an event without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
}

impl LoggedEvent {
    /// The event as the feature store applies it.
    pub fn feature(&self) -> FeatureEvent {
        FeatureEvent {
            user_id: self.user_id.clone(),
            item_id: self.item_id.clone(),
            kind: self.kind,
            at_ms: self.at_ms,
            dwell_ms: self.dwell_ms,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("event log {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("event log {path}: write failed, events not durable: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("event log {path}: a failed write could not be rolled back; the sink refuses further appends")]
    Broken { path: PathBuf },
    #[error("kafka: {0}")]
    Kafka(String),
    #[error("cannot encode event: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("the event sink is closed")]
    Closed,
}

/// A partition of the log: the file log has one, 0; a Kafka topic several.
pub type Partition = i32;
/// Offsets by partition: bytes in the file log, records in Kafka.
pub type Offsets = BTreeMap<Partition, u64>;

/// Moves `partition`'s end in `offsets` up to `end`; an end never moves back.
pub fn raise_end(offsets: &mut Offsets, partition: Partition, end: u64) {
    let at = offsets.entry(partition).or_insert(0);
    *at = (*at).max(end);
}

/// Where one record is in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LogPoint {
    pub partition: Partition,
    pub offset: u64,
}

/// Reads a log from given offsets up to given ends (blocking I/O).
pub type LogEntries = Box<dyn Iterator<Item = Result<LogEntry, SinkError>> + Send>;

/// A failed append, with the records that reached the log all the same (a Kafka batch can fail
/// part-way; a failed file write is rolled back, so none there).
#[derive(Debug)]
pub struct AppendError {
    pub landed: Vec<LogPoint>,
    pub error: SinkError,
}

impl From<SinkError> for AppendError {
    fn from(error: SinkError) -> Self {
        Self { landed: Vec::new(), error }
    }
}

/// Where accepted events are appended for training. `append` returns once the events are
/// durable, with where each record went.
#[async_trait]
pub trait EventSink: Send + Sync {
    async fn append(&self, events: &[LoggedEvent]) -> Result<Vec<LogPoint>, AppendError>;

    /// The end of each partition: where its next record will go.
    fn ends(&self) -> Offsets;

    /// The records from `from` (a partition not named: its start) up to `to`, partition after
    /// partition.
    fn read(&self, from: &Offsets, to: &Offsets) -> Result<LogEntries, SinkError>;

    /// Told once the features up to `log` are durable (the consumer group's offsets follow).
    async fn covered(&self, _log: &Offsets) -> Result<(), SinkError> {
        Ok(())
    }

    /// Finishes pending appends and releases the log; later appends fail with [`SinkError::Closed`].
    async fn close(&self) -> Result<(), SinkError>;
}

/// Histograms the writer thread records into.
#[derive(Clone, Default)]
pub struct SinkMetrics {
    /// Records made durable by one fsync.
    pub batch_size: Option<Histogram>,
    pub fsync_seconds: Option<Histogram>,
}

struct Append {
    bytes: Vec<u8>,
    records: usize,
    done: oneshot::Sender<Result<Vec<LogPoint>, SinkError>>,
    /// Byte length of each record, in order.
    lengths: Vec<u64>,
}

/// Append-only JSON-lines log with batched fsync.
pub struct FileSink {
    path: PathBuf,
    tx: Mutex<Option<mpsc::Sender<Append>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// The durable length of the log.
    end: Arc<AtomicU64>,
}

impl FileSink {
    /// Opens (creating) the log at `path`. A torn last line left by a crash is cut off first, so
    /// new records never get glued to it.
    pub fn open(path: &Path, metrics: SinkMetrics) -> Result<Self, SinkError> {
        let io = |source| SinkError::Io { path: path.to_owned(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(path).map_err(io)?;
        let len = cut_torn_tail(&mut file, path).map_err(io)?;
        let (tx, rx) = mpsc::channel();
        let writer_path = path.to_owned();
        let end = Arc::new(AtomicU64::new(len));
        let writer_end = end.clone();
        let writer = std::thread::Builder::new()
            .name("event-log".into())
            .spawn(move || write_loop(file, &writer_end, &writer_path, &rx, &metrics))
            .map_err(io)?;
        Ok(Self { path: path.to_owned(), tx: Mutex::new(Some(tx)), writer: Mutex::new(Some(writer)), end })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Truncates the file after its last newline; returns the resulting length.
fn cut_torn_tail(file: &mut File, path: &Path) -> std::io::Result<u64> {
    let len = file.metadata()?.len();
    let mut end = len;
    let mut buf = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..usize::try_from(end - start).unwrap_or(0)];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(pos) = chunk.iter().rposition(|b| *b == b'\n') {
            end = start + pos as u64 + 1;
            break;
        }
        end = start;
    }
    if end < len {
        tracing::warn!(path = %path.display(), bytes = len - end, "event log ends with a torn record; cutting it off");
        file.set_len(end)?;
        file.sync_all()?;
    }
    Ok(end)
}

fn write_loop(mut file: File, end: &AtomicU64, path: &Path, rx: &mpsc::Receiver<Append>, metrics: &SinkMetrics) {
    let mut len = end.load(Ordering::Acquire);
    let mut broken = false;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        if broken {
            for a in batch {
                let _ = a.done.send(Err(SinkError::Broken { path: path.to_owned() }));
            }
            continue;
        }
        let bytes: Vec<u8> = batch.iter().flat_map(|a| a.bytes.iter().copied()).collect();
        let records: usize = batch.iter().map(|a| a.records).sum();
        let started = Instant::now();
        let result = file.write_all(&bytes).and_then(|()| file.sync_data());
        let reply = match result {
            Ok(()) => {
                if let Some(h) = &metrics.fsync_seconds {
                    h.observe(started.elapsed().as_secs_f64());
                }
                if let Some(h) = &metrics.batch_size {
                    h.observe(records as f64);
                }
                Ok(len)
            }
            Err(e) => {
                // Roll back a partial write so the log stays line-aligned for later appends.
                if let Err(rollback) = file.set_len(len).and_then(|()| file.sync_all()) {
                    tracing::error!(path = %path.display(), error = %rollback, "cannot roll back a failed event log write");
                    broken = true;
                }
                Err(e.to_string())
            }
        };
        let mut start = len;
        let points: Vec<Vec<LogPoint>> = batch
            .iter()
            .map(|a| {
                a.lengths
                    .iter()
                    .map(|n| {
                        let point = LogPoint { partition: 0, offset: start };
                        start += n;
                        point
                    })
                    .collect()
            })
            .collect();
        if reply.is_ok() {
            len = start;
            end.store(len, Ordering::Release);
        }
        for (a, points) in batch.into_iter().zip(points) {
            let r = reply.clone().map(|_| points).map_err(|reason| SinkError::Write { path: path.to_owned(), reason });
            let _ = a.done.send(r);
        }
    }
}

#[async_trait]
impl EventSink for FileSink {
    async fn append(&self, events: &[LoggedEvent]) -> Result<Vec<LogPoint>, AppendError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut bytes = Vec::with_capacity(events.len() * 160);
        let mut lengths = Vec::with_capacity(events.len());
        for e in events {
            let before = bytes.len();
            serde_json::to_writer(&mut bytes, e).map_err(SinkError::from)?;
            bytes.push(b'\n');
            lengths.push((bytes.len() - before) as u64);
        }
        let (done, wait) = oneshot::channel();
        {
            let tx = self.tx.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let tx = tx.as_ref().ok_or(SinkError::Closed)?;
            tx.send(Append { bytes, records: events.len(), done, lengths }).map_err(|_| SinkError::Closed)?;
        }
        Ok(wait.await.map_err(|_| SinkError::Closed)??)
    }

    fn ends(&self) -> Offsets {
        Offsets::from([(0, self.end.load(Ordering::Acquire))])
    }

    fn read(&self, from: &Offsets, to: &Offsets) -> Result<LogEntries, SinkError> {
        let end = to.get(&0).copied().unwrap_or(0);
        let reader = LogReader::open(&self.path, from.get(&0).copied().unwrap_or(0))?;
        Ok(Box::new(reader.take_while(move |entry| match entry {
            Ok(LogEntry::Record { offset, .. } | LogEntry::Corrupt { offset, .. }) => *offset < end,
            Err(_) => true,
        })))
    }

    async fn close(&self) -> Result<(), SinkError> {
        // Dropping the sender lets the writer finish the queue and exit.
        drop(self.tx.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take());
        let writer = self.writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(writer) = writer {
            tokio::task::spawn_blocking(move || writer.join())
                .await
                .map_err(|e| SinkError::Write { path: self.path.clone(), reason: e.to_string() })?
                .map_err(|_| SinkError::Write { path: self.path.clone(), reason: "writer thread panicked".into() })?;
        }
        Ok(())
    }
}

/// One entry of the log as [`LogReader`] finds it.
#[derive(Debug)]
pub enum LogEntry {
    /// A record of `partition` at `offset` (the file log: its first byte, its length `size`).
    Record { partition: Partition, offset: u64, size: u64, event: LoggedEvent },
    /// A record that cannot be read (disk corruption, a hand edit): skipped, never fatal, so a
    /// bad record cannot put the service into a crash loop.
    Corrupt { partition: Partition, offset: u64, reason: String },
}

/// Reads a training log from a byte offset, record by record (blocking I/O). A torn last line
/// (a crash mid-write, never acknowledged) ends the log.
pub struct LogReader {
    path: PathBuf,
    reader: BufReader<File>,
    offset: u64,
    line: Vec<u8>,
    /// Set when the log ended with a torn record.
    pub torn_tail: bool,
}

impl LogReader {
    pub fn open(path: &Path, from: u64) -> Result<Self, SinkError> {
        let io = |source| SinkError::Io { path: path.to_owned(), source };
        let mut file = File::open(path).map_err(io)?;
        file.seek(SeekFrom::Start(from)).map_err(io)?;
        Ok(Self {
            path: path.to_owned(),
            reader: BufReader::with_capacity(1 << 20, file),
            offset: from,
            line: Vec::new(),
            torn_tail: false,
        })
    }

    /// Where the next entry starts.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

impl Iterator for LogReader {
    type Item = Result<LogEntry, SinkError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.line.clear();
        match self.reader.read_until(b'\n', &mut self.line) {
            Err(source) => return Some(Err(SinkError::Io { path: self.path.clone(), source })),
            Ok(0) => return None,
            Ok(_) => {}
        }
        if self.line.last() != Some(&b'\n') {
            tracing::warn!(path = %self.path.display(), offset = self.offset, "event log ends with a torn record; skipping it");
            self.torn_tail = true;
            return None;
        }
        let offset = self.offset;
        self.offset += self.line.len() as u64;
        Some(Ok(match serde_json::from_slice(&self.line) {
            Ok(event) => LogEntry::Record { partition: 0, offset, size: self.offset - offset, event },
            Err(e) => {
                tracing::warn!(path = %self.path.display(), offset, error = %e, "skipping a corrupt event log record");
                LogEntry::Corrupt { partition: 0, offset, reason: e.to_string() }
            }
        }))
    }
}

/// What [`read_log`] found.
#[derive(Debug, Default)]
pub struct LogContents {
    pub events: Vec<LoggedEvent>,
    /// True when the last line was torn (a crash mid-write) and skipped; it was never acknowledged.
    pub torn_tail: bool,
    /// Byte offsets of the lines skipped as corrupt.
    pub corrupt: Vec<u64>,
}

/// Reads a whole training log back (see [`LogReader`]).
pub fn read_log(path: &Path) -> Result<LogContents, SinkError> {
    let mut reader = LogReader::open(path, 0)?;
    let mut out = LogContents::default();
    for entry in reader.by_ref() {
        match entry? {
            LogEntry::Record { event, .. } => out.events.push(event),
            LogEntry::Corrupt { offset, .. } => out.corrupt.push(offset),
        }
    }
    out.torn_tail = reader.torn_tail;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Arc;

    fn event(n: usize) -> LoggedEvent {
        LoggedEvent {
            user_id: format!("u{}", n % 7),
            item_id: format!("i{n}"),
            kind: EventKind::Click,
            dwell_ms: 0,
            at_ms: 1_700_000_000_000,
            pipeline: "p".into(),
            model_version: "v1".into(),
            request_id: format!("r{n}"),
            event_id: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_appends_are_all_durable_exactly_once_and_share_fsyncs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = crate::metrics::Metrics::register(&mut registry);
        let sink = Arc::new(FileSink::open(&path, metrics.sink()).unwrap());
        let mut tasks = Vec::new();
        for t in 0..32 {
            let sink = sink.clone();
            tasks.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                for b in 0..10 {
                    let batch: Vec<_> = (0..3).map(|k| event(t * 1000 + b * 10 + k)).collect();
                    sink.append(&batch).await.unwrap();
                    acked.extend(batch.into_iter().map(|e| e.request_id));
                }
                acked
            }));
        }
        let mut acked = Vec::new();
        for t in tasks {
            acked.extend(t.await.unwrap());
        }
        sink.close().await.unwrap();
        assert!(sink.append(&[event(1)]).await.is_err(), "append after close must fail");

        let contents = read_log(&path).unwrap();
        assert!(!contents.torn_tail);
        let mut seen: HashMap<String, usize> = HashMap::new();
        for e in &contents.events {
            *seen.entry(e.request_id.clone()).or_default() += 1;
        }
        assert_eq!(contents.events.len(), acked.len());
        for id in &acked {
            assert_eq!(seen.get(id), Some(&1), "{id} must be in the log exactly once");
        }
        // Every record went through exactly one fsync batch; with group commit there are at most
        // as many fsyncs as appends (320) and usually far fewer.
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let metric = |name: &str| -> f64 {
            text.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse().ok()).unwrap()
        };
        let (fsyncs, records) = (
            metric("reco_features_event_log_fsync_batch_records_count "),
            metric("reco_features_event_log_fsync_batch_records_sum "),
        );
        assert_eq!(records, 960.0);
        assert!((1.0..=320.0).contains(&fsyncs), "fsyncs: {fsyncs}");
        println!("960 records in 320 appends took {fsyncs} fsyncs");
    }

    #[tokio::test]
    async fn a_torn_last_line_is_skipped_on_read_and_cut_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let sink = FileSink::open(&path, SinkMetrics::default()).unwrap();
        sink.append(&[event(1), event(2)]).await.unwrap();
        sink.close().await.unwrap();
        // Crash mid-write: half a record, no newline.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"user_id":"u9","item_id":"i"#).unwrap();
        drop(f);

        let contents = read_log(&path).unwrap();
        assert!(contents.torn_tail);
        assert_eq!(contents.events, [event(1), event(2)]);

        let sink = FileSink::open(&path, SinkMetrics::default()).unwrap();
        sink.append(&[event(3)]).await.unwrap();
        sink.close().await.unwrap();
        let contents = read_log(&path).unwrap();
        assert!(!contents.torn_tail);
        assert_eq!(contents.events, [event(1), event(2), event(3)]);
    }

    #[test]
    fn a_bad_line_in_the_middle_is_skipped_and_named_by_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let good = serde_json::to_string(&event(1)).unwrap();
        std::fs::write(&path, format!("{good}\nnot json\n{good}\n")).unwrap();
        let contents = read_log(&path).unwrap();
        assert_eq!(contents.events, [event(1), event(1)]);
        assert_eq!(contents.corrupt, [good.len() as u64 + 1]);
        let entries: Vec<_> = LogReader::open(&path, good.len() as u64 + 1).unwrap().map(Result::unwrap).collect();
        assert!(matches!(entries[..], [LogEntry::Corrupt { .. }, LogEntry::Record { .. }]), "{entries:?}");
    }

    #[test]
    fn a_log_of_only_a_torn_record_is_cut_to_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, b"{\"user_id\":").unwrap();
        let mut f = OpenOptions::new().read(true).append(true).open(&path).unwrap();
        assert_eq!(cut_torn_tail(&mut f, &path).unwrap(), 0);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }
}

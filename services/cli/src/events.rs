//! `reco events export`: the features service's event log as the trainer's input.

use std::path::PathBuf;

/// Flags of `reco events export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Event logs to read, in order (`<data-dir>/<pipeline>/events.jsonl` of each features pod).
    #[arg(long = "log", num_args = 1.., required_unless_present = "kafka_topic", conflicts_with = "kafka_topic")]
    pub logs: Vec<PathBuf>,
    /// Kafka bootstrap servers of the topic to read (with --kafka-topic) instead of files.
    #[arg(long, requires = "kafka_topic")]
    pub kafka_brokers: Option<String>,
    /// The Kafka topic of the training log (`spec.events.kafkaTopic`), read whole.
    #[arg(long, requires = "kafka_brokers")]
    pub kafka_topic: Option<String>,
    /// Directory to write `interactions.csv` (user_id,item_id,timestamp) into.
    #[arg(long)]
    pub out: PathBuf,
    /// Keep only events at or after this Unix time in milliseconds (those logged since a
    /// version was trained).
    #[arg(long)]
    pub since_ms: Option<i64>,
}

/// Commands on the event log.
#[derive(Debug, clap::Subcommand)]
pub enum EventsCommand {
    /// Write the positive events of event logs (click, like, save, dwell; not hide) as
    /// `interactions.csv` for `reco train`, each event once (by id), corrupt lines skipped.
    Export(ExportArgs),
}

/// The event logs `sources` name, in order: files, or one `kafka://BROKER[,BROKER...]/TOPIC`.
pub fn open_logs(sources: &[String]) -> anyhow::Result<Vec<reco_features::sink::LogEntries>> {
    if let [source] = sources
        && let Some(topic) = kafka_topic(source)
    {
        let (brokers, topic) = topic?;
        return Ok(vec![read_topic(brokers, topic)?]);
    }
    if let Some(kafka) = sources.iter().find(|s| s.starts_with("kafka://")) {
        anyhow::bail!("{kafka}: a Kafka topic is read alone, not with other logs");
    }
    let paths: Vec<PathBuf> = sources.iter().map(PathBuf::from).collect();
    Ok(reco_features::export::file_logs(&paths)?)
}

/// The brokers and topic of a `kafka://BROKER[,BROKER...]/TOPIC` source; `None` for a file. Pure.
fn kafka_topic(source: &str) -> Option<anyhow::Result<(&str, &str)>> {
    let rest = source.strip_prefix("kafka://")?;
    Some(
        rest.split_once('/')
            .filter(|(brokers, topic)| !brokers.is_empty() && !topic.is_empty() && !topic.contains('/'))
            .ok_or_else(|| anyhow::anyhow!("{source}: expected kafka://BROKER[,BROKER...]/TOPIC")),
    )
}

fn read_topic(brokers: &str, topic: &str) -> anyhow::Result<reco_features::sink::LogEntries> {
    let topic = reco_features::kafka::KafkaTopic {
        brokers: brokers.to_owned(),
        topic: topic.to_owned(),
        group: "reco-events-export".into(),
    };
    Ok(reco_features::kafka::read_topic(&topic)?)
}

/// Writes `out/interactions.csv` from `logs` (events at or after `since_ms`) and logs what it read.
pub fn export(
    logs: Vec<reco_features::sink::LogEntries>,
    out: &std::path::Path,
    since_ms: Option<i64>,
) -> anyhow::Result<reco_features::export::ExportSummary> {
    let summary = reco_features::export::export_interactions(logs, out, since_ms)?;
    tracing::info!(
        records = summary.records,
        interactions = summary.interactions,
        duplicates = summary.duplicates,
        skipped = summary.skipped,
        corrupt = summary.corrupt,
        since_ms,
        out = %out.join("interactions.csv").display(),
        "exported the event log"
    );
    Ok(summary)
}

pub fn run(command: EventsCommand) -> anyhow::Result<()> {
    match command {
        EventsCommand::Export(args) => {
            let logs = match (&args.kafka_brokers, &args.kafka_topic) {
                (Some(brokers), Some(topic)) => vec![read_topic(brokers, topic)?],
                _ => reco_features::export::file_logs(&args.logs)?,
            };
            export(logs, &args.out, args.since_ms)?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(sources: &[&str]) -> String {
        let sources: Vec<String> = sources.iter().map(|s| s.to_string()).collect();
        open_logs(&sources).err().expect("refused").to_string()
    }

    #[test]
    fn a_kafka_source_needs_brokers_and_a_topic_and_comes_alone() {
        let parsed = kafka_topic("kafka://b-0:9092,b-1:9092/reco-events").unwrap().unwrap();
        assert_eq!(parsed, ("b-0:9092,b-1:9092", "reco-events"));
        assert!(kafka_topic("/var/lib/reco/events.jsonl").is_none(), "a path is a file log");
        for bad in ["kafka://", "kafka://broker:9092", "kafka://broker:9092/", "kafka:///topic", "kafka://b:9092/t/x"] {
            assert!(error(&[bad]).contains("expected kafka://BROKER[,BROKER...]/TOPIC"), "{bad}");
        }
        let mixed = error(&["events.jsonl", "kafka://broker:9092/reco-events"]);
        assert!(mixed.contains("read alone"), "{mixed}");
        let missing = error(&["/nonexistent/events.jsonl"]);
        assert!(missing.contains("/nonexistent/events.jsonl"), "{missing}");
    }
}

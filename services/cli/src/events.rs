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

pub fn run(command: EventsCommand) -> anyhow::Result<()> {
    match command {
        EventsCommand::Export(args) => {
            let logs = match (&args.kafka_brokers, &args.kafka_topic) {
                (Some(brokers), Some(topic)) => {
                    let topic = reco_features::kafka::KafkaTopic {
                        brokers: brokers.clone(),
                        topic: topic.clone(),
                        group: "reco-events-export".into(),
                    };
                    vec![reco_features::kafka::read_topic(&topic)?]
                }
                _ => reco_features::export::file_logs(&args.logs)?,
            };
            let summary = reco_features::export::export_interactions(logs, &args.out, args.since_ms)?;
            tracing::info!(
                records = summary.records,
                interactions = summary.interactions,
                duplicates = summary.duplicates,
                skipped = summary.skipped,
                corrupt = summary.corrupt,
                out = %args.out.join("interactions.csv").display(),
                "exported the event log"
            );
            Ok(())
        }
    }
}

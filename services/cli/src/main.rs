//! `reco`: one binary for every reco process: training (`reco train`,
//! hyper-parameter search with `reco tune`), each
//! serving service (`reco serve ...`), all of them in one process
//! (`reco standalone`), the local end-to-end scenario (`reco demo`), a
//! load generator (`reco loadgen`), a catalogue grower to load-test at
//! scale (`reco synthetic-catalog`) and the event log's export to training
//! data (`reco events export`).

mod catalog;
mod demo;
mod events;
mod loadgen;
mod seed;
mod serve;
mod standalone;
mod train;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "reco", version, about = "reco: recommendation platform for Kubernetes", propagate_version = true)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = reco_runtime::logging::LogFormat::Text, env = "RECO_LOG_FORMAT")]
    log_format: reco_runtime::logging::LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate data, train the two-tower, item-to-item and ranking models,
    /// evaluate them against most-popular and write the model artifacts and
    /// a ModelVersion manifest.
    Train(Box<train::TrainArgs>),
    /// Search the two-tower and ranker hyper-parameters on the validation
    /// split (random search, the current defaults as trial 0; test is not
    /// read) and write tuning.json.
    Tune(Box<train::TuneArgs>),
    /// Run one service (as the operator deploys them).
    #[command(subcommand)]
    Serve(serve::Service),
    /// Run every service in one process on the embedded defaults, serving
    /// the model versions found in --models.
    #[command(mut_arg("pipeline", |a| a.required(false).default_value("standalone")))]
    Standalone(Box<standalone::StandaloneArgs>),
    /// Drive a gateway's `POST /v1/recommend` in a closed or open loop and
    /// report latency percentiles and throughput.
    Loadgen(loadgen::LoadgenArgs),
    /// Grow a trained version to --items items with synthetic ones (random
    /// content, embedded by the item tower) to load-test serving at the
    /// size of a large catalogue.
    SyntheticCatalog(catalog::SyntheticCatalogArgs),
    /// Run the whole product on one machine: train v1, v2 and a broken v3,
    /// serve them with `reco standalone`, replay ml-100k users against it and
    /// roll v2 out (promoted) and then v3 (rolled back) with the operator's
    /// rollout engine; writes report.json and ctr.png.
    Demo(Box<demo::DemoArgs>),
    /// Work with the features service's event log (the training log).
    #[command(subcommand)]
    Events(events::EventsCommand),
}

/// The async runtime of the serving commands.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    reco_runtime::tls::install_crypto_provider();
    reco_runtime::logging::init(cli.log_format);
    let result = match cli.command {
        Command::Train(args) => train::run(*args),
        Command::Tune(args) => train::tune(*args),
        Command::Demo(args) => demo::run(*args),
        Command::SyntheticCatalog(args) => catalog::run(args),
        Command::Events(command) => events::run(command),
        Command::Serve(service) => runtime().and_then(|rt| rt.block_on(serve::run(service))),
        Command::Standalone(args) => runtime().and_then(|rt| rt.block_on(standalone::run(*args))),
        Command::Loadgen(args) => runtime().and_then(|rt| {
            let report = rt.block_on(loadgen::run(args))?;
            println!("{}", loadgen::summary(&report));
            Ok(())
        }),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn train_flags_parse() {
        let cli =
            Cli::try_parse_from(["reco", "train", "--data", "ml-100k", "--out", "/tmp/x", "--seed", "3"]).unwrap();
        let Command::Train(a) = cli.command else { panic!("not train: {:?}", cli.command) };
        assert_eq!(a.seed, 3);
        assert_eq!(a.run.data, "ml-100k");
        let cli =
            Cli::try_parse_from(["reco", "tune", "--data", "ml-100k", "--out", "/tmp/x", "--threads", "1"]).unwrap();
        let Command::Tune(t) = cli.command else { panic!("not tune: {:?}", cli.command) };
        assert_eq!((t.run.data.as_str(), t.run.threads, t.trials), ("ml-100k", Some(1), 16));
    }

    #[test]
    fn events_export_reads_files_or_a_topic_never_both_or_neither() {
        let cli =
            Cli::try_parse_from(["reco", "events", "export", "--log", "a.jsonl", "b.jsonl", "--out", "d"]).unwrap();
        let Command::Events(events::EventsCommand::Export(a)) = cli.command else { panic!("not events export") };
        assert_eq!(a.logs.len(), 2);
        let topic = ["reco", "events", "export", "--kafka-brokers", "k:9092", "--kafka-topic", "t", "--out", "d"];
        assert!(Cli::try_parse_from(topic).is_ok());
        for (flags, names) in [
            (&["--out", "d"][..], "--log"),
            (&["--log", "a", "--kafka-brokers", "k", "--kafka-topic", "t", "--out", "d"], "--kafka-topic"),
            (&["--kafka-topic", "t", "--out", "d"], "--kafka-brokers"),
            (&["--log", "a"], "--out"),
        ] {
            let err = Cli::try_parse_from([&["reco", "events", "export"][..], flags].concat()).unwrap_err().to_string();
            assert!(err.contains(names), "{flags:?}: {err}");
        }
    }

    #[test]
    fn cluster_demo_flags_need_the_cluster_flag_and_features_seed_flags_their_uri() {
        let cli = Cli::try_parse_from(["reco", "demo"]).unwrap();
        let Command::Demo(a) = cli.command else { panic!("not demo") };
        assert!(!a.cluster.cluster, "the standalone demo by default");
        let cli = Cli::try_parse_from([
            "reco",
            "demo",
            "--cluster",
            "--store",
            "s3://b",
            "--prometheus-url",
            "http://10.0.0.1:9090",
        ])
        .unwrap();
        let Command::Demo(a) = cli.command else { panic!("not demo") };
        assert_eq!((a.cluster.namespace.as_str(), a.cluster.gateway_node_port), ("reco-demo", 30080));
        for flags in [&["--store", "s3://b"][..], &["--gateway-node-port", "30000"]] {
            let err = Cli::try_parse_from([&["reco", "demo"][..], flags].concat()).unwrap_err().to_string();
            assert!(err.contains("--cluster"), "{flags:?}: {err}");
        }
        let err = Cli::try_parse_from(["reco", "serve", "features", "--pipeline", "p", "--seed-holdout", "0.1"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--seed-from"), "{err}");
    }

    #[test]
    fn synthetic_catalog_refuses_an_empty_batch() {
        let err = Cli::try_parse_from(["reco", "synthetic-catalog", "--from", "a", "--out", "b", "--batch", "0"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--batch"), "{err}");
    }

    #[test]
    fn train_refuses_counts_that_would_train_nothing_before_reading_data() {
        for (flag, message) in [
            ("--epochs=0", "--epochs must be at least 1"),
            ("--patience=0", "--patience must be at least 1"),
            ("--ranker-epochs=0", "--ranker-epochs must be at least 1"),
            ("--batch-size=1", "--batch-size must be at least 2"),
        ] {
            let cli =
                Cli::try_parse_from(["reco", "train", "--data", "/nonexistent", "--out", "/tmp/x", flag]).unwrap();
            let Command::Train(a) = cli.command else { panic!("not train") };
            let err = train::run(*a).unwrap_err().to_string();
            assert!(err.contains(message), "{flag}: {err}");
        }
    }
}

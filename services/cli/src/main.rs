//! `reco`: one binary for every reco process. For now it trains models
//! (`reco train`); serving, `standalone` and `demo` join as subcommands.

mod logging;
mod train;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "reco", version, about = "reco: recommendation platform for Kubernetes", propagate_version = true)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = logging::LogFormat::Text, env = "RECO_LOG_FORMAT")]
    log_format: logging::LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate data, train the two-tower, item-to-item and ranking models,
    /// evaluate them against most-popular and write the model artifacts and
    /// a ModelVersion manifest.
    Train(Box<train::TrainArgs>),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let result = match cli.command {
        Command::Train(args) => train::run(*args),
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
        let Command::Train(a) = cli.command;
        assert_eq!(a.seed, 3);
        assert_eq!(a.data, "ml-100k");
    }
}

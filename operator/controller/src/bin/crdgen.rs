//! Writes the reco CRDs, generated from the Rust types, to a folder
//! (`crds/` by default) or prints them with `--stdout`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// Generate the reco CustomResourceDefinitions from the Rust types.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Folder to write one YAML file per CRD into.
    #[arg(long, default_value = "crds")]
    out: PathBuf,
    /// Print all CRDs to standard output instead of writing files.
    #[arg(long)]
    stdout: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    for (name, yaml) in reco_operator::crds::crd_files() {
        if args.stdout {
            print!("{yaml}");
        } else {
            std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
            let path = args.out.join(name);
            std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}

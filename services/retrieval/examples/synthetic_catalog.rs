//! Grows a trained version's catalogue to `--items` items for load tests at scale.
//!
//! `cargo run --release -p reco-retrieval --example synthetic_catalog -- --from DIR --out DIR --items 1000000`
//!
//! The items the model was trained on are kept; the new ones get random genres (1 to 3 of the model's genre
//! vocabulary), a year in the trained range and a title of three random words, and their 64-dim embeddings are
//! what retrieval computes for any item added after training: the item tower over content only
//! (`encoder::encode_new_items`). Every other file of the version is linked (or copied) unchanged, so
//! `reco standalone --models` serves the result like any version `reco train` wrote.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use reco_model::artifacts::{EMBEDDINGS_TENSOR, VersionArtifacts, files};
use reco_model::features::Item;
use reco_retrieval::encoder::encode_new_items;
use tch::Tensor;

#[derive(Parser, Debug)]
#[command(about = "Extend a trained model version with synthetic items (content embeddings) up to --items")]
struct Args {
    /// A version directory written by `reco train`.
    #[arg(long)]
    from: PathBuf,
    /// Where the extended version is written (created; must not exist).
    #[arg(long)]
    out: PathBuf,
    /// Items in the extended catalogue, trained ones included.
    #[arg(long, default_value_t = 1_000_000)]
    items: usize,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Items per item-tower forward pass.
    #[arg(long, default_value_t = 8192)]
    batch: usize,
}

/// Words of synthetic titles: enough distinct tokens to spread them over the model's title hash buckets.
const WORDS: usize = 20_000;

fn synthetic_item(rng: &mut StdRng, row: usize, genres: &[String], years: (i32, i32)) -> Item {
    let n_genres = rng.random_range(1..=3usize.min(genres.len()));
    let mut picked: Vec<String> = (0..n_genres).map(|_| genres[rng.random_range(0..genres.len())].clone()).collect();
    picked.sort();
    picked.dedup();
    let title = (0..3).map(|_| format!("w{}", rng.random_range(0..WORDS))).collect::<Vec<_>>().join(" ");
    Item {
        id: format!("synthetic-{row}"),
        title: Some(title),
        year: Some(rng.random_range(years.0..=years.1)),
        genres: picked,
    }
}

/// Hard-links (or copies) every file of `from` into `out` except those the extension rewrites.
fn link_unchanged(from: &Path, out: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        let rewritten = [files::ITEMS, files::ITEM_IDS, files::ITEM_EMBEDDINGS];
        if !entry.file_type()?.is_file() || rewritten.iter().any(|f| name == *f) {
            continue;
        }
        let target = out.join(&name);
        if std::fs::hard_link(entry.path(), &target).is_err() {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut writer = BufWriter::new(std::fs::File::create(path)?);
    serde_json::to_writer(&mut writer, value)?;
    Ok(writer.flush()?)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.batch > 0, "--batch must be at least 1");
    anyhow::ensure!(!args.out.exists(), "--out {} exists; pick a new directory", args.out.display());
    let artifacts = VersionArtifacts::load(&args.from)?;
    let existing = artifacts.items.len();
    anyhow::ensure!(args.items >= existing, "--items {} is fewer than the {existing} items of --from", args.items);
    let genres: Vec<String> = artifacts.features.genres.values.clone();
    anyhow::ensure!(!genres.is_empty(), "the version has no genre vocabulary to draw from");
    let trained_years = artifacts.items.iter().filter_map(|i| i.year);
    let years = trained_years.fold((i32::MAX, i32::MIN), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let years = if years.0 > years.1 { (1990, 2000) } else { years };

    let mut rng = StdRng::seed_from_u64(args.seed);
    let new_items: Vec<Item> =
        (existing..args.items).map(|row| synthetic_item(&mut rng, row, &genres, years)).collect();
    let progress = ProgressBar::new(new_items.len() as u64)
        .with_style(ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} items, {per_sec}, ETA {eta}")?);
    progress.set_message("item tower");
    let mut embeddings = vec![artifacts.item_embeddings.shallow_clone()];
    for chunk in new_items.chunks(args.batch) {
        let rows = encode_new_items(&artifacts, &artifacts.features, chunk)?;
        embeddings.push(Tensor::from_slice(&rows.concat()).view([chunk.len() as i64, -1]));
        progress.inc(chunk.len() as u64);
    }
    progress.finish();
    let embeddings = Tensor::cat(&embeddings, 0).contiguous();

    std::fs::create_dir_all(&args.out)?;
    link_unchanged(&args.from, &args.out)?;
    Tensor::write_safetensors(&[(EMBEDDINGS_TENSOR, &embeddings)], args.out.join(files::ITEM_EMBEDDINGS))?;
    let all_items: Vec<&Item> = artifacts.items.iter().chain(&new_items).collect();
    write_json(&args.out.join(files::ITEMS), &all_items)?;
    write_json(&args.out.join(files::ITEM_IDS), &all_items.iter().map(|i| &i.id).collect::<Vec<_>>())?;
    println!(
        "{}: {} items ({existing} trained, {} synthetic), embeddings {:?}",
        args.out.display(),
        args.items,
        new_items.len(),
        embeddings.size()
    );
    Ok(())
}

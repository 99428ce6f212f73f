//! `reco synthetic-catalog`: grows a trained version's catalogue to
//! `--items` items, to load-test serving at the size of a real catalogue
//! before one exists.
//!
//! The items the model was trained on are kept; the new ones get random
//! genres (1 to 3 of the model's genre vocabulary), a year in the trained
//! range and a title of three random words, and their embeddings are what
//! retrieval computes for any item added after training: the item tower
//! over content only (`encoder::encode_new_items`). Every other file of the
//! version is linked (or copied) unchanged, so `reco standalone --models`
//! serves the result like any version `reco train` wrote.

use std::path::{Path, PathBuf};

use anyhow::{Context, ensure};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use reco_model::artifacts::{EMBEDDINGS_TENSOR, VersionArtifacts, files};
use reco_model::features::Item;
use reco_retrieval::encoder::encode_new_items;
use reco_trainer::artifacts::write_json;
use tch::Tensor;

#[derive(clap::Args, Debug)]
pub struct SyntheticCatalogArgs {
    /// A version directory written by `reco train`.
    #[arg(long)]
    from: PathBuf,
    /// Where the grown version is written (created; must not exist).
    #[arg(long)]
    out: PathBuf,
    /// Items in the grown catalogue, the trained ones included.
    #[arg(long, default_value_t = 1_000_000)]
    items: usize,
    /// Seed of the synthetic items' genres, years and titles.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Items per item-tower forward pass.
    #[arg(long, default_value_t = 8192, value_parser = clap::value_parser!(u32).range(1..))]
    batch: u32,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
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

/// Hard-links (or copies) every file of `from` into `out` except those the growth rewrites
/// (and the manifest and ModelVersion, which name the old files).
fn link_unchanged(from: &Path, out: &Path) -> anyhow::Result<()> {
    let rewritten = [files::ITEMS, files::ITEM_IDS, files::ITEM_EMBEDDINGS, files::MANIFEST, files::MODEL_VERSION];
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if !entry.file_type()?.is_file() || rewritten.iter().any(|f| name == *f) {
            continue;
        }
        let target = out.join(&name);
        if std::fs::hard_link(entry.path(), &target).is_err() {
            std::fs::copy(entry.path(), &target).with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

pub fn run(args: SyntheticCatalogArgs) -> anyhow::Result<()> {
    ensure!(!args.out.exists(), "--out {} exists; pick a new directory", args.out.display());
    let artifacts = VersionArtifacts::load(&args.from)?;
    let existing = artifacts.items.len();
    ensure!(args.items >= existing, "--items {} is fewer than the {existing} items of --from", args.items);
    let genres = &artifacts.features.genres.values;
    ensure!(!genres.is_empty(), "the version has no genre vocabulary to draw synthetic items from");
    let trained_years = artifacts.items.iter().filter_map(|i| i.year);
    let years = trained_years.fold((i32::MAX, i32::MIN), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let years = if years.0 > years.1 { (1990, 2000) } else { years };

    let mut rng = StdRng::seed_from_u64(args.seed);
    let new_items: Vec<Item> = (existing..args.items).map(|row| synthetic_item(&mut rng, row, genres, years)).collect();
    let progress = ProgressBar::new(new_items.len() as u64)
        .with_style(ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} items, {per_sec}, ETA {eta}")?)
        .with_message("item tower");
    if args.quiet {
        progress.set_draw_target(ProgressDrawTarget::hidden());
    }
    let mut embeddings = vec![artifacts.item_embeddings.shallow_clone()];
    for chunk in new_items.chunks(args.batch as usize) {
        let rows = encode_new_items(&artifacts, &artifacts.features, chunk)?;
        embeddings.push(Tensor::from_slice(&rows.concat()).view([chunk.len() as i64, -1]));
        progress.inc(chunk.len() as u64);
    }
    progress.finish_and_clear();
    let embeddings = Tensor::cat(&embeddings, 0).contiguous();

    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    link_unchanged(&args.from, &args.out)?;
    Tensor::write_safetensors(&[(EMBEDDINGS_TENSOR, &embeddings)], args.out.join(files::ITEM_EMBEDDINGS))?;
    let all_items: Vec<&Item> = artifacts.items.iter().chain(&new_items).collect();
    write_json(&args.out, files::ITEMS, &all_items)?;
    write_json(&args.out, files::ITEM_IDS, &all_items.iter().map(|i| &i.id).collect::<Vec<_>>())?;
    let digest = reco_artifacts::manifest::write_manifest(&args.out)?;
    println!(
        "{}: {} items ({existing} trained, {} synthetic), embeddings {:?}, digest {digest}",
        args.out.display(),
        args.items,
        new_items.len(),
        embeddings.size()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use reco_model::artifacts::write_random_version;

    fn trained(dir: &Path) -> Vec<Item> {
        let items: Vec<Item> = (0..30)
            .map(|i| Item {
                id: format!("m{i}"),
                title: Some(format!("Movie {i}")),
                year: Some(1990 + i % 8),
                genres: vec![["Drama", "Comedy", "Action"][i as usize % 3].to_owned()],
            })
            .collect();
        write_random_version(dir, &items, &["u1".to_owned(), "u2".to_owned()], 5).unwrap();
        items
    }

    fn args(from: &Path, out: &Path, items: usize) -> SyntheticCatalogArgs {
        SyntheticCatalogArgs { from: from.into(), out: out.into(), items, seed: 7, batch: 16, quiet: true }
    }

    #[test]
    fn grows_a_version_that_loads_with_the_trained_items_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let (from, out) = (dir.path().join("v1"), dir.path().join("v1-grown"));
        let items = trained(&from);
        run(args(&from, &out, 100)).unwrap();

        let original = VersionArtifacts::load(&from).unwrap();
        let grown = VersionArtifacts::load(&out).unwrap();
        assert_eq!(grown.items.len(), 100);
        assert_eq!(grown.item_embeddings.size(), vec![100, original.item_embeddings.size()[1]]);
        let ids: Vec<&str> = grown.items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(&ids[..30], items.iter().map(|i| i.id.as_str()).collect::<Vec<_>>());
        assert_eq!(ids[99], "synthetic-99");
        let trained_rows = grown.item_embeddings.narrow(0, 0, 30);
        assert!(trained_rows.allclose(&original.item_embeddings, 0.0, 0.0, false));
        for item in &grown.items[30..] {
            assert!((1..=3).contains(&item.genres.len()), "{item:?}");
            assert!((1990..=1997).contains(&item.year.unwrap()), "{item:?}");
        }
    }

    #[test]
    fn refuses_an_existing_out_and_a_smaller_catalogue() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("v1");
        trained(&from);
        let err = run(args(&from, &from, 100)).unwrap_err().to_string();
        assert!(err.contains("exists"), "{err}");
        let err = run(args(&from, &dir.path().join("smaller"), 10)).unwrap_err().to_string();
        assert!(err.contains("fewer than the 30 items"), "{err}");
        assert!(!dir.path().join("smaller").exists());
        let err = run(args(&dir.path().join("missing"), &dir.path().join("x"), 100)).unwrap_err();
        assert!(format!("{err:#}").contains("missing"), "{err:#}");
    }
}

//! End-to-end runs of the training pipeline on small synthetic data written
//! as CSV files: artifacts, metrics shape, determinism, resume, and the
//! validation report for broken files.

use std::path::{Path, PathBuf};

use reco_trainer::pipeline::{TrainOptions, load_dataset};
use reco_trainer::validate::ValidationRules;
use reco_trainer::{TrainError, train};

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("reco-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// 60 users in 3 taste groups over 45 items; each user rates items of their
/// group in a fixed, user-dependent order, one per hour.
fn write_synthetic(dir: &Path) {
    let mut inter = String::from("user_id,item_id,rating,timestamp\n");
    for u in 0..60u32 {
        let group = u % 3;
        for k in 0..12u32 {
            let item = group * 15 + (u * 7 + k * 4) % 15;
            let rating = 1 + (u + k) % 5;
            inter.push_str(&format!("u{u},m{item},{rating},{}\n", 880_000_000 + u * 10 + k * 3_600));
        }
    }
    std::fs::write(dir.join("interactions.csv"), inter).unwrap();
    let mut users = String::from("user_id,age,gender,occupation,zip_code\n");
    for u in 0..60 {
        users.push_str(&format!(
            "u{u},{},{},{},{}0000\n",
            18 + u % 40,
            if u % 2 == 0 { "F" } else { "M" },
            ["writer", "doctor", "student"][u % 3],
            u % 10
        ));
    }
    std::fs::write(dir.join("users.csv"), users).unwrap();
    let mut items = String::from("item_id,title,year,genres\n");
    for i in 0..45 {
        items.push_str(&format!(
            "m{i},\"Film {i}, the sequel\",{},{}\n",
            1970 + i,
            ["Drama", "Comedy|Romance", "Action|Sci-Fi"][i / 15]
        ));
    }
    std::fs::write(dir.join("items.csv"), items).unwrap();
}

fn tiny(data: &Path, out: &Path, seed: u64) -> TrainOptions {
    let mut options = TrainOptions::new(data.to_path_buf(), out.to_path_buf(), seed);
    options.two_tower.embed_dim = 8;
    options.two_tower.hidden_dim = 16;
    options.two_tower.out_dim = 8;
    options.two_tower.batch_size = 64;
    options.two_tower.uniform_negatives = 16;
    options.two_tower.hard_negatives = 2;
    options.two_tower.hard_skip = 1;
    options.two_tower.max_epochs = 3;
    options.ranker.per_source = 15;
    options.ranker.popular = 5;
    options.ranker.hidden_dim = 16;
    options.ranker.embed_dim = 4;
    options.ranker.max_epochs = 2;
    options.ease_lambdas = vec![10.0, 50.0];
    options.threads = Some(1);
    options.pipeline = "synthetic".into();
    options
}

#[test]
fn trains_evaluates_and_writes_every_artifact_deterministically() {
    let data = tmp("data");
    write_synthetic(&data);
    let out = tmp("out");
    let summary = train(&tiny(&data, &out, 7)).unwrap();
    for f in [
        "two_tower.safetensors",
        "two_tower.json",
        "item_embeddings.safetensors",
        "item_ids.json",
        "user_ids.json",
        "item_item.safetensors",
        "ranker.safetensors",
        "ranker.json",
        "features.json",
        "feature_stats.json",
        "metrics.json",
        "training.json",
        "modelversion.yaml",
    ] {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert!(metrics["protocol"].as_str().unwrap().contains("80/10/10"));
    for model in ["popularity", "two_tower", "item_to_item", "two_tower_ranker"] {
        for k in [
            "ndcg@10",
            "recall@10",
            "map@10",
            "mrr@10",
            "hit@10",
            "ndcg@20",
            "recall@20",
            "coverage@10",
            "avg_popularity@10",
        ] {
            let v = metrics["models"][model][k].as_f64().unwrap_or_else(|| panic!("{model} {k}"));
            assert!(v.is_finite() && v >= 0.0);
        }
    }
    // The synthetic tastes are learnable: personalised sources beat popularity.
    let ndcg = |m: &str| metrics["models"][m]["ndcg@10"].as_f64().unwrap();
    assert!(ndcg("item_to_item") > ndcg("popularity"), "{metrics}");

    // The drift monitors' reference: the served funnel's dense features on the validation users.
    let version = reco_model::artifacts::VersionArtifacts::load(&out).unwrap();
    let reference = version.ranker_file.feature_reference.as_ref().expect("a feature reference in ranker.json");
    assert_eq!(reference.features.len(), reco_model::scoring::N_DENSE);
    assert!(reference.rows > 0 && reference.check().is_ok(), "{reference:?}");
    let spread = &reference.features[0];
    assert!(spread.edges.len() >= 5 && spread.min < spread.max, "two-tower scores spread over deciles: {spread:?}");

    let mv = std::fs::read_to_string(out.join("modelversion.yaml")).unwrap();
    assert!(mv.contains("apiVersion: reco.seed.dev/v1alpha1") && mv.contains("kind: ModelVersion"), "{mv}");
    assert!(mv.contains("name: synthetic-s7") && mv.contains("pipeline: synthetic") && mv.contains("ndcg@10"), "{mv}");
    let items: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(out.join("item_ids.json")).unwrap()).unwrap();
    let emb = tch::Tensor::read_safetensors(out.join("item_embeddings.safetensors")).unwrap();
    assert_eq!(emb[0].1.size(), vec![items.len() as i64, 8]);

    // Same seed, same figures; resuming a finished run replays the checkpoints.
    let out2 = tmp("out2");
    let again = train(&tiny(&data, &out2, 7)).unwrap();
    assert_eq!(summary.metrics.models, again.metrics.models);
    let mut resume = tiny(&data, &out2, 7);
    resume.resume = true;
    for stage in ["two_tower", "two_tower_early", "ranker"] {
        assert!(out2.join("checkpoint").join(stage).join("state.json").is_file(), "no {stage} checkpoint");
    }
    let resumed = train(&resume).unwrap();
    assert_eq!(summary.metrics.models, resumed.metrics.models);

    for d in [data, out, out2] {
        std::fs::remove_dir_all(d).ok();
    }
}

#[test]
fn broken_files_fail_with_a_report_written_next_to_the_output() {
    let data = tmp("broken");
    std::fs::write(
        data.join("interactions.csv"),
        "user_id,item_id,rating,timestamp\nu1,m1,4,100\nu1,m1,9,200\nu2,m1,,300\nu1,m1,4,100\nu2,m2,3,400\n",
    )
    .unwrap();
    std::fs::write(data.join("items.csv"), "item_id,title\nm1,A\n").unwrap();
    let out = tmp("broken-out");
    let err = load_dataset(&data, &ValidationRules::default(), Some(&out)).unwrap_err();
    let TrainError::Invalid(report) = &err else { panic!("{err}") };
    let text = err.to_string();
    assert!(text.contains("interactions.csv: column `rating`: 1 values out of range (e.g. line 3: \"9\")"), "{text}");
    assert!(text.contains("interactions.csv: column `rating`: 1 empty values"), "{text}");
    assert!(text.contains("interactions.csv: column `item_id`: 1 ids not found in the side file"), "{text}");
    assert!(text.contains("interactions.csv: column `user_id,item_id,timestamp`: 1 duplicates"), "{text}");
    assert_eq!(report.problems.len(), 4);
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("validation_report.json")).unwrap()).unwrap();
    assert_eq!(saved["problems"].as_array().unwrap().len(), 4);

    let missing = load_dataset(&out.join("nope"), &ValidationRules::default(), None).unwrap_err().to_string();
    assert!(missing.contains("nope"), "{missing}");
    for d in [data, out] {
        std::fs::remove_dir_all(d).ok();
    }
}

#[test]
fn two_tower_training_never_reads_validation_or_test() {
    use reco_trainer::features::{self, FeatureOptions};
    use reco_trainer::retrieval::{TwoTowerData, train_two_tower};
    use reco_trainer::split::{by_user, chronological_split};

    // One libtorch thread: tests run in parallel on small machines.
    tch::set_num_threads(1);
    let data = tmp("leak");
    write_synthetic(&data);
    let (ds, _) = load_dataset(&data, &ValidationRules::default(), None).unwrap();
    let two_tower_options = tiny(&data, &data, 3).two_tower;
    let fit = |ds: &reco_trainer::validate::Dataset| {
        let split = chronological_split(ds, [0.8, 0.1, 0.1]);
        let train = by_user(ds.users.len(), &split.train);
        let fs = features::fit(ds, &split.train, FeatureOptions::default());
        let data = TwoTowerData { ds, fs: &fs, train: &train, valid: None, warm_start: None };
        let trained =
            train_two_tower(&data, &two_tower_options, 3, None, &reco_trainer::Progress::hidden(), "leak").unwrap();
        let mut vars: Vec<(String, tch::Tensor)> = trained.vs.variables().into_iter().collect();
        vars.sort_by(|(a, _), (b, _)| a.cmp(b));
        (split, vars)
    };
    let (split, before) = fit(&ds);
    // Point every validation and test interaction at another item with another rating.
    let mut tampered = ds.clone();
    let held_out: std::collections::HashSet<(u32, i64)> =
        split.valid.iter().chain(&split.test).map(|x| (x.user, x.timestamp)).collect();
    for x in &mut tampered.interactions {
        if held_out.contains(&(x.user, x.timestamp)) {
            x.item = (x.item + 1) % ds.items.len() as u32;
            x.rating = 1.0;
        }
    }
    let (split2, after) = fit(&tampered);
    assert_eq!(split.train, split2.train);
    assert_ne!(split.test, split2.test);
    assert_eq!(before.len(), after.len());
    for ((name, a), (_, b)) in before.iter().zip(&after) {
        assert!(a.equal(b), "{name} changed when only validation/test changed");
    }
    std::fs::remove_dir_all(data).ok();
}

#[test]
fn tuning_scores_trials_on_validation_without_reading_test() {
    let data = tmp("tune-data");
    write_synthetic(&data);
    let out = tmp("tune-out");
    let base = tiny(&data, &out, 3);
    let report = reco_trainer::tune::tune(&base, 2, 11).unwrap();
    assert_eq!(report.trials.len(), 2);
    assert_eq!(report.trials[0].settings.two_tower, base.two_tower, "trial 0 is the baseline");
    assert_ne!(report.trials[1].settings, report.trials[0].settings);
    for trial in &report.trials {
        assert!(trial.score.is_finite() && trial.score > 0.0, "{trial:?}");
        let metrics: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join(format!("trial-{:02}", trial.trial)).join("metrics.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(metrics["models"], serde_json::json!({}), "a trial must not evaluate on test");
        assert_eq!(metrics["validation"]["two_tower_ranker"]["ndcg@10"].as_f64(), Some(trial.score));
    }
    let saved: reco_trainer::tune::TuningReport =
        serde_json::from_str(&std::fs::read_to_string(out.join("tuning.json")).unwrap()).unwrap();
    assert_eq!(saved.best, reco_trainer::tune::best_index(&report.trials));
    let err = reco_trainer::tune::tune(&base, 0, 11).unwrap_err().to_string();
    assert!(err.contains("--trials must be at least 1"), "{err}");
    for d in [data, out] {
        std::fs::remove_dir_all(d).ok();
    }
}

#[test]
fn an_incremental_run_starts_from_its_parent_learns_its_events_and_scores_both_on_one_split() {
    use reco_trainer::incremental::Incremental;
    let data = tmp("inc-data");
    write_synthetic(&data);
    let parent = tmp("inc-parent");
    train(&tiny(&data, &parent, 7)).unwrap();
    // u0's test interaction is m14 (its latest), its first train one m0; u1 never saw m3.
    let events = data.join("events.csv");
    std::fs::write(
        &events,
        "user_id,item_id,timestamp\nu0,m14,2000000000\nu0,m0,2000000001\nstranger,m1,2000000002\nu1,m999,2000000003\n\
         u1,m3,2000000004\n",
    )
    .unwrap();

    // A zero learning rate leaves the two-tower where it started: at the parent's weights, if the warm start
    // loaded them (a cold start would keep seed 8's random ones). A wider two-tower asked for is not what the
    // parent's weights fit: the parent's architecture is kept.
    let child = tmp("inc-child");
    let mut options = tiny(&data, &child, 8);
    options.two_tower.learning_rate = 0.0;
    options.two_tower.out_dim = 16;
    options.incremental = Some(Incremental { parent: parent.clone(), events: events.clone() });
    let summary = train(&options).unwrap();
    let weights = |dir: &Path| {
        let mut tensors = tch::Tensor::read_safetensors(dir.join("two_tower.safetensors")).unwrap();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        tensors
    };
    let (ours, theirs) = (weights(&child), weights(&parent));
    assert_eq!(ours.len(), theirs.len());
    for ((name, a), (_, b)) in ours.iter().zip(&theirs) {
        assert!(a.equal(b), "{name} differs from the parent's");
    }
    for model in ["two_tower_ranker", "parent_two_tower_ranker", "parent_two_tower"] {
        assert!(summary.metrics.models[model]["ndcg@10"].is_finite(), "{model}");
    }
    assert!(summary.metrics.protocol.contains("incremental"), "{}", summary.metrics.protocol);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(child.join("training.json")).unwrap()).unwrap();
    assert_eq!(
        report["incremental"]["events"],
        serde_json::json!({"rows": 5, "used": 2, "unknown_users": 1, "unknown_items": 1, "repeats": 1,
            "held_out_now_history": 1}),
        "{report}"
    );
    assert!(report["finished_at_ms"].as_i64().unwrap() > 1_700_000_000_000);
    // The child against its parent, user by user on test: the difference of the two means.
    let gain = &report["incremental"]["test_gain_over_parent"];
    let models = &summary.metrics.models;
    let difference = models["two_tower_ranker"]["ndcg@10"] - models["parent_two_tower_ranker"]["ndcg@10"];
    assert!((gain["mean"].as_f64().unwrap() - difference).abs() < 1e-9, "{gain} vs {difference}");
    assert!(gain["ci95_low"].as_f64().unwrap() <= gain["ci95_high"].as_f64().unwrap(), "{gain}");
    assert!(gain["users"].as_u64().unwrap() > 0, "{gain}");

    // A parent trained on other users is refused before any training.
    let mut other = tiny(&data, &tmp("inc-other"), 8);
    other.max_users = Some(30);
    other.incremental = Some(Incremental { parent: parent.clone(), events });
    let err = train(&other).unwrap_err().to_string();
    assert!(err.contains("trained on other users (60 in the parent, 30 in --data)"), "{err}");

    for d in [data, parent, child] {
        std::fs::remove_dir_all(d).ok();
    }
}

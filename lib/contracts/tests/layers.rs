//! The dependency rule of the workspace, checked on `cargo metadata`: the
//! contracts and the runtime at the bottom, the operator's crates and the
//! services' crates beside each other above them and never importing each
//! other, the CLI and the demo on top. A forbidden edge (normal, build or
//! dev) fails here with the edge named.

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layer {
    /// What both sides speak and what every binary repeats.
    Bottom,
    /// The public API types (CRDs), which the trainer writes manifests of.
    Api,
    /// The operator's internals: engine, metric sources, controller.
    Operator,
    Services,
    /// Test doubles that stand in for a Kubernetes API server.
    TestDoubles,
    /// Binaries and end-to-end scenarios that wire everything together.
    Top,
}

fn layer(package: &str) -> Option<Layer> {
    use Layer::*;
    Some(match package {
        "reco-contracts" | "reco-runtime" | "reco-artifacts" => Bottom,
        "reco-api" => Api,
        "reco-rollout" | "reco-metric-source" | "reco-operator" => Operator,
        "reco-model" | "reco-proto" | "reco-core" | "reco-vector-store" | "reco-features" | "reco-gateway"
        | "reco-retrieval" | "reco-ranking" | "reco-trainer" => Services,
        "reco-kube-testserver" | "reco-packaging-tests" => TestDoubles,
        "reco-cli" | "reco-demo" | "reco-node" => Top,
        _ => return None,
    })
}

/// Whether a crate of layer `from` may depend on one of layer `to`.
fn allowed(from: Layer, to: Layer) -> bool {
    use Layer::*;
    match from {
        Bottom => to == Bottom,
        Api => to == Bottom,
        Operator => matches!(to, Bottom | Api | Operator | TestDoubles),
        Services => matches!(to, Bottom | Api | Services),
        TestDoubles => matches!(to, Bottom | Api | TestDoubles),
        Top => true,
    }
}

/// Every `(package, dependency)` edge between workspace crates.
fn workspace_edges() -> Vec<(String, String)> {
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.toml");
    let output = Command::new(cargo)
        .args(["metadata", "--format-version=1", "--no-deps", "--offline", "--manifest-path", manifest])
        .output()
        .expect("cargo metadata runs");
    assert!(output.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&output.stderr));
    let metadata: Value = serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    let packages = metadata["packages"].as_array().expect("packages");
    let names: Vec<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    packages
        .iter()
        .flat_map(|package| {
            let name = package["name"].as_str().unwrap_or_default().to_owned();
            let names = &names;
            package["dependencies"].as_array().into_iter().flatten().filter_map(move |dependency| {
                let dependency = dependency["name"].as_str()?;
                names.contains(&dependency).then(|| (name.clone(), dependency.to_owned()))
            })
        })
        .collect()
}

#[test]
fn dependencies_point_one_way() {
    let edges = workspace_edges();
    assert!(edges.len() > 20, "too few workspace edges found: {edges:?}");
    let mut unplaced = BTreeMap::new();
    let mut forbidden = Vec::new();
    for (from, to) in &edges {
        match (layer(from), layer(to)) {
            (Some(a), Some(b)) if !allowed(a, b) => forbidden.push(format!("{from} ({a:?}) -> {to} ({b:?})")),
            (Some(_), Some(_)) => {}
            (a, _) => {
                let name = if a.is_none() { from } else { to };
                unplaced.insert(name.clone(), ());
            }
        }
    }
    assert!(unplaced.is_empty(), "crates in no layer (add them to `layer`): {:?}", unplaced.keys());
    assert!(forbidden.is_empty(), "forbidden dependencies:\n  {}", forbidden.join("\n  "));
}

#[test]
fn the_rule_forbids_what_it_should() {
    use Layer::*;
    assert!(!allowed(Services, Operator), "a service importing the engine");
    assert!(!allowed(Operator, Services), "the operator importing a service");
    assert!(!allowed(Bottom, Services) && !allowed(Bottom, Api));
    assert!(!allowed(Api, Operator), "API types embedding engine state");
    assert!(allowed(Top, Operator) && allowed(Top, Services));
}

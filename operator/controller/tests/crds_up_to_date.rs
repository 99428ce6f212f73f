//! The CRD files in `crds/` and the chart must be what the Rust types generate.

use std::path::Path;

#[test]
fn crd_files_match_the_rust_types() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for (name, expected) in reco_operator::crds::crd_files() {
        let path = root.join("crds").join(name);
        let actual =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}; run `make crds`", path.display()));
        similar_asserts::assert_eq!(actual, expected, "{} is stale: run `make crds`", path.display());
    }
}

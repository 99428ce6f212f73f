//! The Dockerfiles: multi-stage, non-root, base images pinned to a version
//! (also where a build argument names them: its default is checked).

use reco_packaging_tests::kinds::check_image;
use reco_packaging_tests::read;

#[test]
fn dockerfiles_are_multi_stage_non_root_and_pinned() {
    // build (+ libtorch for the services), prebuilt, the chosen binary stage, runtime.
    for (path, stages) in [("operator/Dockerfile", 4), ("services/Dockerfile", 5)] {
        let text = read(path);
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        let defaults: Vec<(String, &str)> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("ARG ")?.split_once('='))
            .map(|(name, value)| (format!("${{{name}}}"), value))
            .collect();
        let resolve = |from: &str| defaults.iter().fold(from.to_owned(), |f, (arg, value)| f.replace(arg, value));
        let froms: Vec<String> = lines.iter().filter_map(|l| l.strip_prefix("FROM ")).map(resolve).collect();
        assert!(froms.iter().any(|f| f == "build AS binary"), "{path}: binaries are compiled by default: {froms:?}");
        assert_eq!(froms.len(), stages, "{path}: {froms:?}");
        let stage_names: Vec<&str> = froms.iter().filter_map(|f| f.split_once(" AS ").map(|(_, n)| n.trim())).collect();
        for from in froms.iter().filter(|f| !f.starts_with("scratch ")) {
            let image = from.split_whitespace().find(|w| !w.starts_with("--")).unwrap();
            if !stage_names.contains(&image) {
                check_image(path, image).unwrap();
            }
        }
        let user =
            lines.iter().rev().find_map(|l| l.strip_prefix("USER ")).unwrap_or_else(|| panic!("{path}: no USER"));
        assert!(!["root", "0", "0:0"].contains(&user), "{path}: the final stage runs as {user}");
        assert!(lines.last().is_some_and(|l| l.starts_with("ENTRYPOINT")), "{path}: ends with its ENTRYPOINT");
    }
}

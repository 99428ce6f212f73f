//! The Dockerfiles: multi-stage, non-root, base images pinned to a version.

use reco_packaging_tests::kinds::check_image;
use reco_packaging_tests::read;

#[test]
fn dockerfiles_are_multi_stage_non_root_and_pinned() {
    for (path, stages) in [("operator/Dockerfile", 2), ("services/Dockerfile", 3)] {
        let text = read(path);
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        let froms: Vec<&str> = lines.iter().filter_map(|l| l.strip_prefix("FROM ")).collect();
        assert_eq!(froms.len(), stages, "{path}: {froms:?}");
        let stage_names: Vec<&str> = froms.iter().filter_map(|f| f.split_once(" AS ").map(|(_, n)| n.trim())).collect();
        for from in &froms {
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

//! The binaries' command lines: bad flags get an error naming them.

use std::process::Command;

fn run(binary: &str, args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(binary).args(args).env_remove("KUBECONFIG").env("HOME", "/nonexistent").output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned() + &String::from_utf8_lossy(&output.stdout),
    )
}

#[test]
fn operator_flags_are_checked_and_explained() {
    let operator = env!("CARGO_BIN_EXE_reco-operator");
    let (code, help) = run(operator, &["--help"]);
    assert_eq!(code, Some(0));
    for flag in [
        "--metrics-addr",
        "--watch-namespaces",
        "--leader-election",
        "--lease-name",
        "--log-format",
        "--services-image",
        "RECO_SERVICES_IMAGE",
        "RECO_METRICS_ADDR",
    ] {
        assert!(help.contains(flag), "--help does not mention {flag}");
    }
    let cases: [(&[&str], &str); 5] = [
        (&["--metrics-addr", "nowhere"], "--metrics-addr"),
        (&["--log-format", "xml"], "--log-format"),
        (&["--leader-election", "maybe"], "--leader-election"),
        (&["--services-image", "ghcr.io/reco-seed/reco:latest"], "--services-image"),
        (&["--services-image", ""], "--services-image"),
    ];
    for (args, flag) in cases {
        let (code, message) = run(operator, args);
        assert_eq!(code, Some(2), "{args:?}");
        assert!(message.contains(flag), "{args:?}: {message}");
    }
}

#[test]
fn operator_without_a_cluster_says_so() {
    let (code, message) =
        run(env!("CARGO_BIN_EXE_reco-operator"), &["--metrics-addr", "127.0.0.1:0", "--log-format", "text"]);
    assert_ne!(code, Some(0));
    assert!(message.contains("no Kubernetes configuration"), "{message}");
}

#[test]
fn crdgen_names_a_folder_it_cannot_write() {
    let (code, message) = run(env!("CARGO_BIN_EXE_crdgen"), &["--out", "/proc/reco-crds"]);
    assert_ne!(code, Some(0));
    assert!(message.contains("/proc/reco-crds"), "{message}");
}

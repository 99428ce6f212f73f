//! Helpers shared by the test binaries of `reco-cli` (`mod common;` in each).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The ml-100k directory, fetched into the cache by scripts/ensure-ml100k.sh when missing.
pub fn ml100k() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/ensure-ml100k.sh");
    let output = Command::new(script).stderr(Stdio::inherit()).output().expect("run scripts/ensure-ml100k.sh");
    assert!(output.status.success(), "scripts/ensure-ml100k.sh failed");
    PathBuf::from(String::from_utf8(output.stdout).expect("a UTF-8 path").trim())
}

//! The manifest of a version directory: every file's sha256 and size, and
//! the version digest (the sha256 of the manifest's bytes).

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::ArtifactStoreError;

/// The manifest's file name inside a version directory.
pub const MANIFEST: &str = reco_contracts::artifacts::MANIFEST;
/// The manifest format this build writes and reads.
pub const FORMAT: u32 = 1;
/// Files of a version directory that the manifest does not cover: itself,
/// and the `ModelVersion` written after it (which carries the digest).
const NOT_COVERED: [&str; 2] = [MANIFEST, reco_contracts::artifacts::MODEL_VERSION];

/// A version digest, `sha256:` and 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    /// The digest of a manifest's bytes.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(format!("sha256:{:x}", Sha256::digest(bytes)))
    }

    /// The hex part, a safe directory name.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }
}

impl FromStr for Digest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let hex = s.strip_prefix("sha256:").ok_or_else(|| format!("digest {s:?} does not start with sha256:"))?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(format!("digest {s:?} is not sha256: and 64 lowercase hex digits"));
        }
        Ok(Digest(s.to_owned()))
    }
}

impl TryFrom<String> for Digest {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One file of a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub sha256: String,
    pub bytes: u64,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    /// File name (no directories) to its digest and size.
    pub files: BTreeMap<String, FileEntry>,
}

impl Manifest {
    /// The manifest of the regular files directly in `dir` (subdirectories
    /// and hidden files are not part of a version).
    pub fn of_dir(dir: &Path) -> Result<Manifest, ArtifactStoreError> {
        let entries = std::fs::read_dir(dir).map_err(|e| ArtifactStoreError::io(dir, e))?;
        let mut files = BTreeMap::new();
        for entry in entries {
            let entry = entry.map_err(|e| ArtifactStoreError::io(dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_file = entry.file_type().map_err(|e| ArtifactStoreError::io(entry.path(), e))?.is_file();
            if !is_file || name.starts_with('.') || NOT_COVERED.contains(&name.as_str()) {
                continue;
            }
            files.insert(name, hash_file(&entry.path())?);
        }
        Ok(Manifest { format: FORMAT, files })
    }

    /// Parses and checks a manifest: known format, at least one file, plain
    /// file names (a hostile manifest must not name `../x` or `/etc/x`).
    pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if manifest.format != FORMAT {
            return Err(format!("format {} is not the supported {FORMAT}", manifest.format));
        }
        if manifest.files.is_empty() {
            return Err("lists no files".into());
        }
        for (name, entry) in &manifest.files {
            let plain = !name.is_empty()
                && !name.starts_with('.')
                && !name.contains(['/', '\\', '\0'])
                && !NOT_COVERED.contains(&name.as_str());
            if !plain {
                return Err(format!("{name:?} is not a plain file name of a version"));
            }
            if entry.sha256.len() != 64 || !entry.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("{name}: sha256 {:?} is not 64 hex digits", entry.sha256));
            }
        }
        Ok(manifest)
    }

    /// The bytes written as `manifest.json` (deterministic: sorted names).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("a manifest always serialises");
        bytes.push(b'\n');
        bytes
    }

    /// Total size of the version's files.
    pub fn total_bytes(&self) -> u64 {
        self.files.values().map(|f| f.bytes).sum()
    }
}

/// sha256 and size of one file, read in chunks.
pub fn hash_file(path: &Path) -> Result<FileEntry, ArtifactStoreError> {
    let mut file = std::fs::File::open(path).map_err(|e| ArtifactStoreError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(|e| ArtifactStoreError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(FileEntry { sha256: format!("{:x}", hasher.finalize()), bytes })
}

/// Writes `dir/manifest.json` for the files now in `dir` and returns the
/// version digest. The trainer calls it once every other file is written.
pub fn write_manifest(dir: &Path) -> Result<Digest, ArtifactStoreError> {
    let bytes = Manifest::of_dir(dir)?.to_bytes();
    let path = dir.join(MANIFEST);
    reco_runtime::fs::save_atomic(&path, &bytes).map_err(|e| ArtifactStoreError::io(path, e))?;
    Ok(Digest::of(&bytes))
}

/// Checks a local version directory against its manifest (and `expected`,
/// when given) and returns its digest: every listed file present with the
/// listed size and sha256.
pub fn verify_dir(dir: &Path, expected: Option<&Digest>) -> Result<Digest, ArtifactStoreError> {
    let uri = dir.display().to_string();
    let path = dir.join(MANIFEST);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ArtifactStoreError::MissingManifest { uri }),
        Err(e) => return Err(ArtifactStoreError::io(path, e)),
    };
    let manifest =
        Manifest::parse(&bytes).map_err(|message| ArtifactStoreError::BadManifest { uri: uri.clone(), message })?;
    let digest = check_digest(&uri, &bytes, expected)?;
    for (name, want) in &manifest.files {
        let path = dir.join(name);
        let found = match hash_file(&path) {
            Ok(found) => found,
            Err(ArtifactStoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Err(ArtifactStoreError::MissingFile { uri, file: name.clone() });
            }
            Err(e) => return Err(e),
        };
        check_file(&uri, name, want, &found)?;
    }
    Ok(digest)
}

/// The digest of manifest `bytes`, refused when it is not `expected`.
pub(crate) fn check_digest(uri: &str, bytes: &[u8], expected: Option<&Digest>) -> Result<Digest, ArtifactStoreError> {
    let found = Digest::of(bytes);
    match expected {
        Some(expected) if *expected != found => {
            Err(ArtifactStoreError::DigestMismatch { uri: uri.to_owned(), expected: expected.clone(), found })
        }
        _ => Ok(found),
    }
}

/// A file as found against its manifest entry.
pub(crate) fn check_file(uri: &str, name: &str, want: &FileEntry, found: &FileEntry) -> Result<(), ArtifactStoreError> {
    if want.bytes == found.bytes && want.sha256.eq_ignore_ascii_case(&found.sha256) {
        return Ok(());
    }
    Err(ArtifactStoreError::Corrupt {
        uri: uri.to_owned(),
        file: name.to_owned(),
        expected_sha256: want.sha256.clone(),
        expected_bytes: want.bytes,
        found_sha256: found.sha256.clone(),
        found_bytes: found.bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("items.json"), b"[1,2,3]").unwrap();
        std::fs::write(dir.path().join("ranker.safetensors"), vec![7u8; 3 << 20]).unwrap();
        std::fs::write(dir.path().join(reco_contracts::artifacts::MODEL_VERSION), b"kind: ModelVersion").unwrap();
        std::fs::write(dir.path().join(".complete"), b"").unwrap();
        dir
    }

    #[test]
    fn a_written_manifest_verifies_and_names_the_digest() {
        let dir = version_dir();
        let digest = write_manifest(dir.path()).unwrap();
        assert_eq!(verify_dir(dir.path(), Some(&digest)).unwrap(), digest);
        let manifest = Manifest::parse(&std::fs::read(dir.path().join(MANIFEST)).unwrap()).unwrap();
        // Neither the ModelVersion (it carries the digest) nor hidden files are covered.
        assert_eq!(manifest.files.keys().collect::<Vec<_>>(), ["items.json", "ranker.safetensors"]);
        assert_eq!(manifest.total_bytes(), 7 + (3 << 20));
        // Deterministic: the same files give the same digest.
        assert_eq!(write_manifest(dir.path()).unwrap(), digest);
    }

    #[test]
    fn a_changed_truncated_or_missing_file_is_refused_by_name() {
        let dir = version_dir();
        let digest = write_manifest(dir.path()).unwrap();
        std::fs::write(dir.path().join("items.json"), b"[1,2,4]").unwrap();
        let err = verify_dir(dir.path(), None).unwrap_err();
        assert!(matches!(&err, ArtifactStoreError::Corrupt { file, .. } if file == "items.json"), "{err}");

        std::fs::write(dir.path().join("items.json"), b"[1,2,3]").unwrap();
        std::fs::write(dir.path().join("ranker.safetensors"), vec![7u8; 1 << 20]).unwrap();
        let err = verify_dir(dir.path(), Some(&digest)).unwrap_err().to_string();
        assert!(err.contains("ranker.safetensors: 1048576 bytes"), "{err}");

        std::fs::remove_file(dir.path().join("ranker.safetensors")).unwrap();
        let err = verify_dir(dir.path(), None).unwrap_err().to_string();
        assert!(err.ends_with("ranker.safetensors: missing, but listed in the manifest"), "{err}");
    }

    #[test]
    fn another_version_or_no_manifest_is_refused() {
        let dir = version_dir();
        assert!(matches!(verify_dir(dir.path(), None), Err(ArtifactStoreError::MissingManifest { .. })));
        write_manifest(dir.path()).unwrap();
        let other: Digest = format!("sha256:{}", "0".repeat(64)).parse().unwrap();
        let err = verify_dir(dir.path(), Some(&other)).unwrap_err().to_string();
        assert!(err.contains("but the ModelVersion expects sha256:0000"), "{err}");
    }

    #[test]
    fn hostile_or_malformed_manifests_are_refused() {
        let entry = format!(r#"{{"sha256":"{}","bytes":1}}"#, "a".repeat(64));
        for (text, why) in [
            (String::new(), "EOF"),
            ("{}".to_string(), "missing field"),
            (r#"{"format":2,"files":{}}"#.to_string(), "format 2"),
            (r#"{"format":1,"files":{}}"#.to_string(), "lists no files"),
            (format!(r#"{{"format":1,"files":{{"../etc/passwd":{entry}}}}}"#), "not a plain file name"),
            (format!(r#"{{"format":1,"files":{{"/abs":{entry}}}}}"#), "not a plain file name"),
            (format!(r#"{{"format":1,"files":{{"manifest.json":{entry}}}}}"#), "not a plain file name"),
            (r#"{"format":1,"files":{"a":{"sha256":"xyz","bytes":1}}}"#.to_string(), "not 64 hex digits"),
            (format!(r#"{{"format":1,"files":{{"a":{entry}}},"extra":1}}"#), "unknown field"),
        ] {
            let err = Manifest::parse(text.as_bytes()).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn digests_parse_strictly() {
        assert!(format!("sha256:{}", "ab".repeat(32)).parse::<Digest>().is_ok());
        for bad in
            ["", "sha256:", "md5:abc", &format!("sha256:{}", "AB".repeat(32)), &format!("sha256:{}", "a".repeat(63))]
        {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
    }
}

//! Reading the three-file layout (interactions, users, items) into untyped
//! string tables. Typing and checking happen in [`crate::validate`].
//!
//! Two layouts are recognised in a data directory:
//! - RecBole atomic files: `NAME.inter`, `NAME.user`, `NAME.item`, tab
//!   separated, header fields written `name:type` (MovieLens-100K ships so);
//! - plain tables: `interactions.{csv,tsv}`, `users.{csv,tsv}`,
//!   `items.{csv,tsv}` with a header row (quoted CSV fields are allowed).
//!
//! The interactions file is required; users and items files are optional.

use std::path::{Path, PathBuf};

use crate::error::{Result, TrainError};

/// A delimited file as strings: header names (type suffixes removed) and rows
/// with their 1-based line numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// File name shown in reports.
    pub name: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// Line number of each row in the file (header is line 1).
    pub lines: Vec<u64>,
}

impl Table {
    /// Build a table in memory (tests, generated data).
    pub fn new(name: &str, columns: &[&str], rows: Vec<Vec<String>>) -> Self {
        let lines = (2..rows.len() as u64 + 2).collect();
        Table { name: name.to_string(), columns: columns.iter().map(|c| c.to_string()).collect(), rows, lines }
    }

    /// Index of the first column named any of `names`.
    pub fn column(&self, names: &[&str]) -> Option<usize> {
        names.iter().find_map(|n| self.columns.iter().position(|c| c == n))
    }
}

/// The three tables of a data set.
#[derive(Debug, Clone)]
pub struct RawTables {
    pub interactions: Table,
    pub users: Option<Table>,
    pub items: Option<Table>,
}

/// The files found for each role in a data directory.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub interactions: PathBuf,
    pub users: Option<PathBuf>,
    pub items: Option<PathBuf>,
}

/// Find the three files in `dir` (see the module doc).
pub fn discover(dir: &Path) -> Result<Layout> {
    let entries = std::fs::read_dir(dir).map_err(|e| TrainError::io(dir, e))?;
    let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect();
    files.sort();
    let find = |stems: &[&str], exts: &[&str]| -> Option<PathBuf> {
        files
            .iter()
            .find(|p| {
                let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
                let stem = p.file_stem().and_then(|e| e.to_str()).unwrap_or("");
                exts.contains(&ext) && (stems.is_empty() || stems.contains(&stem))
            })
            .cloned()
    };
    if let Some(inter) = find(&[], &["inter"]) {
        return Ok(Layout { interactions: inter, users: find(&[], &["user"]), items: find(&[], &["item"]) });
    }
    let tab = ["csv", "tsv"];
    match find(&["interactions", "ratings"], &tab) {
        Some(inter) => Ok(Layout { interactions: inter, users: find(&["users"], &tab), items: find(&["items"], &tab) }),
        None => Err(TrainError::Layout(format!(
            "{}: no interactions file found; expected NAME.inter (RecBole atomic files) or interactions.csv / interactions.tsv",
            dir.display()
        ))),
    }
}

/// Read every table of `layout`.
pub fn read_layout(layout: &Layout) -> Result<RawTables> {
    Ok(RawTables {
        interactions: read_table(&layout.interactions)?,
        users: layout.users.as_deref().map(read_table).transpose()?,
        items: layout.items.as_deref().map(read_table).transpose()?,
    })
}

/// Read one delimited file: tab for `.tsv` and RecBole files, comma for `.csv`.
pub fn read_table(path: &Path) -> Result<Table> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let delimiter = if ext == "csv" { b',' } else { b'\t' };
    let recbole = matches!(ext, "inter" | "user" | "item");
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    let format = |message: String| TrainError::Format { path: path.to_path_buf(), message };
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(true)
        // RecBole titles contain quotes that are not CSV quoting.
        .quoting(!recbole)
        .from_reader(bytes.as_slice());
    let header = reader.headers().map_err(|e| format(format!("unreadable header: {e}")))?;
    let columns: Vec<String> = header
        .iter()
        .map(|h| h.split(':').next().unwrap_or(h).trim().trim_start_matches('\u{feff}').to_string())
        .collect();
    if columns.iter().all(String::is_empty) {
        return Err(format("empty file or empty header".into()));
    }
    let mut rows = Vec::new();
    let mut lines = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| format(format!("unreadable row: {e}")))?;
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        rows.push(record.iter().map(|f| f.trim().to_string()).collect());
        lines.push(line);
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(Table { name, columns, rows, lines })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_recbole_and_csv_layouts() {
        let dir = std::env::temp_dir().join(format!("reco-table-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("x.inter"), "user_id:token\titem_id:token\ttimestamp:float\n1\t2\t3\n").unwrap();
        std::fs::write(dir.join("x.item"), "item_id:token\tmovie_title:token_seq\n2\tSay \"Hi\"\n").unwrap();
        let layout = discover(&dir).unwrap();
        assert!(layout.users.is_none());
        let t = read_layout(&layout).unwrap();
        assert_eq!(t.interactions.columns, vec!["user_id", "item_id", "timestamp"]);
        assert_eq!(t.interactions.rows, vec![vec!["1", "2", "3"]]);
        assert_eq!(t.items.unwrap().rows[0][1], "Say \"Hi\"");
        std::fs::remove_dir_all(&dir).unwrap();

        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("interactions.csv"), "user_id,item_id,timestamp\n1,\"a,b\",3\n").unwrap();
        let t = read_layout(&discover(&dir).unwrap()).unwrap();
        assert_eq!(t.interactions.rows[0][1], "a,b");
        assert_eq!(t.interactions.lines, vec![2]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_interactions_file_names_the_directory() {
        let dir = std::env::temp_dir().join(format!("reco-table-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = discover(&dir).unwrap_err().to_string();
        assert!(err.contains("no interactions file"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

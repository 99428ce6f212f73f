//! Schema, quality and statistics checks that turn raw tables into a typed
//! [`Dataset`], or fail with a [`ValidationReport`] that lists every problem
//! with its count and a few examples. Pure: no I/O.
//!
//! Key columns (ids, rating, timestamp) must be present, typed and in range;
//! feature columns (age, gender, …) may be empty, which is counted in the
//! statistics rather than rejected.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use serde::Serialize;

use crate::table::{RawTables, Table};

/// Bounds applied to key columns.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidationRules {
    /// Inclusive rating bounds.
    pub rating_range: (f64, f64),
    /// Inclusive timestamp bounds, in seconds since the Unix epoch.
    pub timestamp_range: (i64, i64),
    /// How many examples each problem keeps.
    pub max_examples: usize,
}

impl Default for ValidationRules {
    fn default() -> Self {
        // 2100-01-01T00:00:00Z: a fixed bound keeps validation deterministic.
        ValidationRules { rating_range: (0.0, 5.0), timestamp_range: (0, 4_102_444_800), max_examples: 3 }
    }
}

/// One kind of problem in one column of one file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    pub file: String,
    pub column: Option<String>,
    pub kind: ProblemKind,
    pub count: usize,
    /// `line N: value` examples.
    pub examples: Vec<String>,
    /// Warnings (bad values in optional feature columns, which are then
    /// treated as missing) do not fail validation; they are logged and saved
    /// with the statistics.
    pub warning: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    MissingColumn,
    WrongFieldCount,
    Empty,
    Null,
    NotANumber,
    OutOfRange,
    Duplicate,
    UnknownId,
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProblemKind::MissingColumn => "missing column",
            ProblemKind::WrongFieldCount => "rows with a wrong number of fields",
            ProblemKind::Empty => "no rows",
            ProblemKind::Null => "empty values",
            ProblemKind::NotANumber => "values that are not numbers",
            ProblemKind::OutOfRange => "values out of range",
            ProblemKind::Duplicate => "duplicates",
            ProblemKind::UnknownId => "ids not found in the side file",
        })
    }
}

/// Every problem found; [`fmt::Display`] is the report users read.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ValidationReport {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ValidationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "data validation failed with {} problem(s):", self.problems.len())?;
        for p in &self.problems {
            let col = p.column.as_ref().map(|c| format!(" column `{c}`:")).unwrap_or_default();
            write!(f, "  - {}:{col} {} {}", p.file, p.count, p.kind)?;
            if !p.examples.is_empty() {
                write!(f, " (e.g. {})", p.examples.join("; "))?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

pub use reco_model::features::{Item, User};

/// One interaction, with dense 0-based user and item indices.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interaction {
    pub user: u32,
    pub item: u32,
    pub rating: f32,
    pub timestamp: i64,
}

/// A checked, typed data set. Users and items are the union of the side
/// files and the ids seen in interactions, in first-seen order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Dataset {
    pub users: Vec<User>,
    pub items: Vec<Item>,
    pub interactions: Vec<Interaction>,
}

/// Distribution of one column, saved with the model for drift checks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ColumnStats {
    pub count: usize,
    pub nulls: usize,
    pub distinct: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub numeric: Option<NumericStats>,
    /// Most frequent values with their counts (at most 10).
    pub top: Vec<(String, usize)>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NumericStats {
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    pub std: f64,
    pub p50: f64,
    pub p90: f64,
}

/// Per-file column statistics plus interaction-level summaries.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DataStats {
    pub files: BTreeMap<String, BTreeMap<String, ColumnStats>>,
    pub n_users: usize,
    pub n_items: usize,
    pub n_interactions: usize,
    pub density: f64,
    pub interactions_per_user: NumericStats,
    pub interactions_per_item: NumericStats,
    /// Non-fatal problems (bad optional feature values, read as missing).
    pub warnings: Vec<Problem>,
}

struct Collector {
    rules: ValidationRules,
    problems: BTreeMap<(String, String, ProblemKind), (usize, Vec<String>)>,
    warnings: BTreeMap<(String, String, ProblemKind), (usize, Vec<String>)>,
    /// Whether problems added now are warnings.
    lenient: bool,
}

impl Collector {
    fn add(&mut self, t: &Table, column: &str, kind: ProblemKind, row: Option<usize>, value: &str) {
        let map = if self.lenient { &mut self.warnings } else { &mut self.problems };
        let (count, examples) = map.entry((t.name.clone(), column.to_string(), kind)).or_default();
        *count += 1;
        if examples.len() < self.rules.max_examples {
            let line =
                row.map(|r| format!("line {}: ", t.lines.get(r).copied().unwrap_or(r as u64 + 2))).unwrap_or_default();
            examples.push(format!("{line}{value:?}"));
        }
    }

    fn list(map: BTreeMap<(String, String, ProblemKind), (usize, Vec<String>)>, warning: bool) -> Vec<Problem> {
        map.into_iter()
            .map(|((file, column, kind), (count, examples))| Problem {
                file,
                column: (!column.is_empty()).then_some(column),
                kind,
                count,
                examples,
                warning,
            })
            .collect()
    }

    /// The errors as a report (if any) and the warnings.
    fn finish(self) -> (Option<ValidationReport>, Vec<Problem>) {
        let warnings = Self::list(self.warnings, true);
        if self.problems.is_empty() {
            return (None, warnings);
        }
        (Some(ValidationReport { problems: Self::list(self.problems, false) }), warnings)
    }

    /// Parse an optional numeric feature: bad values are warnings and read as missing.
    fn feature_number(&mut self, t: &Table, row: usize, name: &str, v: &str, range: (f64, f64)) -> Option<f64> {
        self.lenient = true;
        let x = self.number(t, row, name, v, range);
        self.lenient = false;
        x
    }

    /// Column index of the first of `names`, reporting it missing if `required`.
    fn column(&mut self, t: &Table, names: &[&str], required: bool) -> Option<usize> {
        let c = t.column(names);
        if c.is_none() && required {
            self.add(t, names[0], ProblemKind::MissingColumn, None, &format!("header is {:?}", t.columns));
        }
        c
    }

    fn field<'a>(&mut self, t: &'a Table, row: usize, col: usize, name: &str, required: bool) -> Option<&'a str> {
        let v = t.rows[row].get(col).map(String::as_str).unwrap_or("");
        if v.is_empty() {
            if required {
                self.add(t, name, ProblemKind::Null, Some(row), v);
            }
            return None;
        }
        Some(v)
    }

    fn number(&mut self, t: &Table, row: usize, name: &str, v: &str, (low, high): (f64, f64)) -> Option<f64> {
        match v.parse::<f64>() {
            Ok(x) if x.is_finite() && x >= low && x <= high => Some(x),
            Ok(_) => {
                self.add(t, name, ProblemKind::OutOfRange, Some(row), v);
                None
            }
            Err(_) => {
                self.add(t, name, ProblemKind::NotANumber, Some(row), v);
                None
            }
        }
    }

    fn field_counts(&mut self, t: &Table) {
        if t.rows.is_empty() {
            self.add(t, "", ProblemKind::Empty, None, "the file has a header and no rows");
        }
        for (r, row) in t.rows.iter().enumerate() {
            if row.len() != t.columns.len() {
                let msg = format!("{} fields, header has {}", row.len(), t.columns.len());
                self.add(t, "", ProblemKind::WrongFieldCount, Some(r), &msg);
            }
        }
    }
}

const USER_ID: &[&str] = &["user_id", "user", "userId"];
const ITEM_ID: &[&str] = &["item_id", "item", "itemId", "movieId"];

/// Check the tables and build the typed data set and its statistics.
pub fn validate(tables: &RawTables, rules: &ValidationRules) -> Result<(Dataset, DataStats), ValidationReport> {
    let mut collector =
        Collector { rules: rules.clone(), problems: BTreeMap::new(), warnings: BTreeMap::new(), lenient: false };
    let mut builder = Builder::default();
    if let Some(table) = &tables.users {
        builder.read_users(&mut collector, table);
    }
    if let Some(table) = &tables.items {
        builder.read_items(&mut collector, table);
    }
    builder.read_interactions(&mut collector, tables, rules);

    let (report, warnings) = collector.finish();
    if let Some(report) = report {
        return Err(report);
    }
    let mut stats = statistics(tables, &builder.dataset);
    stats.warnings = warnings;
    Ok((builder.dataset, stats))
}

/// The data set being read, with the dense index of every id seen so far:
/// interactions refer to users and items by these indices.
#[derive(Default)]
struct Builder {
    dataset: Dataset,
    user_index: HashMap<String, u32>,
    item_index: HashMap<String, u32>,
}

impl Builder {
    /// The users file: an id is required and unique; the features are
    /// optional, bad values there are warnings and read as missing.
    fn read_users(&mut self, collector: &mut Collector, table: &Table) {
        collector.field_counts(table);
        let id = collector.column(table, USER_ID, true);
        let age = collector.column(table, &["age"], false);
        let gender = collector.column(table, &["gender"], false);
        let occupation = collector.column(table, &["occupation"], false);
        let zip = collector.column(table, &["zip_code", "zip"], false);
        let Some(id) = id else { return };
        for row in 0..table.rows.len() {
            let Some(user_id) = collector.field(table, row, id, USER_ID[0], true) else { continue };
            if self.user_index.contains_key(user_id) {
                collector.add(table, USER_ID[0], ProblemKind::Duplicate, Some(row), user_id);
                continue;
            }
            let text = |collector: &mut Collector, col: Option<usize>, name: &str| {
                col.and_then(|col| collector.field(table, row, col, name, false)).map(str::to_string)
            };
            let age = age
                .and_then(|col| collector.field(table, row, col, "age", false))
                .and_then(|v| collector.feature_number(table, row, "age", v, (0.0, 130.0)))
                .map(|a| a as u32);
            let user = User {
                id: user_id.to_string(),
                age,
                gender: text(collector, gender, "gender"),
                occupation: text(collector, occupation, "occupation"),
                zip: text(collector, zip, "zip_code"),
            };
            self.user_index.insert(user.id.clone(), self.dataset.users.len() as u32);
            self.dataset.users.push(user);
        }
    }

    /// The items file, checked like the users file.
    fn read_items(&mut self, collector: &mut Collector, table: &Table) {
        collector.field_counts(table);
        let id = collector.column(table, ITEM_ID, true);
        let title = collector.column(table, &["movie_title", "title"], false);
        let year = collector.column(table, &["release_year", "year"], false);
        let genres = collector.column(table, &["class", "genres", "genre"], false);
        let Some(id) = id else { return };
        for row in 0..table.rows.len() {
            let Some(item_id) = collector.field(table, row, id, ITEM_ID[0], true) else { continue };
            if self.item_index.contains_key(item_id) {
                collector.add(table, ITEM_ID[0], ProblemKind::Duplicate, Some(row), item_id);
                continue;
            }
            let year = year
                .and_then(|col| collector.field(table, row, col, "release_year", false))
                .and_then(|v| collector.feature_number(table, row, "release_year", v, (1800.0, 2100.0)))
                .map(|y| y as i32);
            let genres = genres
                .and_then(|col| collector.field(table, row, col, "genres", false))
                .map(|g| g.split(['|', ' ', ',']).filter(|s| !s.is_empty()).map(str::to_string).collect())
                .unwrap_or_default();
            let title = title.and_then(|col| collector.field(table, row, col, "title", false)).map(str::to_string);
            self.item_index.insert(item_id.to_string(), self.dataset.items.len() as u32);
            self.dataset.items.push(Item { id: item_id.to_string(), title, year, genres });
        }
    }

    /// The interactions file: every key column typed and in range, ids known
    /// to the side files (when there are any), no duplicate (user, item, time).
    fn read_interactions(&mut self, collector: &mut Collector, tables: &RawTables, rules: &ValidationRules) {
        let table = &tables.interactions;
        collector.field_counts(table);
        let user_col = collector.column(table, USER_ID, true);
        let item_col = collector.column(table, ITEM_ID, true);
        let rating_col = collector.column(table, &["rating"], false);
        let time_col = collector.column(table, &["timestamp", "time", "ts"], true);
        let (Some(user_col), Some(item_col), Some(time_col)) = (user_col, item_col, time_col) else { return };
        let mut seen: HashSet<(u32, u32, i64)> = HashSet::new();
        let (t_lo, t_hi) = rules.timestamp_range;
        for row in 0..table.rows.len() {
            let user_id = collector.field(table, row, user_col, USER_ID[0], true);
            let item_id = collector.field(table, row, item_col, ITEM_ID[0], true);
            let time = collector
                .field(table, row, time_col, "timestamp", true)
                .and_then(|v| collector.number(table, row, "timestamp", v, (t_lo as f64, t_hi as f64)));
            let rating = match rating_col {
                Some(col) => collector
                    .field(table, row, col, "rating", true)
                    .and_then(|v| collector.number(table, row, "rating", v, rules.rating_range)),
                None => Some(1.0),
            };
            let (Some(user_id), Some(item_id), Some(time), Some(rating)) = (user_id, item_id, time, rating) else {
                continue;
            };
            let Some(user) = self.user(collector, table, row, user_id, tables.users.is_some()) else { continue };
            let Some(item) = self.item(collector, table, row, item_id, tables.items.is_some()) else { continue };
            let timestamp = time as i64;
            if !seen.insert((user, item, timestamp)) {
                let value = format!("{user_id} {item_id} {timestamp}");
                collector.add(table, "user_id,item_id,timestamp", ProblemKind::Duplicate, Some(row), &value);
                continue;
            }
            self.dataset.interactions.push(Interaction { user, item, rating: rating as f32, timestamp });
        }
    }

    /// The index of an interaction's user: with a users file an unknown id is
    /// a problem, without one the id adds a user without features.
    fn user(&mut self, collector: &mut Collector, table: &Table, row: usize, id: &str, side_file: bool) -> Option<u32> {
        if let Some(&index) = self.user_index.get(id) {
            return Some(index);
        }
        if side_file {
            collector.add(table, USER_ID[0], ProblemKind::UnknownId, Some(row), id);
            return None;
        }
        let index = self.dataset.users.len() as u32;
        self.user_index.insert(id.to_string(), index);
        self.dataset.users.push(User { id: id.to_string(), ..Default::default() });
        Some(index)
    }

    /// The index of an interaction's item, as for [`Builder::user`].
    fn item(&mut self, collector: &mut Collector, table: &Table, row: usize, id: &str, side_file: bool) -> Option<u32> {
        if let Some(&index) = self.item_index.get(id) {
            return Some(index);
        }
        if side_file {
            collector.add(table, ITEM_ID[0], ProblemKind::UnknownId, Some(row), id);
            return None;
        }
        let index = self.dataset.items.len() as u32;
        self.item_index.insert(id.to_string(), index);
        self.dataset.items.push(Item { id: id.to_string(), ..Default::default() });
        Some(index)
    }
}

fn numeric(mut v: Vec<f64>) -> NumericStats {
    if v.is_empty() {
        return NumericStats { min: 0.0, max: 0.0, mean: 0.0, std: 0.0, p50: 0.0, p90: 0.0 };
    }
    v.sort_by(f64::total_cmp);
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    let q = |p: f64| v[((n - 1.0) * p).round() as usize];
    NumericStats { min: v[0], max: v[v.len() - 1], mean, std: var.sqrt(), p50: q(0.5), p90: q(0.9) }
}

fn column_stats(t: &Table, col: usize) -> ColumnStats {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    let mut nums = Vec::new();
    let mut nulls = 0;
    let mut all_numeric = true;
    for row in &t.rows {
        let v = row.get(col).map(String::as_str).unwrap_or("");
        if v.is_empty() {
            nulls += 1;
            continue;
        }
        *counts.entry(v).or_default() += 1;
        match v.parse::<f64>() {
            Ok(x) if all_numeric => nums.push(x),
            _ => all_numeric = false,
        }
    }
    let mut top: Vec<(String, usize)> = counts.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    top.sort_by(|(a_value, a_count), (b_value, b_count)| b_count.cmp(a_count).then_with(|| a_value.cmp(b_value)));
    top.truncate(10);
    ColumnStats {
        count: t.rows.len(),
        nulls,
        distinct: counts.len(),
        numeric: (all_numeric && !nums.is_empty()).then(|| numeric(nums)),
        top,
    }
}

/// Column and interaction statistics of a valid data set.
pub fn statistics(tables: &RawTables, ds: &Dataset) -> DataStats {
    let mut files = BTreeMap::new();
    for t in [Some(&tables.interactions), tables.users.as_ref(), tables.items.as_ref()].into_iter().flatten() {
        let cols = t.columns.iter().enumerate().map(|(i, name)| (name.clone(), column_stats(t, i))).collect();
        files.insert(t.name.clone(), cols);
    }
    let mut per_user = vec![0f64; ds.users.len()];
    let mut per_item = vec![0f64; ds.items.len()];
    for x in &ds.interactions {
        per_user[x.user as usize] += 1.0;
        per_item[x.item as usize] += 1.0;
    }
    let cells = (ds.users.len() * ds.items.len()).max(1) as f64;
    DataStats {
        files,
        n_users: ds.users.len(),
        n_items: ds.items.len(),
        n_interactions: ds.interactions.len(),
        density: ds.interactions.len() as f64 / cells,
        interactions_per_user: numeric(per_user),
        interactions_per_item: numeric(per_item),
        warnings: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn good() -> RawTables {
        RawTables {
            interactions: Table::new(
                "d.inter",
                &["user_id", "item_id", "rating", "timestamp"],
                vec![s(&["u1", "i1", "4", "100"]), s(&["u1", "i2", "3", "200"]), s(&["u2", "i1", "5", "150"])],
            ),
            users: Some(Table::new(
                "d.user",
                &["user_id", "age", "gender"],
                vec![s(&["u1", "24", "M"]), s(&["u2", "", "F"])],
            )),
            items: Some(Table::new(
                "d.item",
                &["item_id", "movie_title", "release_year", "class"],
                vec![s(&["i1", "Toy Story", "1995", "Animation Comedy"]), s(&["i2", "X", "unkonwn", ""])],
            )),
        }
    }

    #[test]
    fn valid_tables_become_a_typed_dataset_with_stats() {
        let (ds, stats) = validate(&good(), &ValidationRules::default()).unwrap();
        assert_eq!(ds.users.len(), 2);
        assert_eq!(ds.users[1].age, None);
        assert_eq!(ds.items[0].genres, vec!["Animation", "Comedy"]);
        assert_eq!(ds.interactions[2], Interaction { user: 1, item: 0, rating: 5.0, timestamp: 150 });
        assert_eq!(stats.n_interactions, 3);
        let age = &stats.files["d.user"]["age"];
        assert_eq!(age.nulls, 1);
        assert_eq!(age.numeric.as_ref().unwrap().mean, 24.0);
        assert_eq!(stats.interactions_per_user.max, 2.0);
        // A bad optional feature is a warning and reads as missing.
        assert_eq!(ds.items[1].year, None);
        assert_eq!(stats.warnings.len(), 1);
        assert!(stats.warnings[0].warning && stats.warnings[0].kind == ProblemKind::NotANumber);
    }

    #[test]
    fn broken_files_report_every_problem_with_counts_and_examples() {
        let mut t = good();
        t.interactions.rows.extend([
            s(&["u1", "i1", "7", "300"]), // rating out of range
            s(&["u1", "i1", "x", "301"]), // rating not a number
            s(&["u1", "i1", "4", ""]),    // null timestamp
            s(&["u9", "i1", "4", "302"]), // unknown user
            s(&["u1", "i7", "4", "303"]), // unknown item
            s(&["u1", "i8", "4", "304"]), // unknown item again
            s(&["u1", "i1", "4", "100"]), // duplicate of line 2
            s(&["u1", "i1", "4", "-5"]),  // timestamp out of range
            s(&["u1", "i1"]),             // wrong field count
        ]);
        t.users.as_mut().unwrap().rows.push(s(&["u1", "30", "M"])); // duplicate user
        let report = validate(&t, &ValidationRules::default()).unwrap_err();
        let find = |file: &str, col: Option<&str>, kind| {
            report
                .problems
                .iter()
                .find(|p| p.file == file && p.column.as_deref() == col && p.kind == kind)
                .unwrap_or_else(|| panic!("no {kind:?} for {file}:{col:?} in {report}"))
        };
        assert_eq!(find("d.inter", Some("rating"), ProblemKind::OutOfRange).count, 1);
        assert_eq!(find("d.inter", Some("rating"), ProblemKind::OutOfRange).examples, vec!["line 5: \"7\""]);
        assert_eq!(find("d.inter", Some("rating"), ProblemKind::NotANumber).count, 1);
        assert_eq!(find("d.inter", Some("timestamp"), ProblemKind::Null).count, 2);
        assert_eq!(find("d.inter", Some("timestamp"), ProblemKind::OutOfRange).count, 1);
        assert_eq!(find("d.inter", Some("user_id"), ProblemKind::UnknownId).count, 1);
        assert_eq!(find("d.inter", Some("item_id"), ProblemKind::UnknownId).count, 2);
        assert_eq!(find("d.inter", None, ProblemKind::WrongFieldCount).count, 1);
        assert_eq!(find("d.user", Some("user_id"), ProblemKind::Duplicate).count, 1);
        let text = report.to_string();
        assert!(text.contains("d.inter: column `rating`: 1 values out of range (e.g. line 5: \"7\")"), "{text}");
    }

    #[test]
    fn duplicate_interactions_are_reported() {
        let mut t = good();
        t.interactions.rows.push(s(&["u1", "i1", "4", "100"]));
        let report = validate(&t, &ValidationRules::default()).unwrap_err();
        assert_eq!(report.problems.len(), 1);
        assert_eq!(report.problems[0].kind, ProblemKind::Duplicate);
        assert_eq!(report.problems[0].examples, vec!["line 5: \"u1 i1 100\""]);
    }

    #[test]
    fn missing_columns_are_reported_with_the_header() {
        let mut t = good();
        t.interactions.columns[3] = "when".into();
        let report = validate(&t, &ValidationRules::default()).unwrap_err();
        assert_eq!(report.problems[0].kind, ProblemKind::MissingColumn);
        assert_eq!(report.problems[0].column.as_deref(), Some("timestamp"));
        assert!(report.problems[0].examples[0].contains("when"));
    }

    #[test]
    fn side_files_are_optional() {
        let mut t = good();
        t.users = None;
        t.items = None;
        let (ds, _) = validate(&t, &ValidationRules::default()).unwrap();
        assert_eq!((ds.users.len(), ds.items.len()), (2, 2));
    }
}

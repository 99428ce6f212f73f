//! Pure half of the scrape source: the per-target history of scraped
//! counters, reset-aware increases over a window, and turning those
//! increases into a side's metrics. No I/O, no clock: times come in.
//!
//! Each series keeps its *total*: the sum of its positive deltas since the
//! source first saw it, where a drop of the raw value counts as a counter
//! reset (a restarted gateway counts from 0 again, so the delta is the new
//! raw value) — the semantics of Prometheus' `increase()`, without its
//! extrapolation. The increase over a window is the total at the latest
//! scrape minus the total at the last scrape at or before the window's start.
//!
//! Bounds: a point is stored only when the total changes (an idle series
//! costs nothing), a series keeps at most [`MAX_POINTS`] points plus one per
//! pinned window start (the older half is thinned when full), and a series
//! absent from scrapes for [`RETENTION`] is forgotten. Thinning keeps the
//! base point of every window start an analysis asked about ([`TargetHistory::pin`]),
//! so the windows of a rollout's steps stay exact however long they run; only
//! windows nobody asked about while their start was recent blur earlier.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use jiff::{SignedDuration, Timestamp};
use reco_contracts::metrics::{self as signals, PIPELINE_LABEL, USER_GROUP_LABEL, VERSION_LABEL};
use reco_contracts::routing::USER_GROUPS;
use reco_rollout::{GroupCounts, Groups, SideMetrics};

use crate::SideSeries;
use crate::exposition::{ParseError, Sample, parse_float};

/// Points kept per series.
pub(crate) const MAX_POINTS: usize = 256;

/// How long the history of a series no longer exposed (or of a gateway no
/// longer scraped) is kept: long enough for any analysis window that
/// started while it was alive.
pub const RETENTION: SignedDuration = SignedDuration::from_hours(24);

/// Label of a histogram bucket's upper bound.
const LE_LABEL: &str = "le";

/// Counters the analysis reads.
const COUNTERS: [&str; 6] = [
    signals::IMPRESSIONS,
    signals::CLICKS,
    signals::REQUESTS,
    signals::ERRORS,
    signals::SHADOW_REQUESTS,
    signals::SHADOW_ERRORS,
];

/// Histograms the analysis reads (their `_bucket` series).
const HISTOGRAMS: [&str; 2] = [signals::LATENCY, signals::SHADOW_LATENCY];

/// Whether the scraper keeps series `name`.
pub(crate) fn is_read(name: &str) -> bool {
    COUNTERS.contains(&name) || name.strip_suffix("_bucket").is_some_and(|base| HISTOGRAMS.contains(&base))
}

/// One series: its name and all its labels (including `le`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct SeriesKey {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// Checks the samples of one scrape and keys them by series: every value
/// read is a counter or bucket count (finite, not negative), a bucket has a
/// numeric `le`, and no series appears twice (Prometheus rejects that too).
pub(crate) fn snapshot(samples: Vec<Sample>) -> Result<HashMap<SeriesKey, f64>, ParseError> {
    let mut series = HashMap::with_capacity(samples.len());
    for sample in samples {
        let error = |reason: String| ParseError { line: sample.line, reason };
        if !(sample.value.is_finite() && sample.value >= 0.0) {
            return Err(error(format!("{} is a count but has value {}", sample.name, sample.value)));
        }
        if sample.name.ends_with("_bucket") {
            let le = sample.labels.get(LE_LABEL);
            if le.and_then(|le| parse_float(le)).is_none_or(f64::is_nan) {
                return Err(error(format!("bucket of {} has no numeric le label (le={le:?})", sample.name)));
            }
        }
        let key = SeriesKey { name: sample.name, labels: sample.labels };
        if series.insert(key, sample.value).is_some() {
            return Err(error("the same series appears twice".into()));
        }
    }
    Ok(series)
}

/// What the source remembers of one gateway.
#[derive(Debug, Default)]
pub(crate) struct TargetHistory {
    last_scrape: Option<Timestamp>,
    series: HashMap<SeriesKey, SeriesHistory>,
    /// Window starts an analysis asked about: their base points are never thinned.
    pins: BTreeSet<Timestamp>,
}

#[derive(Debug)]
struct SeriesHistory {
    last_raw: f64,
    last_seen: Timestamp,
    /// `(scrape time, total)`, total strictly increasing; the first is 0.
    points: VecDeque<(Timestamp, f64)>,
}

impl SeriesHistory {
    /// First seen on the first scrape of its gateway: what it counted
    /// before is unknown, so its window starts here.
    fn baseline(at: Timestamp, raw: f64) -> Self {
        SeriesHistory { last_raw: raw, last_seen: at, points: VecDeque::from([(at, 0.0)]) }
    }

    /// First seen on a later scrape: it did not exist at the previous one,
    /// so it counted from 0 since then.
    fn born(previous_scrape: Timestamp, at: Timestamp, raw: f64) -> Self {
        let mut series = SeriesHistory { last_raw: 0.0, last_seen: previous_scrape, points: VecDeque::new() };
        series.points.push_back((previous_scrape, 0.0));
        series.observe(at, raw, &BTreeSet::new());
        series
    }

    fn observe(&mut self, at: Timestamp, raw: f64, pins: &BTreeSet<Timestamp>) {
        // A drop is a reset: the gateway restarted and counted `raw` since.
        let delta = if raw >= self.last_raw { raw - self.last_raw } else { raw };
        self.last_raw = raw;
        self.last_seen = at;
        if delta > 0.0 {
            let total = self.total() + delta;
            self.points.push_back((at, total));
            if self.points.len() > MAX_POINTS + pins.len() {
                self.thin(pins);
            }
        }
    }

    fn total(&self) -> f64 {
        self.points.back().map_or(0.0, |&(_, total)| total)
    }

    /// Drops every other point of the older half, keeping the first (0) and
    /// the base point of every pinned window start.
    fn thin(&mut self, pins: &BTreeSet<Timestamp>) {
        let half = self.points.len() / 2;
        let bases: BTreeSet<usize> =
            pins.iter().filter_map(|&pin| self.points.partition_point(|&(at, _)| at <= pin).checked_sub(1)).collect();
        let mut index = 0;
        self.points.retain(|_| {
            let keep = index >= half || index % 2 == 0 || bases.contains(&index);
            index += 1;
            keep
        });
    }

    /// Increase from the last point at or before `start` to the latest.
    fn increase_since(&self, start: Timestamp) -> f64 {
        self.total() - self.total_at(start)
    }

    /// The total at the last point at or before `at` (0 before the first).
    fn total_at(&self, at: Timestamp) -> f64 {
        match self.points.partition_point(|&(time, _)| time <= at) {
            0 => 0.0,
            n => self.points[n - 1].1,
        }
    }
}

impl TargetHistory {
    /// When this gateway was last scraped successfully.
    pub(crate) fn last_scrape(&self) -> Option<Timestamp> {
        self.last_scrape
    }

    /// Keeps the window starting at `start` exact from now on: thinning
    /// never drops its base point. Pins expire after [`RETENTION`].
    pub(crate) fn pin(&mut self, start: Timestamp) {
        self.pins.insert(start);
    }

    /// Records a successful scrape taken at `at`.
    pub(crate) fn record(&mut self, at: Timestamp, scraped: HashMap<SeriesKey, f64>) {
        let previous = self.last_scrape.replace(at);
        self.pins.retain(|&pin| at.duration_since(pin) < RETENTION);
        for (key, raw) in scraped {
            match self.series.get_mut(&key) {
                Some(series) => series.observe(at, raw, &self.pins),
                None => {
                    let series = match previous {
                        Some(previous) => SeriesHistory::born(previous, at, raw),
                        None => SeriesHistory::baseline(at, raw),
                    };
                    self.series.insert(key, series);
                }
            }
        }
        self.series.retain(|_, series| at.duration_since(series.last_seen) < RETENTION);
    }

    /// The reset-aware increase of every series since `start`.
    pub(crate) fn increases(&self, start: Timestamp) -> impl Iterator<Item = (&SeriesKey, f64)> {
        self.series.iter().map(move |(key, series)| (key, series.increase_since(start)))
    }

    /// The reset-aware increase of every series between `from` and `to`.
    pub(crate) fn increases_between(&self, from: Timestamp, to: Timestamp) -> impl Iterator<Item = (&SeriesKey, f64)> {
        self.series.iter().map(move |(key, series)| (key, series.total_at(to) - series.total_at(from)))
    }
}

/// Sums the increases of one side's series (across gateways and any other
/// label) into its metrics; the p99 comes from the summed bucket increases.
pub(crate) fn side_metrics<'a>(
    increases: impl IntoIterator<Item = (&'a SeriesKey, f64)>,
    pipeline: &str,
    side: &SideSeries<'_>,
) -> SideMetrics {
    let bucket_name = format!("{}_bucket", side.latency);
    let (mut impressions, mut clicks, mut requests, mut errors) = (0.0, 0.0, 0.0, 0.0);
    let mut groups: BTreeMap<u16, (f64, f64)> = BTreeMap::new();
    // `sum by (le)`: one bucket per bound, across gateways and other labels.
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for (key, increase) in increases {
        let label = |name: &str| key.labels.get(name).map(String::as_str);
        if label(PIPELINE_LABEL) != Some(pipeline) || label(VERSION_LABEL) != Some(side.version) {
            continue;
        }
        let name = Some(key.name.as_str());
        if name == side.impressions {
            impressions += increase;
            if let Some(group) = user_group(key) {
                groups.entry(group).or_default().0 += increase;
            }
        } else if name == side.clicks {
            clicks += increase;
            if let Some(group) = user_group(key) {
                groups.entry(group).or_default().1 += increase;
            }
        } else if key.name == side.requests {
            requests += increase;
        } else if key.name == side.errors {
            errors += increase;
        } else if key.name == bucket_name {
            // `le` was checked by `snapshot` when the sample was recorded.
            if let Some(le) = label(LE_LABEL).and_then(parse_float) {
                match buckets.iter_mut().find(|(bound, _)| *bound == le) {
                    Some(bucket) => bucket.1 += increase,
                    None => buckets.push((le, increase)),
                }
            }
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    // No observation in the window: no histogram, as for a side without series.
    if buckets.iter().all(|(_, n)| count(*n) == 0) {
        buckets.clear();
    }
    let latency_count = buckets.iter().find(|(le, _)| *le == f64::INFINITY).map_or(0, |(_, n)| count(*n));
    SideMetrics {
        impressions: count(impressions),
        clicks: count(clicks),
        requests: count(requests),
        errors: count(errors),
        latency: buckets.into_iter().filter(|(le, _)| le.is_finite()).map(|(le, n)| (le, count(n))).collect(),
        latency_count,
        groups: to_groups(groups),
    }
}

/// Impressions and clicks per user group of every version of `pipeline`:
/// the pre-rollout counts CUPED reads.
pub(crate) fn group_counts<'a>(increases: impl IntoIterator<Item = (&'a SeriesKey, f64)>, pipeline: &str) -> Groups {
    let mut groups: BTreeMap<u16, (f64, f64)> = BTreeMap::new();
    for (key, increase) in increases {
        if key.labels.get(PIPELINE_LABEL).map(String::as_str) != Some(pipeline) {
            continue;
        }
        let Some(group) = user_group(key) else { continue };
        if key.name == signals::IMPRESSIONS {
            groups.entry(group).or_default().0 += increase;
        } else if key.name == signals::CLICKS {
            groups.entry(group).or_default().1 += increase;
        }
    }
    to_groups(groups)
}

/// The series' user group, when it has a valid one.
fn user_group(key: &SeriesKey) -> Option<u16> {
    let group = key.labels.get(USER_GROUP_LABEL)?.parse::<u16>().ok()?;
    (u64::from(group) < USER_GROUPS).then_some(group)
}

fn to_groups(sums: BTreeMap<u16, (f64, f64)>) -> Groups {
    sums.into_iter()
        .map(|(group, (impressions, clicks))| {
            (group, GroupCounts { impressions: count(impressions), clicks: count(clicks) })
        })
        .filter(|(_, counts)| counts.impressions > 0 || counts.clicks > 0)
        .collect()
}

/// Increases of counters whose raw values are whole are whole too; rounding
/// only absorbs float error.
fn count(increase: f64) -> u64 {
    increase.round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_767_225_600;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(T0 + seconds).expect("valid timestamp")
    }

    fn key(name: &str, version: &str, extra: &[(&str, &str)]) -> SeriesKey {
        let labels = [(PIPELINE_LABEL, "home"), (VERSION_LABEL, version)]
            .iter()
            .chain(extra)
            .map(|&(k, v)| (k.into(), v.into()))
            .collect();
        SeriesKey { name: name.into(), labels }
    }

    fn clicks(version: &str) -> SeriesKey {
        key(signals::CLICKS, version, &[])
    }

    fn scrape(history: &mut TargetHistory, t: i64, values: &[(SeriesKey, f64)]) {
        history.record(at(t), values.iter().cloned().collect());
    }

    fn increase(history: &TargetHistory, series: &SeriesKey, start: i64) -> f64 {
        history.increases(at(start)).find(|(k, _)| *k == series).map_or(f64::NAN, |(_, v)| v)
    }

    #[test]
    fn increase_counts_from_the_last_scrape_at_or_before_start() {
        let mut h = TargetHistory::default();
        let c = clicks("v1");
        scrape(&mut h, 0, &[(c.clone(), 100.0)]);
        scrape(&mut h, 10, &[(c.clone(), 110.0)]);
        scrape(&mut h, 20, &[(c.clone(), 125.0)]);
        assert_eq!(increase(&h, &c, 10), 15.0);
        assert_eq!(increase(&h, &c, 15), 15.0, "start between scrapes: from the one before");
        assert_eq!(increase(&h, &c, 9), 25.0);
        assert_eq!(increase(&h, &c, 20), 0.0);
    }

    #[test]
    fn first_scrape_is_the_baseline() {
        // The source (re)started after the window's start: counts before its
        // first scrape are unknown and not attributed to the window.
        let mut h = TargetHistory::default();
        let c = clicks("v1");
        scrape(&mut h, 100, &[(c.clone(), 500.0)]);
        scrape(&mut h, 110, &[(c.clone(), 520.0)]);
        assert_eq!(increase(&h, &c, 0), 20.0);
    }

    #[test]
    fn series_born_after_a_scrape_counts_from_zero() {
        let mut h = TargetHistory::default();
        let (v1, v2) = (clicks("v1"), clicks("v2"));
        scrape(&mut h, 0, &[(v1.clone(), 1.0)]);
        scrape(&mut h, 10, &[(v1.clone(), 1.0), (v2.clone(), 7.0)]);
        assert_eq!(increase(&h, &v2, 0), 7.0);
        assert_eq!(increase(&h, &v2, 5), 7.0, "born after 0, so after any later start up to 10");
        assert_eq!(increase(&h, &v2, 10), 0.0);
    }

    #[test]
    fn a_drop_is_a_counter_reset() {
        let mut h = TargetHistory::default();
        let c = clicks("v1");
        scrape(&mut h, 0, &[(c.clone(), 100.0)]);
        scrape(&mut h, 10, &[(c.clone(), 105.0)]);
        // Restarted, then counted 3.
        scrape(&mut h, 20, &[(c.clone(), 3.0)]);
        scrape(&mut h, 30, &[(c.clone(), 10.0)]);
        assert_eq!(increase(&h, &c, 0), 5.0 + 3.0 + 7.0);
        assert_eq!(increase(&h, &c, 10), 3.0 + 7.0);
        // Absent for a scrape (restarting), back with a smaller value.
        scrape(&mut h, 40, &[]);
        scrape(&mut h, 50, &[(c.clone(), 2.0)]);
        assert_eq!(increase(&h, &c, 30), 2.0);
    }

    /// A canary step that started 30 minutes into a 2-hour history of
    /// scrapes every 10 s, looked at once soon after it started: at the end
    /// its window still counts exactly its own clicks, not earlier steps'.
    #[test]
    fn windows_an_analysis_asked_about_stay_exact_however_long() {
        let mut h = TargetHistory::default();
        let c = clicks("v1");
        let step_start = 1_800;
        for t in (0..=7_200).step_by(10) {
            if t == step_start + 30 {
                h.pin(at(step_start));
            }
            scrape(&mut h, t, &[(c.clone(), (t / 10) as f64)]);
        }
        assert!(h.series[&c].points.len() <= MAX_POINTS + 1, "{}", h.series[&c].points.len());
        assert_eq!(increase(&h, &c, step_start), f64::from((7_200 - 1_800) / 10));
    }

    #[test]
    fn history_is_bounded_and_windows_nobody_asked_about_blur_earlier() {
        let mut h = TargetHistory::default();
        let c = clicks("v1");
        for t in 0..2000 {
            scrape(&mut h, t, &[(c.clone(), t as f64)]);
        }
        let series = &h.series[&c];
        assert!(series.points.len() <= MAX_POINTS, "{}", series.points.len());
        assert_eq!(series.points[0], (at(0), 0.0), "the first point is kept");
        assert_eq!(increase(&h, &c, 1990), 9.0, "recent windows stay exact");
        assert_eq!(increase(&h, &c, 0), 1999.0, "the whole history stays exact");
        let old = increase(&h, &c, 10);
        assert!((1989.0..=1999.0).contains(&old), "{old}");
        // Idle scrapes add no point.
        let before = h.series[&c].points.len();
        scrape(&mut h, 2000, &[(c.clone(), 1999.0)]);
        assert_eq!(h.series[&c].points.len(), before);
    }

    #[test]
    fn user_groups_are_counted_per_side_and_before_the_rollout_across_versions() {
        let mut h = TargetHistory::default();
        let grouped = |name: &str, version: &str, group: &str| key(name, version, &[(USER_GROUP_LABEL, group)]);
        let series = [
            grouped(signals::IMPRESSIONS, "v1", "7"),
            grouped(signals::CLICKS, "v1", "7"),
            grouped(signals::IMPRESSIONS, "v2", "3"),
            grouped(signals::IMPRESSIONS, "v1", "bogus"),
        ];
        // Each series counts 10 a second from t = 0 to t = 100.
        for t in (0..=100).step_by(10) {
            let values: Vec<(SeriesKey, f64)> = series.iter().map(|s| (s.clone(), t as f64)).collect();
            scrape(&mut h, t, &values);
        }
        let metrics = side_metrics(h.increases(at(50)), "home", &SideSeries::served("v1"));
        assert_eq!(metrics.groups, Groups::from([(7, GroupCounts { impressions: 50, clicks: 50 })]));
        assert_eq!(metrics.impressions, 100, "the total counts a series without a valid group too");
        let before = group_counts(h.increases_between(at(10), at(30)), "home");
        assert_eq!(
            before,
            Groups::from([
                (3, GroupCounts { impressions: 20, clicks: 0 }),
                (7, GroupCounts { impressions: 20, clicks: 20 })
            ])
        );
        assert_eq!(group_counts(h.increases_between(at(10), at(30)), "other"), Groups::new());
    }

    #[test]
    fn series_gone_for_the_retention_are_forgotten() {
        let mut h = TargetHistory::default();
        let (v1, v2) = (clicks("v1"), clicks("v2"));
        scrape(&mut h, 0, &[(v1.clone(), 1.0), (v2.clone(), 1.0)]);
        let day = RETENTION.as_secs();
        scrape(&mut h, day - 1, &[(v1.clone(), 2.0)]);
        assert!(h.series.contains_key(&v2));
        scrape(&mut h, day, &[(v1.clone(), 2.0)]);
        assert!(!h.series.contains_key(&v2));
        assert!(h.series.contains_key(&v1), "idle but still exposed");
        assert_eq!(h.last_scrape(), Some(at(day)));
    }

    fn sample(line: usize, name: &str, labels: &[(&str, &str)], value: f64) -> Sample {
        Sample { line, name: name.into(), labels: labels.iter().map(|&(k, v)| (k.into(), v.into())).collect(), value }
    }

    #[test]
    fn snapshot_rejects_what_no_counter_can_be() {
        let bucket = "reco_recommend_duration_seconds_bucket";
        let bad = [
            (vec![sample(4, "c", &[], -1.0)], "c is a count but has value -1"),
            (vec![sample(4, "c", &[], f64::NAN)], "c is a count but has value NaN"),
            (vec![sample(4, bucket, &[], 1.0)], &format!("bucket of {bucket} has no numeric le label (le=None)")),
            (
                vec![sample(4, bucket, &[("le", "fast")], 1.0)],
                &format!("bucket of {bucket} has no numeric le label (le=Some(\"fast\"))"),
            ),
            (
                vec![sample(3, "c", &[("a", "1")], 1.0), sample(4, "c", &[("a", "1")], 2.0)],
                "the same series appears twice",
            ),
        ];
        for (samples, reason) in bad {
            assert_eq!(snapshot(samples), Err(ParseError { line: 4, reason: reason.to_string() }));
        }
        let good = snapshot(vec![sample(1, bucket, &[("le", "+Inf")], 3.0), sample(2, "c", &[("a", "1")], 2.0)]);
        assert_eq!(good.map(|s| s.len()), Ok(2));
    }

    #[test]
    fn side_metrics_sum_matching_series_only() {
        let bucket = |version: &str, le: &str| key("reco_recommend_duration_seconds_bucket", version, &[("le", le)]);
        let increases = [
            (key(signals::IMPRESSIONS, "v1", &[]), 100.0),
            (key(signals::CLICKS, "v1", &[]), 6.0),
            // Another label (a second gateway's instance label): summed.
            (key(signals::CLICKS, "v1", &[("instance", "b")]), 4.0),
            (key(signals::REQUESTS, "v1", &[]), 50.0),
            (key(signals::ERRORS, "v1", &[]), 1.0),
            (bucket("v1", "0.1"), 40.0),
            (bucket("v1", "0.5"), 50.0),
            (bucket("v1", "+Inf"), 50.0),
            (key("reco_recommend_duration_seconds_bucket", "v1", &[("le", "0.1"), ("instance", "b")]), 40.0),
            (key("reco_recommend_duration_seconds_bucket", "v1", &[("le", "0.5"), ("instance", "b")]), 50.0),
            (key("reco_recommend_duration_seconds_bucket", "v1", &[("le", "+Inf"), ("instance", "b")]), 50.0),
            // Other version, other pipeline, shadow series: not this side.
            (key(signals::CLICKS, "v2", &[]), 1000.0),
            (
                SeriesKey {
                    name: signals::CLICKS.into(),
                    labels: [(PIPELINE_LABEL, "other"), (VERSION_LABEL, "v1")]
                        .iter()
                        .map(|&(k, v)| (k.into(), v.into()))
                        .collect(),
                },
                1000.0,
            ),
            (key(signals::SHADOW_REQUESTS, "v1", &[]), 1000.0),
        ];
        let metrics = side_metrics(increases.iter().map(|(k, v)| (k, *v)), "home", &SideSeries::served("v1"));
        // Buckets summed by bound over both instances: rank 99 of 100 lies
        // in (0.1, 0.5] at 19 of its 20.
        let p99 = metrics.p99_latency_seconds().expect("observations");
        assert!((p99 - (0.1 + 0.4 * 19.0 / 20.0)).abs() < 1e-9, "{p99}");
        assert_eq!(
            metrics,
            SideMetrics {
                impressions: 100,
                clicks: 10,
                requests: 50,
                errors: 1,
                latency: vec![(0.1, 80), (0.5, 100)],
                latency_count: 100,
                groups: Groups::new()
            }
        );
        let shadow = side_metrics(increases.iter().map(|(k, v)| (k, *v)), "home", &SideSeries::shadow("v1"));
        assert_eq!(shadow, SideMetrics { requests: 1000, ..SideMetrics::default() });
    }
}

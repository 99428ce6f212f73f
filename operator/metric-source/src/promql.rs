//! Pure half of the Prometheus source: building the PromQL of a window and
//! reading the API's answers. No I/O, so both are unit-tested exactly; the
//! queries themselves are documented in [`crate::prometheus`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use jiff::Timestamp;
use reco_contracts::metrics::{self as signals, PIPELINE_LABEL, USER_GROUP_LABEL, VERSION_LABEL};
use reco_contracts::routing::USER_GROUPS;
use reco_rollout::{GroupCounts, Groups};
use serde::Deserialize;

use crate::error::QueryFailure;
use crate::{SideSeries, WindowQuery};

/// The PromQL of one side of a window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SideQueries {
    /// Per user group; `None` for a shadow candidate: its answers are never shown.
    pub impressions: Option<String>,
    pub clicks: Option<String>,
    pub requests: String,
    pub errors: String,
    /// The latency histogram's buckets, by `le`.
    pub latency: String,
}

/// The PromQL of the pre-rollout counts per user group, of every version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BeforeQueries {
    pub impressions: String,
    pub clicks: String,
}

/// The PromQL of a window, evaluated at [`WindowQueries::time`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowQueries {
    pub stable: SideQueries,
    pub candidate: SideQueries,
    pub before: Option<BeforeQueries>,
    /// Range of every `increase()`, in whole seconds.
    pub range_seconds: u64,
    /// Evaluation time, as the API's `time` parameter (Unix seconds, ms precision).
    pub time: String,
}

/// Label matchers every query carries beyond pipeline and version: the
/// pipeline's namespace, and the scrape job of its gateways when known.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Scope<'a> {
    pipeline: &'a str,
    namespace: &'a str,
    job: Option<&'a str>,
}

impl Scope<'_> {
    /// `{pipeline="P",namespace="N"[,job="J"][,model_version="V"]}`.
    fn selector(&self, version: Option<&str>) -> String {
        let mut out = format!(
            "{PIPELINE_LABEL}={},{NAMESPACE_LABEL}={}",
            escape_promql_string(self.pipeline),
            escape_promql_string(self.namespace)
        );
        if let Some(job) = self.job {
            let _ = write!(out, ",{JOB_LABEL}={}", escape_promql_string(job));
        }
        if let Some(version) = version {
            let _ = write!(out, ",{VERSION_LABEL}={}", escape_promql_string(version));
        }
        format!("{{{out}}}")
    }
}

/// Label Prometheus' Kubernetes discovery puts the target's namespace in.
const NAMESPACE_LABEL: &str = "namespace";
/// Label naming a target's scrape job.
const JOB_LABEL: &str = "job";

/// Builds the queries of a window: ranges of `now − start` rounded up to a
/// whole second, and at least `min_range` (so a look right after a step
/// starts still covers the two samples `increase()` needs). `job`, when
/// given, scopes every query to the gateways' scrape job.
pub fn window_queries(q: &WindowQuery, min_range: Duration, job: Option<&str>) -> WindowQueries {
    let range_seconds = range_seconds(q.start, q.now, min_range);
    let scope = Scope { pipeline: &q.pipeline, namespace: &q.namespace, job };
    let [stable, candidate] = q.sides();
    let before = q.before.map(|(from, to)| {
        let range = range_seconds_exact(from, to).max(1);
        let at = api_time(to);
        let counter = |metric: &str| {
            format!("sum by ({USER_GROUP_LABEL}) (increase({metric}{}[{range}s] @ {at}))", scope.selector(None))
        };
        BeforeQueries { impressions: counter(signals::IMPRESSIONS), clicks: counter(signals::CLICKS) }
    });
    WindowQueries {
        stable: side_queries(&scope, &stable, range_seconds),
        candidate: side_queries(&scope, &candidate, range_seconds),
        before,
        range_seconds,
        time: api_time(q.now),
    }
}

fn range_seconds(start: Timestamp, now: Timestamp, min_range: Duration) -> u64 {
    let min_s = min_range.as_millis().div_ceil(1000);
    range_seconds_exact(start, now).max(u64::try_from(min_s).unwrap_or(u64::MAX)).max(1)
}

/// `now − start` in whole seconds, rounded up.
fn range_seconds_exact(start: Timestamp, now: Timestamp) -> u64 {
    let window_ms = u64::try_from(now.as_millisecond() - start.as_millisecond()).unwrap_or(0);
    window_ms.div_ceil(1000)
}

/// Unix seconds with millisecond precision: what the API takes, and the
/// precision of its sample timestamps.
fn api_time(t: Timestamp) -> String {
    let ms = t.as_millisecond();
    let sign = if ms < 0 { "-" } else { "" };
    let abs = ms.unsigned_abs();
    format!("{sign}{}.{:03}", abs / 1000, abs % 1000)
}

fn side_queries(scope: &Scope<'_>, side: &SideSeries<'_>, range_seconds: u64) -> SideQueries {
    let selector = |metric: &str| format!("{metric}{}[{range_seconds}s]", scope.selector(Some(side.version)));
    let by_group = |metric: &str| format!("sum by ({USER_GROUP_LABEL}) (increase({}))", selector(metric));
    let counter = |metric: &str| format!("sum(increase({}))", selector(metric));
    SideQueries {
        impressions: side.impressions.map(by_group),
        clicks: side.clicks.map(by_group),
        requests: counter(side.requests),
        errors: counter(side.errors),
        latency: format!("sum by (le) (increase({}))", selector(&format!("{}_bucket", side.latency))),
    }
}

/// A PromQL double-quoted string literal holding exactly `value`.
///
/// Label values come from user-named objects (pipelines, model versions):
/// quotes and backslashes are escaped so a hostile name cannot close the
/// string and inject PromQL, and control characters are written as escapes
/// the PromQL lexer accepts (it rejects a raw newline in a string).
pub fn escape_promql_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                // PromQL, like Go, reads `\uXXXX`; control characters are
                // all in the Basic Multilingual Plane.
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The body of a Prometheus API answer (`/api/v1/query`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    status: String,
    data: Option<AnswerData>,
    error_type: Option<String>,
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnswerData {
    result_type: String,
    result: serde_json::Value,
}

#[derive(Deserialize)]
struct VectorSample {
    #[serde(default)]
    metric: std::collections::BTreeMap<String, String>,
    /// `[<unix seconds>, "<value>"]`: the value is a string so NaN and ±Inf fit.
    value: (f64, String),
}

/// Reads the answer to an instant query whose result is a vector.
fn parse_vector(status: u16, body: &[u8]) -> Result<Vec<VectorSample>, QueryFailure> {
    let answer: Answer = match serde_json::from_slice(body) {
        Ok(answer) => answer,
        Err(e) if (200..300).contains(&status) => {
            return Err(QueryFailure::Malformed(format!("not Prometheus API JSON: {e}")));
        }
        Err(_) => {
            return Err(QueryFailure::Http { status, detail: snippet(body) });
        }
    };
    if answer.status == "error" {
        return Err(QueryFailure::Rejected {
            error_type: answer.error_type.unwrap_or_else(|| "unknown".into()),
            error: answer.error.unwrap_or_default(),
        });
    }
    if !(200..300).contains(&status) {
        return Err(QueryFailure::Http { status, detail: snippet(body) });
    }
    if answer.status != "success" {
        return Err(QueryFailure::Malformed(format!("unknown status {:?}", answer.status)));
    }
    let data = answer.data.ok_or_else(|| QueryFailure::Malformed("success without data".into()))?;
    if data.result_type != "vector" {
        return Err(QueryFailure::Malformed(format!("result type {:?}, expected \"vector\"", data.result_type)));
    }
    serde_json::from_value(data.result).map_err(|e| QueryFailure::Malformed(format!("vector result: {e}")))
}

/// A sample's value as a count: whole (`increase()` extrapolates, so it
/// answers fractions; the analysis counts events) and not negative.
fn count_of(sample: &VectorSample) -> Result<u64, QueryFailure> {
    let text = &sample.value.1;
    let value: f64 =
        text.parse().map_err(|_| QueryFailure::Malformed(format!("sample value {text:?} is not a number")))?;
    if value.is_finite() && value >= 0.0 {
        Ok(value.round() as u64)
    } else {
        Err(QueryFailure::Malformed(format!("count {value} is not a non-negative number")))
    }
}

/// Reads a counter query's answer: a whole non-negative count, 0 when no
/// series matched (no traffic yet).
pub(crate) fn parse_count(status: u16, body: &[u8]) -> Result<u64, QueryFailure> {
    match parse_vector(status, body)?.as_slice() {
        [] => Ok(0),
        [sample] => count_of(sample),
        more => {
            Err(QueryFailure::Malformed(format!("{} samples, expected at most one (the query aggregates)", more.len())))
        }
    }
}

/// Reads a `sum by (user_group)` answer: counts per group (none: no traffic).
pub(crate) fn parse_groups(status: u16, body: &[u8]) -> Result<BTreeMap<u16, u64>, QueryFailure> {
    let mut groups = BTreeMap::new();
    for sample in parse_vector(status, body)? {
        let label = sample.metric.get(USER_GROUP_LABEL);
        let group = label
            .and_then(|group| group.parse::<u16>().ok())
            .filter(|group| u64::from(*group) < USER_GROUPS)
            .ok_or_else(|| {
            QueryFailure::Malformed(format!("sample with {USER_GROUP_LABEL}={label:?}, not a user group"))
        })?;
        if groups.insert(group, count_of(&sample)?).is_some() {
            return Err(QueryFailure::Malformed(format!("{USER_GROUP_LABEL}={group} appears twice")));
        }
    }
    Ok(groups)
}

/// Reads a `sum by (le)` answer: the cumulative histogram as the analysis
/// takes it, finite bounds ascending, and the `+Inf` count (0 without one).
pub(crate) fn parse_histogram(status: u16, body: &[u8]) -> Result<(Vec<(f64, u64)>, u64), QueryFailure> {
    let mut buckets = Vec::new();
    let mut total = 0;
    for sample in parse_vector(status, body)? {
        let label = sample.metric.get("le");
        let bound = label
            .and_then(|le| crate::exposition::parse_float(le))
            .filter(|bound| !bound.is_nan())
            .ok_or_else(|| QueryFailure::Malformed(format!("bucket with le={label:?}, not a bound")))?;
        let count = count_of(&sample)?;
        if bound == f64::INFINITY {
            total = count;
        } else {
            buckets.push((bound, count));
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    // No observation in the window: no histogram, as for a side without series.
    if total == 0 && buckets.iter().all(|(_, count)| *count == 0) {
        buckets.clear();
    }
    Ok((buckets, total))
}

/// Impressions and clicks per group, from the two `sum by (user_group)` answers.
pub(crate) fn zip_groups(impressions: &BTreeMap<u16, u64>, clicks: &BTreeMap<u16, u64>) -> Groups {
    impressions
        .keys()
        .chain(clicks.keys())
        .map(|&group| {
            let counts = GroupCounts {
                impressions: impressions.get(&group).copied().unwrap_or(0),
                clicks: clicks.get(&group).copied().unwrap_or(0),
            };
            (group, counts)
        })
        .collect()
}

/// The start of a body that is not the API's JSON, for the error message.
fn snippet(body: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX)]).trim().to_string();
    if body.len() > MAX { format!("{text}…") } else { text }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(start: &str, now: &str, shadow: bool) -> WindowQuery {
        WindowQuery {
            pipeline: "home".into(),
            namespace: "shop".into(),
            stable: "v1".into(),
            candidate: "v2".into(),
            candidate_is_shadow: shadow,
            start: start.parse().expect("valid timestamp"),
            now: now.parse().expect("valid timestamp"),
            before: None,
        }
    }

    #[test]
    fn canary_window_queries() {
        let q = query("2026-01-01T00:00:00Z", "2026-01-01T00:10:00Z", false);
        let w = window_queries(&q, Duration::from_secs(60), None);
        assert_eq!(w.range_seconds, 600);
        assert_eq!(w.time, "1767226200.000");
        assert_eq!(
            w.stable,
            SideQueries {
                impressions: Some(
                    r#"sum by (user_group) (increase(reco_impressions_total{pipeline="home",namespace="shop",model_version="v1"}[600s]))"#.into()
                ),
                clicks: Some(r#"sum by (user_group) (increase(reco_clicks_total{pipeline="home",namespace="shop",model_version="v1"}[600s]))"#.into()),
                requests: r#"sum(increase(reco_recommend_requests_total{pipeline="home",namespace="shop",model_version="v1"}[600s]))"#
                    .into(),
                errors: r#"sum(increase(reco_recommend_errors_total{pipeline="home",namespace="shop",model_version="v1"}[600s]))"#
                    .into(),
                latency: r#"sum by (le) (increase(reco_recommend_duration_seconds_bucket{pipeline="home",namespace="shop",model_version="v1"}[600s]))"#.into(),
            }
        );
        assert_eq!(
            w.candidate.clicks.as_deref(),
            Some(
                r#"sum by (user_group) (increase(reco_clicks_total{pipeline="home",namespace="shop",model_version="v2"}[600s]))"#
            )
        );
        assert_eq!(w.before, None);
    }

    #[test]
    fn a_job_scopes_every_query_and_cuped_reads_every_version_before_the_canary() {
        let mut q = query("2026-01-01T01:00:00Z", "2026-01-01T01:10:00Z", false);
        q.before =
            Some(("2026-01-01T00:00:00Z".parse().expect("valid"), "2026-01-01T01:00:00Z".parse().expect("valid")));
        let w = window_queries(&q, Duration::from_secs(60), Some("reco-gateway"));
        assert_eq!(
            w.stable.requests,
            r#"sum(increase(reco_recommend_requests_total{pipeline="home",namespace="shop",job="reco-gateway",model_version="v1"}[600s]))"#
        );
        assert_eq!(
            w.before,
            Some(BeforeQueries {
                impressions: r#"sum by (user_group) (increase(reco_impressions_total{pipeline="home",namespace="shop",job="reco-gateway"}[3600s] @ 1767229200.000))"#.into(),
                clicks: r#"sum by (user_group) (increase(reco_clicks_total{pipeline="home",namespace="shop",job="reco-gateway"}[3600s] @ 1767229200.000))"#.into(),
            })
        );
    }

    #[test]
    fn shadow_candidate_reads_the_shadow_series_without_impressions() {
        let q = query("2026-01-01T00:00:00Z", "2026-01-01T00:10:00Z", true);
        let w = window_queries(&q, Duration::from_secs(60), None);
        assert_eq!(
            w.candidate,
            SideQueries {
                impressions: None,
                clicks: None,
                requests: r#"sum(increase(reco_shadow_requests_total{pipeline="home",namespace="shop",model_version="v2"}[600s]))"#.into(),
                errors: r#"sum(increase(reco_shadow_errors_total{pipeline="home",namespace="shop",model_version="v2"}[600s]))"#.into(),
                latency: r#"sum by (le) (increase(reco_shadow_duration_seconds_bucket{pipeline="home",namespace="shop",model_version="v2"}[600s]))"#.into(),
            }
        );
        assert!(w.stable.impressions.is_some(), "stable is always served");
    }

    #[test]
    fn range_rounds_up_and_respects_the_minimum() {
        let q = query("2026-01-01T00:00:00Z", "2026-01-01T00:10:00.001Z", false);
        assert_eq!(window_queries(&q, Duration::from_secs(60), None).range_seconds, 601);
        assert_eq!(window_queries(&q, Duration::from_secs(60), None).time, "1767226200.001");
        let short = query("2026-01-01T00:00:00Z", "2026-01-01T00:00:05Z", false);
        assert_eq!(window_queries(&short, Duration::from_secs(120), None).range_seconds, 120);
        let empty = query("2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z", false);
        assert_eq!(window_queries(&empty, Duration::ZERO, None).range_seconds, 1, "PromQL needs a positive range");
    }

    #[test]
    fn escaping_keeps_hostile_names_inside_the_string() {
        assert_eq!(escape_promql_string("plain-name.v1"), r#""plain-name.v1""#);
        assert_eq!(escape_promql_string(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(escape_promql_string("l1\nl2\r\t\u{1}"), r#""l1\nl2\r\t\u0001""#);
        assert_eq!(escape_promql_string("λ"), "\"λ\"", "UTF-8 stays literal");
        // A quote, then an attempt to close the selector and add a clause.
        let hostile = r#"x"} or vector(1) or up{a="\"#;
        let mut q = query("2026-01-01T00:00:00Z", "2026-01-01T00:10:00Z", false);
        q.pipeline = hostile.into();
        let clicks = window_queries(&q, Duration::ZERO, None).stable.clicks.expect("served side");
        assert_eq!(
            clicks,
            r#"sum by (user_group) (increase(reco_clicks_total{pipeline="x\"} or vector(1) or up{a=\"\\",namespace="shop",model_version="v1"}[600s]))"#
        );
        assert_eq!(unescape(&escape_promql_string(hostile)), hostile);
    }

    /// The PromQL lexer's reading of a double-quoted string (the escapes we
    /// emit), to check that escaping round-trips.
    fn unescape(literal: &str) -> String {
        let inner = literal.strip_prefix('"').and_then(|s| s.strip_suffix('"')).expect("quoted");
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            assert_ne!(c, '"', "unescaped quote would end the string");
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next().expect("escape is complete") {
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    let code = u32::from_str_radix(&hex, 16).expect("hex escape");
                    out.push(char::from_u32(code).expect("valid char"));
                }
                other => out.push(other),
            }
        }
        out
    }

    #[test]
    fn escaping_round_trips_every_control_character() {
        let all: String = (0u32..0x80).filter_map(char::from_u32).chain(['\u{85}', 'é']).collect();
        assert_eq!(unescape(&escape_promql_string(&all)), all);
    }

    fn vector(value: &str) -> Vec<u8> {
        format!(
            r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{}},"value":[1767226200.5,"{value}"]}}]}}}}"#
        )
        .into_bytes()
    }

    const EMPTY: &[u8] = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;

    #[test]
    fn counts_are_rounded_and_empty_is_zero() {
        assert_eq!(parse_count(200, &vector("41.6")), Ok(42));
        assert_eq!(parse_count(200, &vector("0")), Ok(0));
        assert_eq!(parse_count(200, EMPTY), Ok(0));
        assert!(matches!(parse_count(200, &vector("NaN")), Err(QueryFailure::Malformed(_))));
        assert!(matches!(parse_count(200, &vector("-3")), Err(QueryFailure::Malformed(_))));
        assert!(matches!(parse_count(200, &vector("+Inf")), Err(QueryFailure::Malformed(_))));
    }

    fn labelled(samples: &[(&str, &str, &str)]) -> Vec<u8> {
        let result: Vec<String> = samples
            .iter()
            .map(|(label, key, value)| {
                format!(r#"{{"metric":{{"{label}":"{key}"}},"value":[1767226200.5,"{value}"]}}"#)
            })
            .collect();
        format!(r#"{{"status":"success","data":{{"resultType":"vector","result":[{}]}}}}"#, result.join(","))
            .into_bytes()
    }

    #[test]
    fn groups_are_read_by_label_and_bad_labels_are_refused() {
        let answer = labelled(&[("user_group", "7", "12.4"), ("user_group", "999", "3")]);
        assert_eq!(parse_groups(200, &answer), Ok(BTreeMap::from([(7, 12), (999, 3)])));
        assert_eq!(parse_groups(200, EMPTY), Ok(BTreeMap::new()));
        for bad in [("user_group", "1000", "1"), ("user_group", "x", "1"), ("other", "1", "1")] {
            assert!(matches!(parse_groups(200, &labelled(&[bad])), Err(QueryFailure::Malformed(_))), "{bad:?}");
        }
        let twice = labelled(&[("user_group", "7", "1"), ("user_group", "7", "2")]);
        assert!(matches!(parse_groups(200, &twice), Err(QueryFailure::Malformed(m)) if m.contains("twice")));
    }

    #[test]
    fn histograms_are_sorted_with_the_inf_count_apart() {
        let answer = labelled(&[("le", "+Inf", "10"), ("le", "0.5", "9"), ("le", "0.1", "4")]);
        assert_eq!(parse_histogram(200, &answer), Ok((vec![(0.1, 4), (0.5, 9)], 10)));
        assert_eq!(parse_histogram(200, EMPTY), Ok((Vec::new(), 0)));
        let idle = labelled(&[("le", "+Inf", "0"), ("le", "0.5", "0")]);
        assert_eq!(parse_histogram(200, &idle), Ok((Vec::new(), 0)), "no observation, no histogram");
        assert!(matches!(parse_histogram(200, &labelled(&[("le", "NaN", "1")])), Err(QueryFailure::Malformed(_))));
    }

    #[test]
    fn errors_are_classified() {
        let rejected = br#"{"status":"error","errorType":"bad_data","error":"parse error at char 5"}"#;
        assert_eq!(
            parse_count(400, rejected),
            Err(QueryFailure::Rejected { error_type: "bad_data".into(), error: "parse error at char 5".into() })
        );
        assert!(matches!(parse_count(200, rejected), Err(QueryFailure::Rejected { .. })));
        assert_eq!(
            parse_count(502, b"<html>Bad Gateway</html>\n"),
            Err(QueryFailure::Http { status: 502, detail: "<html>Bad Gateway</html>".into() })
        );
        assert!(matches!(parse_count(500, &vector("1")), Err(QueryFailure::Http { status: 500, .. })));
        assert!(
            matches!(parse_count(200, b"garbage"), Err(QueryFailure::Malformed(m)) if m.contains("not Prometheus API JSON"))
        );
        let matrix = br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert!(matches!(parse_count(200, matrix), Err(QueryFailure::Malformed(m)) if m.contains("matrix")));
        let two = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"1"]},{"metric":{},"value":[1,"2"]}]}}"#;
        assert!(matches!(parse_count(200, two), Err(QueryFailure::Malformed(m)) if m.contains("2 samples")));
        let bad_sample = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":"1"}]}}"#;
        assert!(matches!(parse_count(200, bad_sample), Err(QueryFailure::Malformed(_))));
        let no_data = br#"{"status":"success"}"#;
        assert!(matches!(parse_count(200, no_data), Err(QueryFailure::Malformed(_))));
    }
}

//! Pure half of the Prometheus source: building the PromQL of a window and
//! reading the API's answers. No I/O, so both are unit-tested exactly; the
//! queries themselves are documented in [`crate::prometheus`].

use std::fmt::Write as _;
use std::time::Duration;

use jiff::Timestamp;
use reco_contracts::metrics::{PIPELINE_LABEL, VERSION_LABEL};
use serde::Deserialize;

use crate::error::QueryFailure;
use crate::{SideSeries, WindowQuery};

/// The PromQL of one side of a window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SideQueries {
    /// `None` for a shadow candidate: its answers are never shown.
    pub impressions: Option<String>,
    pub clicks: Option<String>,
    pub requests: String,
    pub errors: String,
    pub p99_latency: String,
}

/// The PromQL of a window, evaluated at [`WindowQueries::time`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowQueries {
    pub stable: SideQueries,
    pub candidate: SideQueries,
    /// Range of every `increase()`, in whole seconds.
    pub range_seconds: u64,
    /// Evaluation time, as the API's `time` parameter (Unix seconds, ms precision).
    pub time: String,
}

/// Builds the queries of a window: ranges of `now − start` rounded up to a
/// whole second, and at least `min_range` (so a look right after a step
/// starts still covers the two samples `increase()` needs).
pub fn window_queries(q: &WindowQuery, min_range: Duration) -> WindowQueries {
    let range_seconds = range_seconds(q.start, q.now, min_range);
    let [stable, candidate] = q.sides();
    WindowQueries {
        stable: side_queries(&q.pipeline, &stable, range_seconds),
        candidate: side_queries(&q.pipeline, &candidate, range_seconds),
        range_seconds,
        time: api_time(q.now),
    }
}

fn range_seconds(start: Timestamp, now: Timestamp, min_range: Duration) -> u64 {
    let window_ms = u64::try_from(now.as_millisecond() - start.as_millisecond()).unwrap_or(0);
    let window_s = window_ms.div_ceil(1000);
    let min_s = min_range.as_millis().div_ceil(1000);
    window_s.max(u64::try_from(min_s).unwrap_or(u64::MAX)).max(1)
}

/// Unix seconds with millisecond precision: what the API takes, and the
/// precision of its sample timestamps.
fn api_time(t: Timestamp) -> String {
    let ms = t.as_millisecond();
    let sign = if ms < 0 { "-" } else { "" };
    let abs = ms.unsigned_abs();
    format!("{sign}{}.{:03}", abs / 1000, abs % 1000)
}

fn side_queries(pipeline: &str, side: &SideSeries<'_>, range_seconds: u64) -> SideQueries {
    let selector = |metric: &str| {
        format!(
            "{metric}{{{PIPELINE_LABEL}={},{VERSION_LABEL}={}}}[{range_seconds}s]",
            escape_promql_string(pipeline),
            escape_promql_string(side.version)
        )
    };
    let counter = |metric: &str| format!("sum(increase({}))", selector(metric));
    SideQueries {
        impressions: side.impressions.map(counter),
        clicks: side.clicks.map(counter),
        requests: counter(side.requests),
        errors: counter(side.errors),
        p99_latency: format!(
            "histogram_quantile(0.99, sum by (le) (increase({})))",
            selector(&format!("{}_bucket", side.latency))
        ),
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
    /// `[<unix seconds>, "<value>"]`: the value is a string so NaN and ±Inf fit.
    value: (f64, String),
}

/// Reads the answer to an instant query whose result is at most one sample
/// (our queries aggregate everything away). `Ok(None)`: empty vector, i.e.
/// no series matched.
pub(crate) fn parse_instant_answer(status: u16, body: &[u8]) -> Result<Option<f64>, QueryFailure> {
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
    let samples: Vec<VectorSample> =
        serde_json::from_value(data.result).map_err(|e| QueryFailure::Malformed(format!("vector result: {e}")))?;
    match samples.as_slice() {
        [] => Ok(None),
        [sample] => {
            let text = &sample.value.1;
            text.parse::<f64>()
                .map(Some)
                .map_err(|_| QueryFailure::Malformed(format!("sample value {text:?} is not a number")))
        }
        more => {
            Err(QueryFailure::Malformed(format!("{} samples, expected at most one (the query aggregates)", more.len())))
        }
    }
}

/// Reads a counter query's answer: a whole non-negative count, 0 when no
/// series matched (no traffic yet).
pub(crate) fn parse_count(status: u16, body: &[u8]) -> Result<u64, QueryFailure> {
    match parse_instant_answer(status, body)? {
        None => Ok(0),
        Some(v) if v.is_finite() && v >= 0.0 => {
            // `increase()` extrapolates to the window's edges, so counts come
            // back fractional; the analysis counts events.
            Ok(v.round() as u64)
        }
        Some(v) => Err(QueryFailure::Malformed(format!("count {v} is not a non-negative number"))),
    }
}

/// Reads a `histogram_quantile` answer: `None` when there were no
/// observations (empty vector or NaN).
pub(crate) fn parse_quantile(status: u16, body: &[u8]) -> Result<Option<f64>, QueryFailure> {
    match parse_instant_answer(status, body)? {
        None => Ok(None),
        Some(v) if v.is_nan() => Ok(None),
        Some(v) if v.is_finite() => Ok(Some(v)),
        Some(v) => Err(QueryFailure::Malformed(format!("quantile {v} is not finite"))),
    }
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
            stable: "v1".into(),
            candidate: "v2".into(),
            candidate_is_shadow: shadow,
            start: start.parse().expect("valid timestamp"),
            now: now.parse().expect("valid timestamp"),
        }
    }

    #[test]
    fn canary_window_queries() {
        let q = query("2026-01-01T00:00:00Z", "2026-01-01T00:10:00Z", false);
        let w = window_queries(&q, Duration::from_secs(60));
        assert_eq!(w.range_seconds, 600);
        assert_eq!(w.time, "1767226200.000");
        assert_eq!(
            w.stable,
            SideQueries {
                impressions: Some(
                    r#"sum(increase(reco_impressions_total{pipeline="home",model_version="v1"}[600s]))"#.into()
                ),
                clicks: Some(r#"sum(increase(reco_clicks_total{pipeline="home",model_version="v1"}[600s]))"#.into()),
                requests: r#"sum(increase(reco_recommend_requests_total{pipeline="home",model_version="v1"}[600s]))"#
                    .into(),
                errors: r#"sum(increase(reco_recommend_errors_total{pipeline="home",model_version="v1"}[600s]))"#
                    .into(),
                p99_latency: r#"histogram_quantile(0.99, sum by (le) (increase(reco_recommend_duration_seconds_bucket{pipeline="home",model_version="v1"}[600s])))"#.into(),
            }
        );
        assert_eq!(
            w.candidate.clicks.as_deref(),
            Some(r#"sum(increase(reco_clicks_total{pipeline="home",model_version="v2"}[600s]))"#)
        );
    }

    #[test]
    fn shadow_candidate_reads_the_shadow_series_without_impressions() {
        let q = query("2026-01-01T00:00:00Z", "2026-01-01T00:10:00Z", true);
        let w = window_queries(&q, Duration::from_secs(60));
        assert_eq!(
            w.candidate,
            SideQueries {
                impressions: None,
                clicks: None,
                requests: r#"sum(increase(reco_shadow_requests_total{pipeline="home",model_version="v2"}[600s]))"#.into(),
                errors: r#"sum(increase(reco_shadow_errors_total{pipeline="home",model_version="v2"}[600s]))"#.into(),
                p99_latency: r#"histogram_quantile(0.99, sum by (le) (increase(reco_shadow_duration_seconds_bucket{pipeline="home",model_version="v2"}[600s])))"#.into(),
            }
        );
        assert!(w.stable.impressions.is_some(), "stable is always served");
    }

    #[test]
    fn range_rounds_up_and_respects_the_minimum() {
        let q = query("2026-01-01T00:00:00Z", "2026-01-01T00:10:00.001Z", false);
        assert_eq!(window_queries(&q, Duration::from_secs(60)).range_seconds, 601);
        assert_eq!(window_queries(&q, Duration::from_secs(60)).time, "1767226200.001");
        let short = query("2026-01-01T00:00:00Z", "2026-01-01T00:00:05Z", false);
        assert_eq!(window_queries(&short, Duration::from_secs(120)).range_seconds, 120);
        let empty = query("2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z", false);
        assert_eq!(window_queries(&empty, Duration::ZERO).range_seconds, 1, "PromQL needs a positive range");
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
        let clicks = window_queries(&q, Duration::ZERO).stable.clicks.expect("served side");
        assert_eq!(
            clicks,
            r#"sum(increase(reco_clicks_total{pipeline="x\"} or vector(1) or up{a=\"\\",model_version="v1"}[600s]))"#
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

    #[test]
    fn quantile_nan_or_empty_is_none() {
        assert_eq!(parse_quantile(200, &vector("0.25")), Ok(Some(0.25)));
        assert_eq!(parse_quantile(200, &vector("NaN")), Ok(None));
        assert_eq!(parse_quantile(200, EMPTY), Ok(None));
        assert!(matches!(parse_quantile(200, &vector("+Inf")), Err(QueryFailure::Malformed(_))));
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

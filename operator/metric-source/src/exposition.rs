//! A small strict parser of the Prometheus text exposition format (and the
//! OpenMetrics text the gateways' `prometheus-client` writes), for the few
//! series the analysis reads.
//!
//! Why not a crate: `prometheus-parse`, the only candidate, is lenient (it
//! skips lines it cannot read, so a garbled counter would silently become
//! "no traffic"), drags in `regex`, `chrono` and `lazy_static`, and models
//! the whole format while we need sample lines of a handful of names. This
//! one reads a sample line fully — name, labels with their escapes, value —
//! and fails with the line number on anything it does not understand, but
//! only for the names the caller wants: an unrelated series of the gateway
//! in a dialect we do not read must not block a rollout. Comments (`# HELP`,
//! `# TYPE`, `# EOF`, …), timestamps and exemplars are ignored: the scraper
//! stamps samples with its own clock.

use std::collections::BTreeMap;

/// One sample of a wanted series.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Sample {
    /// 1-based line number, for errors found later (a duplicate series).
    pub line: usize,
    pub name: String,
    /// Labels by name: the order in the exposition carries no meaning.
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Why a line could not be read: its 1-based number and the problem.
#[derive(Debug, PartialEq)]
pub(crate) struct ParseError {
    pub line: usize,
    pub reason: String,
}

/// The samples of the series whose name `wanted` accepts, in order.
pub(crate) fn parse(text: &str, wanted: impl Fn(&str) -> bool) -> Result<Vec<Sample>, ParseError> {
    let mut samples = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim_start_matches([' ', '\t']);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let error = |reason: String| ParseError { line: index + 1, reason };
        let name_end = line.find(|c: char| !is_name_char(c)).unwrap_or(line.len());
        let name = &line[..name_end];
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(error(format!("expected a metric name in {line:?}")));
        }
        if !wanted(name) {
            continue;
        }
        let (labels, rest) = parse_labels(&line[name_end..]).map_err(&error)?;
        let value = parse_value(rest).map_err(&error)?;
        samples.push(Sample { line: index + 1, name: name.to_string(), labels, value });
    }
    Ok(samples)
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Reads an optional `{name="value",…}` block; returns the labels and what
/// follows the block.
fn parse_labels(text: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let Some(mut rest) = text.trim_start_matches([' ', '\t']).strip_prefix('{') else {
        return Ok((labels, text));
    };
    loop {
        rest = rest.trim_start_matches([' ', '\t']);
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let name_end = rest.find(|c: char| !is_name_char(c)).unwrap_or(rest.len());
        let name = &rest[..name_end];
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(format!("expected a label name at {rest:?}"));
        }
        rest = rest[name_end..].trim_start_matches([' ', '\t']);
        rest = rest.strip_prefix('=').ok_or_else(|| format!("expected '=' after label {name}"))?;
        rest = rest.trim_start_matches([' ', '\t']);
        rest = rest.strip_prefix('"').ok_or_else(|| format!("expected '\"' opening the value of label {name}"))?;
        let (value, after) = parse_label_value(rest).map_err(|reason| format!("label {name}: {reason}"))?;
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} appears twice"));
        }
        rest = after.trim_start_matches([' ', '\t']);
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err(format!("expected ',' or '}}' after label {name}"));
        }
    }
}

/// Reads a label value up to its closing quote, undoing the format's three
/// escapes (`\\`, `\"`, `\n`); any other escape is an error.
fn parse_label_value(text: &str) -> Result<(String, &str), String> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &text[i + 1..])),
            '\\' => match chars.next() {
                Some((_, '\\')) => value.push('\\'),
                Some((_, '"')) => value.push('"'),
                Some((_, 'n')) => value.push('\n'),
                Some((_, other)) => return Err(format!("unknown escape '\\{other}'")),
                None => return Err("unterminated value".into()),
            },
            c => value.push(c),
        }
    }
    Err("unterminated value".into())
}

/// Reads the value after the labels; an optional timestamp and an
/// OpenMetrics exemplar (` # {…} …`) may follow and are ignored.
fn parse_value(text: &str) -> Result<f64, String> {
    if text.trim_start_matches([' ', '\t']).is_empty() {
        return Err("missing value".into());
    }
    if !text.starts_with([' ', '\t']) {
        return Err(format!("expected a space before the value, found {text:?}"));
    }
    let mut fields = text.split([' ', '\t']).filter(|f| !f.is_empty());
    let value = fields.next().unwrap_or_default();
    let value = parse_float(value).ok_or_else(|| format!("value {value:?} is not a number"))?;
    match fields.next() {
        None | Some("#") => {}
        Some(timestamp) if timestamp.parse::<f64>().is_ok() => {
            if fields.next().is_some_and(|f| f != "#") {
                return Err("unexpected text after the timestamp".into());
            }
        }
        Some(other) => return Err(format!("unexpected {other:?} after the value")),
    }
    Ok(value)
}

/// Go's float syntax as the format uses it: decimals, exponents, `NaN`,
/// `+Inf`, `-Inf`. Rust's parser accepts those and also `infinity`; fine.
pub(crate) fn parse_float(text: &str) -> Option<f64> {
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|&(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn all(_: &str) -> bool {
        true
    }

    #[test]
    fn reads_prometheus_client_openmetrics() {
        let text = "\
# HELP reco_clicks Clicks.
# TYPE reco_clicks counter
reco_clicks_total{pipeline=\"home\",model_version=\"v1\"} 7
# TYPE reco_recommend_duration_seconds histogram
reco_recommend_duration_seconds_sum{pipeline=\"home\",model_version=\"v1\"} 0.75
reco_recommend_duration_seconds_count{pipeline=\"home\",model_version=\"v1\"} 3
reco_recommend_duration_seconds_bucket{le=\"0.1\",pipeline=\"home\",model_version=\"v1\"} 2
reco_recommend_duration_seconds_bucket{le=\"+Inf\",pipeline=\"home\",model_version=\"v1\"} 3
# EOF
";
        let wanted = |n: &str| n == "reco_clicks_total" || n == "reco_recommend_duration_seconds_bucket";
        let samples = parse(text, wanted).expect("valid exposition");
        assert_eq!(
            samples,
            vec![
                Sample {
                    line: 3,
                    name: "reco_clicks_total".into(),
                    labels: labels(&[("pipeline", "home"), ("model_version", "v1")]),
                    value: 7.0
                },
                Sample {
                    line: 7,
                    name: "reco_recommend_duration_seconds_bucket".into(),
                    labels: labels(&[("le", "0.1"), ("pipeline", "home"), ("model_version", "v1")]),
                    value: 2.0
                },
                Sample {
                    line: 8,
                    name: "reco_recommend_duration_seconds_bucket".into(),
                    labels: labels(&[("le", "+Inf"), ("pipeline", "home"), ("model_version", "v1")]),
                    value: 3.0
                },
            ]
        );
    }

    #[test]
    fn reads_escapes_spacing_timestamps_and_exemplars() {
        let text = concat!(
            "a{ x = \"q\\\"b\\\\s\\nl\" , y=\"\t\" , } 1.5e3 1700000000000\n",
            "b 3 # {trace_id=\"abc\"} 1 1700000000.1\n",
            "  c{} -Inf\n",
            "d NaN\n",
        );
        let samples = parse(text, all).expect("valid exposition");
        assert_eq!(samples[0].labels, labels(&[("x", "q\"b\\s\nl"), ("y", "\t")]));
        assert_eq!(samples[0].value, 1500.0);
        assert_eq!((samples[1].name.as_str(), samples[1].value), ("b", 3.0));
        assert_eq!(samples[2].value, f64::NEG_INFINITY);
        assert!(samples[3].value.is_nan());
    }

    #[test]
    fn unwanted_series_are_not_read() {
        // The broken line is another exporter's business.
        let text = "other_metric{broken 1\nwanted 2\n";
        let samples = parse(text, |n| n == "wanted").expect("only wanted lines are read");
        assert_eq!(samples.len(), 1);
    }

    #[test]
    fn malformed_lines_are_reported_with_their_number() {
        let cases = [
            ("a{x=\"1\"", "expected ',' or '}' after label x"),
            ("a{x=\"1} 2", "label x: unterminated value"),
            ("a{x=1} 2", "expected '\"' opening the value of label x"),
            ("a{x=\"\\t\"} 2", "label x: unknown escape '\\t'"),
            ("a{x=\"1\",x=\"2\"} 3", "label x appears twice"),
            ("a{=\"1\"} 3", "expected a label name at \"=\\\"1\\\"} 3\""),
            ("a{x=\"1\"}", "missing value"),
            ("a{x=\"1\"}2", "expected a space before the value, found \"2\""),
            ("a seven", "value \"seven\" is not a number"),
            ("a 1 2 3", "unexpected text after the timestamp"),
            ("a 1 later", "unexpected \"later\" after the value"),
            ("{x=\"1\"} 2", "expected a metric name in \"{x=\\\"1\\\"} 2\""),
        ];
        for (line, reason) in cases {
            let text = format!("# TYPE a counter\n{line}\n");
            assert_eq!(parse(&text, all), Err(ParseError { line: 2, reason: reason.to_string() }), "{line}");
        }
    }
}

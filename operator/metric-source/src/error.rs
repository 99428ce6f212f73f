//! Errors of the metric sources. Each message names what failed (the query
//! and server, or the scrape target) and why, because it ends up verbatim in
//! the analysis report a user reads when a look is Inconclusive.

use std::fmt::Write as _;

use jiff::Timestamp;
use reqwest::Url;

/// Why a window could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// One PromQL query failed; the window is unusable as a whole. (The
    /// URL is boxed to keep every `Result` of this crate small.)
    #[error("Prometheus query `{query}` at {url} failed: {failure}")]
    Prometheus { url: Box<Url>, query: String, failure: QueryFailure },
    /// At least one gateway could not be scraped. Counting it as zero would
    /// make its traffic vanish from the window, so the whole look fails.
    #[error("{}", describe_scrape_failures(*.total, .failures))]
    Scrape { total: usize, failures: Vec<ScrapeError> },
    /// The scrape source knows no gateway: there is nothing to read.
    #[error("no scrape targets: no gateway /metrics endpoint is known to the scrape source")]
    NoTargets,
    /// The caller asked for a window that ends before it starts.
    #[error("invalid window: it ends at {now}, before it starts at {start}")]
    InvalidWindow { start: Timestamp, now: Timestamp },
    /// The HTTP client could not be built (TLS setup).
    #[error("building the HTTP client: {0}")]
    Client(String),
}

/// How one Prometheus query failed.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum QueryFailure {
    /// No answer: connection refused, timeout, broken body.
    #[error("request failed: {0}")]
    Request(String),
    /// Prometheus refused the query (`status: error`), e.g. a bad expression.
    #[error("Prometheus answered {error_type} error: {error}")]
    Rejected { error_type: String, error: String },
    /// A non-2xx answer without a Prometheus error body (a proxy, a crash).
    #[error("HTTP {status}: {detail}")]
    Http { status: u16, detail: String },
    /// An answer that is not what the Prometheus API documents.
    #[error("malformed answer: {0}")]
    Malformed(String),
}

/// How scraping one gateway failed.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ScrapeError {
    /// No answer: connection refused, timeout, broken body.
    #[error("scraping {target}: request failed: {reason}")]
    Request { target: Url, reason: String },
    /// The gateway answered with a non-2xx status.
    #[error("scraping {target}: HTTP {status}")]
    Http { target: Url, status: u16 },
    /// The exposition is not valid text format for a series we read.
    #[error("scraping {target}: malformed exposition at line {line}: {reason}")]
    Malformed { target: Url, line: usize, reason: String },
}

fn describe_scrape_failures(total: usize, failures: &[ScrapeError]) -> String {
    let mut message = format!("{} of {total} scrape targets failed", failures.len());
    for failure in failures {
        let _ = write!(message, "; {failure}");
    }
    message
}

/// An error and its causes on one line: reqwest's own message ("error
/// sending request") says nothing without them ("Connection refused").
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let _ = write!(message, ": {cause}");
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrape_failures_name_every_target() {
        let a: Url = "http://10.0.0.1:9090/metrics".parse().expect("valid URL");
        let b: Url = "http://10.0.0.2:9090/metrics".parse().expect("valid URL");
        let error = SourceError::Scrape {
            total: 3,
            failures: vec![
                ScrapeError::Http { target: a, status: 503 },
                ScrapeError::Request { target: b, reason: "operation timed out".into() },
            ],
        };
        assert_eq!(
            error.to_string(),
            "2 of 3 scrape targets failed; scraping http://10.0.0.1:9090/metrics: HTTP 503; \
             scraping http://10.0.0.2:9090/metrics: request failed: operation timed out"
        );
    }
}

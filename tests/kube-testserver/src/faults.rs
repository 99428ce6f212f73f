//! Request log and fault injection.
//!
//! Owns what tests use to observe and disturb the traffic: every request is recorded (method,
//! path with query, content type) so a test can state the exact API calls a scenario made, and
//! fault rules make matching requests fail with a chosen HTTP status before they reach storage.

use std::fmt;

/// One request as the server received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// HTTP method (`GET`, `PATCH`, ...).
    pub method: String,
    /// Path plus query string, exactly as sent (`/api/v1/namespaces/a/configmaps?watch=true&...`).
    pub path_and_query: String,
    /// The `Content-Type` header, if any (tells patch flavours apart).
    pub content_type: Option<String>,
}

impl RecordedRequest {
    /// The path without the query string.
    pub fn path(&self) -> &str {
        self.path_and_query.split_once('?').map_or(self.path_and_query.as_str(), |(path, _)| path)
    }

    /// Whether this was a watch (`watch=true` or `watch=1`).
    pub fn is_watch(&self) -> bool {
        self.path_and_query
            .split_once('?')
            .is_some_and(|(_, query)| query.split('&').any(|pair| pair == "watch=true" || pair == "watch=1"))
    }
}

impl fmt::Display for RecordedRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.path_and_query)?;
        if let Some(content_type) = &self.content_type {
            write!(f, " ({content_type})")?;
        }
        Ok(())
    }
}

/// Makes the next `remaining` requests that match fail with `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultRule {
    /// Method to match, or `*` for any.
    pub method: String,
    /// Substring of the path-and-query to match; empty matches everything.
    pub path_contains: String,
    /// HTTP status to answer with (a `Status` body with the matching reason).
    pub status: u16,
    /// How many more matching requests fail.
    pub remaining: usize,
}

/// The log and the active fault rules.
#[derive(Debug, Default)]
pub struct Traffic {
    requests: Vec<RecordedRequest>,
    rules: Vec<FaultRule>,
}

impl Traffic {
    /// Records `request` and returns the status to fail it with, if a rule matches. The first
    /// matching rule wins and is used up one request at a time.
    pub fn record(&mut self, request: RecordedRequest) -> Option<u16> {
        let rule = self.rules.iter_mut().find(|rule| {
            rule.remaining > 0
                && (rule.method == "*" || rule.method.eq_ignore_ascii_case(&request.method))
                && request.path_and_query.contains(&rule.path_contains)
        });
        let status = rule.map(|rule| {
            rule.remaining -= 1;
            rule.status
        });
        self.rules.retain(|rule| rule.remaining > 0);
        self.requests.push(request);
        status
    }

    /// Adds a rule after the existing ones.
    pub fn add_rule(&mut self, rule: FaultRule) {
        self.rules.push(rule);
    }

    /// Drops every fault rule.
    pub fn clear_rules(&mut self) {
        self.rules.clear();
    }

    /// The requests seen so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.requests.clone()
    }

    /// Forgets the recorded requests (rules stay).
    pub fn clear_requests(&mut self) {
        self.requests.clear();
    }
}

//! What every reco binary repeats, written once: structured logs
//! ([`logging`]), the wall clock in Unix milliseconds ([`clock`]), stopping on SIGTERM ([`shutdown`]), the `/metrics`,
//! `/healthz` and `/readyz` endpoints ([`admin`]), saving a file so that a
//! crash leaves the old or the new one ([`fs`]), the latency histogram
//! buckets of every service ([`buckets`]), the percentiles benchmarks quote
//! ([`stats`]), the TLS crypto provider ([`tls`]) and the flags of every
//! per-version service ([`flags`]).

pub mod admin;
pub mod buckets;
pub mod clock;
pub mod flags;
pub mod fs;
pub mod logging;
pub mod shutdown;
pub mod stats;
pub mod tls;

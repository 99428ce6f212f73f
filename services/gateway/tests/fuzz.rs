//! Property tests over hostile input at both HTTP endpoints: arbitrary JSON values, arbitrary
//! byte strings and arbitrary tokens never produce a 5xx, a panic or a non-JSON error. Failing
//! cases are persisted in `tests/proptest-regressions/fuzz.txt` (the corpus, replayed first).

mod common;

use std::sync::OnceLock;

use common::{Options, TestGateway, item_id, start};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::{Value, json};
use tokio::runtime::Runtime;

/// One gateway for all cases: proptest bodies are synchronous, so they block on this runtime.
fn harness() -> &'static (Runtime, TestGateway, String) {
    static HARNESS: OnceLock<(Runtime, TestGateway, String)> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let runtime = Runtime::new().expect("runtime");
        let (gateway, token) = runtime.block_on(async {
            let gateway = start(Options { flags: vec!["--body-limit-bytes=4096".into()], ..Default::default() }).await;
            let token = gateway.recommend("fuzz").await["token"].as_str().expect("token").to_owned();
            (gateway, token)
        });
        (runtime, gateway, token)
    })
}

/// Posts `body` and checks the answer: no 5xx; a 4xx carries the JSON error shape.
fn post_and_check(path: &str, content_type: Option<&str>, body: Vec<u8>) -> Result<u16, TestCaseError> {
    let (runtime, gateway, _) = harness();
    let (status, text) = runtime.block_on(gateway.post_raw(path, content_type, body));
    prop_assert!(status < 500, "{path} answered {status}: {text}");
    let json: Value = serde_json::from_str(&text).map_err(|_| TestCaseError::fail(format!("not JSON: {text:?}")))?;
    if status >= 400 {
        prop_assert!(json["error"]["code"].is_string() && json["error"]["message"].is_string(), "{json}");
    }
    Ok(status)
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        ".{0,300}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("user_id".to_owned()),
                    Just("page_size".to_owned()),
                    Just("context".to_owned()),
                    Just("now_ms".to_owned()),
                    Just("content_types".to_owned()),
                    Just("attributes".to_owned()),
                    Just("token".to_owned()),
                    Just("item_id".to_owned()),
                    Just("type".to_owned()),
                    Just("dwell_ms".to_owned()),
                    ".{0,12}",
                ],
                inner,
                0..8,
            )
            .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Requests that are well formed except for one arbitrary field value.
fn near_valid_recommend() -> impl Strategy<Value = Value> {
    (any_json(), any_json(), ".{0,300}").prop_map(
        |(page_size, context, user_id)| json!({"user_id": user_id, "page_size": page_size, "context": context}),
    )
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 64,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("tests/proptest-regressions/fuzz.txt"))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_json_never_5xx(body in any_json(), events in any::<bool>()) {
        let path = if events { "/v1/events" } else { "/v1/recommend" };
        post_and_check(path, Some("application/json"), body.to_string().into_bytes())?;
    }

    #[test]
    fn near_valid_recommend_bodies_never_5xx(body in near_valid_recommend()) {
        post_and_check("/v1/recommend", Some("application/json"), body.to_string().into_bytes())?;
    }

    #[test]
    fn arbitrary_bytes_never_5xx(
        body in prop::collection::vec(any::<u8>(), 0..6000),
        events in any::<bool>(),
        json_type in any::<bool>(),
    ) {
        let path = if events { "/v1/events" } else { "/v1/recommend" };
        post_and_check(path, json_type.then_some("application/json"), body)?;
    }

    #[test]
    fn arbitrary_tokens_are_400(token in ".{0,1200}") {
        let body = json!({"token": token, "user_id": "fuzz", "item_id": item_id(1), "type": "click"});
        let status = post_and_check("/v1/events", Some("application/json"), body.to_string().into_bytes())?;
        prop_assert_eq!(status, 400);
    }

    #[test]
    fn mutated_real_tokens_are_400(index in any::<prop::sample::Index>(), replacement in "[A-Za-z0-9_-]") {
        let (_, _, token) = harness();
        let mut chars: Vec<char> = token.chars().collect();
        let i = index.index(chars.len());
        let replacement = replacement.chars().next().unwrap_or('A');
        prop_assume!(chars[i] != replacement);
        chars[i] = replacement;
        let forged: String = chars.into_iter().collect();
        let body = json!({"token": forged, "user_id": "fuzz", "item_id": item_id(1), "type": "click"});
        let status = post_and_check("/v1/events", Some("application/json"), body.to_string().into_bytes())?;
        prop_assert_eq!(status, 400);
    }
}

/// Hand-picked hostile inputs, kept as a corpus next to the generated ones.
#[test]
fn hostile_corpus() {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_object = format!("{{\"user_id\": {}1{}}}", "{\"a\":".repeat(200), "}".repeat(200));
    let corpus: Vec<(&str, Vec<u8>)> = vec![
        ("/v1/recommend", deep.clone().into_bytes()),
        ("/v1/events", deep.into_bytes()),
        ("/v1/recommend", deep_object.into_bytes()),
        ("/v1/recommend", b"\xff\xfe\x00".to_vec()),
        ("/v1/recommend", "{\"user_id\": \"\u{0}\"}".as_bytes().to_vec()),
        ("/v1/recommend", br#"{"user_id": "u", "user_id": "v"}"#.to_vec()),
        ("/v1/recommend", br#"{"user_id": "u", "page_size": 1e400}"#.to_vec()),
        ("/v1/recommend", br#"{"user_id": "u", "page_size": 18446744073709551616}"#.to_vec()),
        ("/v1/recommend", br#"{"user_id": "u", "context": {"now_ms": 9223372036854775807}}"#.to_vec()),
        ("/v1/recommend", br#"{"user_id": "\ud800"}"#.to_vec()),
        ("/v1/events", br#"{"token": "\u0000", "user_id": "u", "item_id": "i", "type": "click"}"#.to_vec()),
        (
            "/v1/events",
            br#"{"token": "t", "user_id": "u", "item_id": "i", "type": "dwell", "dwell_ms": 4294967296}"#.to_vec(),
        ),
    ];
    for (path, body) in corpus {
        let shown = String::from_utf8_lossy(&body).chars().take(60).collect::<String>();
        let status =
            post_and_check(path, Some("application/json"), body).unwrap_or_else(|error| panic!("{shown}: {error}"));
        assert!(status < 500, "{shown}");
    }
}

//! Signed recommendation tokens.
//!
//! The gateway hands a token out with every recommendation and clients send it back with their
//! events, so a click can be attributed to the pipeline, model version and request that produced
//! it on any replica, without shared server state. A token is bound to the page it came with: it
//! names the user it was served to (and that user's group at serving time) and the items of the
//! page, so it attributes events of that user on those items only. This module owns the token
//! format, signing, and verification (integrity, key rotation, age and clock-skew checks).
//!
//! # Format (version 2)
//!
//! `base64url_nopad(version || field(pipeline) || field(model_version) || field(request_id) ||
//! issued_at || user || user_group || item_count || items || mac)` where `field(s)` is a
//! big-endian `u16` byte length followed by the UTF-8 bytes, `issued_at` is a big-endian `u64`
//! of Unix seconds, `user` the 8-byte [`UserDigest`] of the user id, `user_group` a big-endian
//! `u16`, `item_count` a big-endian `u16` followed by that many 4-byte [`ItemDigest`]s in page
//! order, and `mac` is HMAC-SHA256 over every byte before it, version included. Version 1
//! (without user, group and items) is no longer accepted.
//!
//! Length-prefixing rather than a JSON payload: the encoding is canonical (one byte string per
//! claims, so there is nothing to normalise before checking the MAC), any byte (separators
//! included) round-trips without escaping, the token stays short enough to ride along with every
//! page, and the parser that faces untrusted input is a few bounds-checked slice splits instead
//! of a general-purpose JSON parser. Digests rather than ids keep a full page small: the MAC
//! already stops forgery, so a digest only has to make an accidental match unlikely.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::{Digest as _, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Shortest key accepted: HMAC-SHA256 is only as strong as its key, and 32 bytes matches the
/// hash output size (RFC 2104 recommends at least that).
pub const MIN_KEY_LEN: usize = 32;

/// Longest token accepted, in bytes (a valid token is ASCII, so also in characters). Checked
/// before decoding so that a hostile client cannot make the gateway allocate or hash large
/// inputs; `sign` refuses claims that would not fit. Room for a page of 100 items with
/// 253-byte pipeline and version names and a 32-byte request id (1,330 characters), the
/// gateway's worst case.
pub const MAX_TOKEN_LEN: usize = 1536;

/// How far in the future `issued_at` may lie: replicas' clocks drift a little, and a token
/// signed by a replica slightly ahead must still verify on one slightly behind.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(30);

const VERSION: u8 = 2;
const MAC_LEN: usize = 32;
const LEN_PREFIX: usize = 2;
const TIME_LEN: usize = 8;
const GROUP_LEN: usize = 2;
const COUNT_LEN: usize = 2;
const USER_DIGEST_LEN: usize = 8;
const ITEM_DIGEST_LEN: usize = 4;

/// The first 8 bytes of SHA-256 of a user id: enough that another user matching by chance is
/// negligible (2^-64), short because it rides along with every page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserDigest(pub [u8; USER_DIGEST_LEN]);

impl UserDigest {
    pub fn of(user_id: &str) -> Self {
        Self(prefix(b"user\0", user_id))
    }
}

/// The first 4 bytes of SHA-256 of an item id: an item not on a page of 100 matches one of its
/// digests by chance with probability about 100 / 2^32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ItemDigest(pub [u8; ITEM_DIGEST_LEN]);

impl ItemDigest {
    pub fn of(item_id: &str) -> Self {
        Self(prefix(b"item\0", item_id))
    }
}

/// The first `N` bytes of SHA-256 of `domain || id` (the domain keeps user and item digests of
/// the same string apart).
fn prefix<const N: usize>(domain: &[u8], id: &str) -> [u8; N] {
    let hash = Sha256::new().chain_update(domain).chain_update(id.as_bytes()).finalize();
    let mut out = [0; N];
    out.iter_mut().zip(hash).for_each(|(out, byte)| *out = byte);
    out
}

/// What a token attests: which pipeline and model version served which page to which user, and
/// when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub pipeline: String,
    pub model_version: String,
    pub request_id: String,
    /// Unix seconds at which the recommendation was served.
    pub issued_at: u64,
    /// The user the page was served to.
    pub user: UserDigest,
    /// The user's group at serving time (`reco_contracts::routing::user_group`), so that events count
    /// in the group the page was served in even if the routing salt changed since.
    pub user_group: u16,
    /// The items of the page, in page order.
    pub items: Vec<ItemDigest>,
}

impl Claims {
    /// Whether the page was served to `user_id`.
    pub fn is_for_user(&self, user_id: &str) -> bool {
        self.user == UserDigest::of(user_id)
    }

    /// Whether `item_id` is one of the page's items.
    pub fn has_item(&self, item_id: &str) -> bool {
        self.items.contains(&ItemDigest::of(item_id))
    }
}

/// Why a key was refused or a token did not verify. The messages are safe to return to clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token key is {len} bytes; HMAC-SHA256 keys must be at least {MIN_KEY_LEN} bytes")]
    KeyTooShort { len: usize },
    #[error("claims too large: the token would be {len} bytes, over the {MAX_TOKEN_LEN}-byte limit")]
    ClaimsTooLarge { len: usize },
    #[error("token is {len} bytes, over the {MAX_TOKEN_LEN}-byte limit")]
    TooLong { len: usize },
    #[error("token is not unpadded URL-safe base64")]
    NotBase64,
    #[error("token is truncated: it ends before its {what}")]
    Truncated { what: &'static str },
    #[error("token has {count} unexpected bytes after its claims")]
    TrailingBytes { count: usize },
    #[error("token version {version} is unknown (expected {VERSION})")]
    UnknownVersion { version: u8 },
    #[error("token field {field} is not valid UTF-8")]
    BadUtf8 { field: &'static str },
    #[error("token signature does not match: forged, altered or signed with an unknown key")]
    BadSignature,
    #[error("token expired: issued at {issued_at}, now {now}, maximum age {max_age_secs} s")]
    Expired { issued_at: u64, now: u64, max_age_secs: u64 },
    #[error("token issued in the future: issued at {issued_at}, now {now}, beyond the allowed clock skew")]
    IssuedInFuture { issued_at: u64, now: u64 },
}

/// Signs tokens with the current key and verifies them against the current and previous keys,
/// so a key can be rotated without rejecting the tokens already in clients' hands.
#[derive(Clone)]
pub struct TokenSigner {
    /// Keyed MAC states, kept pre-keyed so that each token costs only a clone, not a key schedule.
    current: HmacSha256,
    previous: Vec<HmacSha256>,
}

impl fmt::Debug for TokenSigner {
    /// Never prints key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSigner").field("previous_keys", &self.previous.len()).finish_non_exhaustive()
    }
}

impl TokenSigner {
    /// A signer whose current key is `key`.
    pub fn new(key: &[u8]) -> Result<Self, TokenError> {
        Ok(Self { current: keyed(key)?, previous: Vec::new() })
    }

    /// Also accept tokens signed with `previous` keys (never used for signing), for rotation.
    pub fn with_previous_keys<'a>(mut self, previous: impl IntoIterator<Item = &'a [u8]>) -> Result<Self, TokenError> {
        for key in previous {
            self.previous.push(keyed(key)?);
        }
        Ok(self)
    }

    /// The token for `claims`, signed with the current key.
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        let fields = [&claims.pipeline, &claims.model_version, &claims.request_id];
        let raw_len = 1
            + fields.iter().map(|f| LEN_PREFIX + f.len()).sum::<usize>()
            + TIME_LEN
            + USER_DIGEST_LEN
            + GROUP_LEN
            + COUNT_LEN
            + claims.items.len().saturating_mul(ITEM_DIGEST_LEN)
            + MAC_LEN;
        let encoded_len = raw_len.div_ceil(3) * 4 - (3 - raw_len % 3) % 3;
        if encoded_len > MAX_TOKEN_LEN {
            return Err(TokenError::ClaimsTooLarge { len: encoded_len });
        }
        // Cannot fail: the whole token fits in MAX_TOKEN_LEN, far below u16::MAX.
        let too_large = |_| TokenError::ClaimsTooLarge { len: encoded_len };
        let mut bytes = Vec::with_capacity(raw_len);
        bytes.push(VERSION);
        for field in fields {
            let len = u16::try_from(field.len()).map_err(too_large)?;
            bytes.extend_from_slice(&len.to_be_bytes());
            bytes.extend_from_slice(field.as_bytes());
        }
        bytes.extend_from_slice(&claims.issued_at.to_be_bytes());
        bytes.extend_from_slice(&claims.user.0);
        bytes.extend_from_slice(&claims.user_group.to_be_bytes());
        let count = u16::try_from(claims.items.len()).map_err(too_large)?;
        bytes.extend_from_slice(&count.to_be_bytes());
        for item in &claims.items {
            bytes.extend_from_slice(&item.0);
        }
        let mac = self.current.clone().chain_update(&bytes).finalize().into_bytes();
        bytes.extend_from_slice(&mac);
        Ok(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// The claims of `token` if it is well formed, signed with one of our keys, at most
    /// `max_age` old at `now` (Unix seconds) and not issued beyond [`MAX_CLOCK_SKEW`] in the future.
    pub fn verify(&self, token: &str, now: u64, max_age: Duration) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong { len: token.len() });
        }
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| TokenError::NotBase64)?;
        let Some((&version, _)) = bytes.split_first() else {
            return Err(TokenError::Truncated { what: "version" });
        };
        if version != VERSION {
            return Err(TokenError::UnknownVersion { version });
        }
        let Some((signed, mac)) = bytes.split_last_chunk::<MAC_LEN>().filter(|(signed, _)| !signed.is_empty()) else {
            return Err(TokenError::Truncated { what: "signature" });
        };
        // `verify_slice` compares in constant time.
        let mut keys = std::iter::once(&self.current).chain(&self.previous);
        if !keys.any(|key| key.clone().chain_update(signed).verify_slice(mac).is_ok()) {
            return Err(TokenError::BadSignature);
        }
        // `signed` starts with the version byte checked above.
        let claims = parse_claims(signed.get(1..).unwrap_or_default())?;
        check_time(claims.issued_at, now, max_age)?;
        Ok(claims)
    }
}

fn keyed(key: &[u8]) -> Result<HmacSha256, TokenError> {
    if key.len() < MIN_KEY_LEN {
        return Err(TokenError::KeyTooShort { len: key.len() });
    }
    HmacSha256::new_from_slice(key).map_err(|_| TokenError::KeyTooShort { len: key.len() })
}

/// Parses the claims that follow the version byte. Only reached for authentic tokens, but still
/// bounds-checked: a key holder with a buggy signer must not crash the verifier.
fn parse_claims(mut rest: &[u8]) -> Result<Claims, TokenError> {
    let mut field = |name: &'static str| -> Result<String, TokenError> {
        let len = usize::from(u16::from_be_bytes(*take::<LEN_PREFIX>(&mut rest, name)?));
        let (value, tail) = rest.split_at_checked(len).ok_or(TokenError::Truncated { what: name })?;
        rest = tail;
        String::from_utf8(value.to_vec()).map_err(|_| TokenError::BadUtf8 { field: name })
    };
    let pipeline = field("pipeline")?;
    let model_version = field("model_version")?;
    let request_id = field("request_id")?;
    let issued_at = u64::from_be_bytes(*take::<TIME_LEN>(&mut rest, "issued_at")?);
    let user = UserDigest(*take::<USER_DIGEST_LEN>(&mut rest, "user")?);
    let user_group = u16::from_be_bytes(*take::<GROUP_LEN>(&mut rest, "user_group")?);
    let count = usize::from(u16::from_be_bytes(*take::<COUNT_LEN>(&mut rest, "item_count")?));
    let (items, tail) =
        rest.split_at_checked(count * ITEM_DIGEST_LEN).ok_or(TokenError::Truncated { what: "items" })?;
    if !tail.is_empty() {
        return Err(TokenError::TrailingBytes { count: tail.len() });
    }
    let items = items.chunks_exact(ITEM_DIGEST_LEN).filter_map(|chunk| chunk.try_into().ok()).map(ItemDigest).collect();
    Ok(Claims { pipeline, model_version, request_id, issued_at, user, user_group, items })
}

/// Splits the next `N` bytes off `rest`; `what` names them when `rest` is shorter.
fn take<'a, const N: usize>(rest: &mut &'a [u8], what: &'static str) -> Result<&'a [u8; N], TokenError> {
    let (head, tail) = rest.split_first_chunk::<N>().ok_or(TokenError::Truncated { what })?;
    *rest = tail;
    Ok(head)
}

fn check_time(issued_at: u64, now: u64, max_age: Duration) -> Result<(), TokenError> {
    if issued_at > now.saturating_add(MAX_CLOCK_SKEW.as_secs()) {
        return Err(TokenError::IssuedInFuture { issued_at, now });
    }
    if now.saturating_sub(issued_at) > max_age.as_secs() {
        return Err(TokenError::Expired { issued_at, now, max_age_secs: max_age.as_secs() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
    const OLD_KEY: &[u8] = b"old-key-old-key-old-key-old-key!";
    const OTHER_KEY: &[u8] = b"another-key-another-key-another!";
    const NOW: u64 = 1_800_000_000;
    const HOUR: Duration = Duration::from_secs(3600);

    fn claims() -> Claims {
        Claims {
            pipeline: "explore".into(),
            model_version: "v7".into(),
            request_id: "req-42".into(),
            issued_at: NOW - 10,
            user: UserDigest::of("alice"),
            user_group: 417,
            items: ["i1", "i2", "i3"].into_iter().map(ItemDigest::of).collect(),
        }
    }

    fn signer() -> TokenSigner {
        TokenSigner::new(KEY).expect("valid key")
    }

    /// A token over arbitrary bytes after the version, correctly signed with `KEY`: reaches the
    /// claims parser, which forged tokens never do.
    fn seal(version: u8, body: &[u8]) -> String {
        let mut bytes = vec![version];
        bytes.extend_from_slice(body);
        let mac = keyed(KEY).expect("valid key").chain_update(&bytes).finalize().into_bytes();
        bytes.extend_from_slice(&mac);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn field(s: &[u8]) -> Vec<u8> {
        let mut out = u16::try_from(s.len()).expect("short").to_be_bytes().to_vec();
        out.extend_from_slice(s);
        out
    }

    /// A well-formed body: fields `p`, `m`, `r`, issued at `NOW`, user `u`, group 7 and the
    /// item count and digests `items` (raw, so that a count can disagree with the digests).
    fn body_with(items: &[u8]) -> Vec<u8> {
        let mut body = [field(b"p"), field(b"m"), field(b"r")].concat();
        body.extend_from_slice(&NOW.to_be_bytes());
        body.extend_from_slice(&UserDigest::of("u").0);
        body.extend_from_slice(&7u16.to_be_bytes());
        body.extend_from_slice(items);
        body
    }

    #[test]
    fn round_trips() {
        let token = signer().sign(&claims()).expect("fits");
        assert_eq!(signer().verify(&token, NOW, HOUR), Ok(claims()));
    }

    #[test]
    fn binds_the_user_and_the_pages_items() {
        let claims = signer().verify(&signer().sign(&claims()).expect("fits"), NOW, HOUR).expect("verifies");
        assert!(claims.is_for_user("alice"));
        for other in ["bob", "Alice", "alice ", ""] {
            assert!(!claims.is_for_user(other), "{other:?}");
        }
        for item in ["i1", "i2", "i3"] {
            assert!(claims.has_item(item), "{item}");
        }
        for other in ["i4", "I1", "i", ""] {
            assert!(!claims.has_item(other), "{other:?}");
        }
        // The same string is a different user and item digest.
        assert_ne!(UserDigest::of("x").0[..ITEM_DIGEST_LEN], ItemDigest::of("x").0);
        assert_eq!(claims.user_group, 417);
    }

    #[test]
    fn an_empty_page_round_trips_and_holds_no_item() {
        let empty = Claims { items: Vec::new(), ..claims() };
        let verified = signer().verify(&signer().sign(&empty).expect("fits"), NOW, HOUR).expect("verifies");
        assert_eq!(verified, empty);
        assert!(!verified.has_item("i1"));
    }

    #[test]
    fn separators_and_unicode_round_trip() {
        let claims = Claims {
            pipeline: ".|:,\u{0}".into(),
            model_version: "".into(),
            request_id: "é🦀\n=/+".into(),
            issued_at: NOW,
            user: UserDigest::of("🦀"),
            user_group: u16::MAX,
            items: vec![ItemDigest([0; 4]), ItemDigest([255; 4])],
        };
        let token = signer().sign(&claims).expect("fits");
        assert_eq!(signer().verify(&token, NOW, HOUR), Ok(claims));
    }

    #[test]
    fn key_rotation_accepts_previous_keys_and_signs_with_current() {
        let old = TokenSigner::new(OLD_KEY).expect("valid key");
        let rotated = signer().with_previous_keys([OLD_KEY]).expect("valid keys");
        let old_token = old.sign(&claims()).expect("fits");
        assert_eq!(rotated.verify(&old_token, NOW, HOUR), Ok(claims()));
        let new_token = rotated.sign(&claims()).expect("fits");
        assert_eq!(signer().verify(&new_token, NOW, HOUR), Ok(claims()));
        assert_eq!(old.verify(&new_token, NOW, HOUR), Err(TokenError::BadSignature));
    }

    #[test]
    fn rejects_short_keys() {
        assert_eq!(TokenSigner::new(&KEY[..31]).err(), Some(TokenError::KeyTooShort { len: 31 }));
        assert_eq!(TokenSigner::new(b"").err(), Some(TokenError::KeyTooShort { len: 0 }));
        assert_eq!(signer().with_previous_keys([&b"short"[..]]).err(), Some(TokenError::KeyTooShort { len: 5 }));
    }

    #[test]
    fn refuses_claims_that_would_not_verify() {
        let mut big = claims();
        big.request_id = "x".repeat(MAX_TOKEN_LEN);
        assert!(matches!(signer().sign(&big), Err(TokenError::ClaimsTooLarge { .. })));
        // The largest claims that sign must also verify.
        let fixed = 1 + 3 * LEN_PREFIX + TIME_LEN + USER_DIGEST_LEN + GROUP_LEN + COUNT_LEN + MAC_LEN;
        let mut largest = claims();
        largest.pipeline.clear();
        largest.model_version.clear();
        let items = largest.items.len() * ITEM_DIGEST_LEN;
        largest.request_id = "y".repeat(MAX_TOKEN_LEN / 4 * 3 - fixed - items);
        let token = signer().sign(&largest).expect("fits exactly");
        assert_eq!(token.len(), MAX_TOKEN_LEN);
        assert_eq!(signer().verify(&token, NOW, HOUR), Ok(largest.clone()));
        largest.request_id.push('y');
        let len = MAX_TOKEN_LEN + 2;
        assert_eq!(signer().sign(&largest), Err(TokenError::ClaimsTooLarge { len }));
    }

    #[test]
    fn too_many_items_are_refused_when_signing() {
        let c = claims();
        let fixed = 1
            + 3 * LEN_PREFIX
            + c.pipeline.len()
            + c.model_version.len()
            + c.request_id.len()
            + TIME_LEN
            + USER_DIGEST_LEN
            + GROUP_LEN
            + COUNT_LEN
            + MAC_LEN;
        let room = (MAX_TOKEN_LEN / 4 * 3 - fixed) / ITEM_DIGEST_LEN;
        let page =
            |count: usize| Claims { items: (0..count).map(|i| ItemDigest::of(&i.to_string())).collect(), ..claims() };
        let token = signer().sign(&page(room)).expect("fits");
        assert_eq!(signer().verify(&token, NOW, HOUR), Ok(page(room)));
        assert!(matches!(signer().sign(&page(room + 1)), Err(TokenError::ClaimsTooLarge { .. })));
        // More than a u16 count can say is refused too, never truncated.
        assert!(matches!(signer().sign(&page(70_000)), Err(TokenError::ClaimsTooLarge { .. })));
    }

    #[test]
    fn error_table() {
        let good = signer().sign(&claims()).expect("fits");
        let mut tampered = URL_SAFE_NO_PAD.decode(&good).expect("base64");
        tampered[3] ^= 1;
        let one_item = [&1u16.to_be_bytes()[..], &[9; ITEM_DIGEST_LEN]].concat();
        let body = body_with(&one_item);
        let mut v1 = [field(b"p"), field(b"m"), field(b"r")].concat();
        v1.extend_from_slice(&NOW.to_be_bytes());
        let cases: Vec<(&str, String, u64, TokenError)> = vec![
            ("too long", "A".repeat(MAX_TOKEN_LEN + 1), NOW, TokenError::TooLong { len: MAX_TOKEN_LEN + 1 }),
            ("not base64", "abc$def".into(), NOW, TokenError::NotBase64),
            ("padding", format!("{good}="), NOW, TokenError::NotBase64),
            ("empty", String::new(), NOW, TokenError::Truncated { what: "version" }),
            ("version 1", seal(1, &v1), NOW, TokenError::UnknownVersion { version: 1 }),
            ("unknown version", seal(3, &body), NOW, TokenError::UnknownVersion { version: 3 }),
            ("no mac", URL_SAFE_NO_PAD.encode([VERSION; 20]), NOW, TokenError::Truncated { what: "signature" }),
            ("only mac", URL_SAFE_NO_PAD.encode([VERSION; MAC_LEN]), NOW, TokenError::Truncated { what: "signature" }),
            ("tampered", URL_SAFE_NO_PAD.encode(&tampered), NOW, TokenError::BadSignature),
            (
                "other key",
                TokenSigner::new(OTHER_KEY).expect("key").sign(&claims()).expect("fits"),
                NOW,
                TokenError::BadSignature,
            ),
            ("truncated field", seal(VERSION, &[0, 9, b'a']), NOW, TokenError::Truncated { what: "pipeline" }),
            ("missing prefix", seal(VERSION, &field(b"p")), NOW, TokenError::Truncated { what: "model_version" }),
            ("missing time", seal(VERSION, &v1[..v1.len() - 1]), NOW, TokenError::Truncated { what: "issued_at" }),
            ("missing user", seal(VERSION, &v1), NOW, TokenError::Truncated { what: "user" }),
            ("missing group", seal(VERSION, &body[..v1.len() + 9]), NOW, TokenError::Truncated { what: "user_group" }),
            ("missing count", seal(VERSION, &body[..v1.len() + 11]), NOW, TokenError::Truncated { what: "item_count" }),
            ("short items", seal(VERSION, &body[..body.len() - 1]), NOW, TokenError::Truncated { what: "items" }),
            (
                "count over digests",
                seal(VERSION, &body_with(&[&2u16.to_be_bytes()[..], &[9; ITEM_DIGEST_LEN]].concat())),
                NOW,
                TokenError::Truncated { what: "items" },
            ),
            (
                "trailing",
                seal(VERSION, &[body.as_slice(), b"xy"].concat()),
                NOW,
                TokenError::TrailingBytes { count: 2 },
            ),
            (
                "count under digests",
                seal(VERSION, &body_with(&[&0u16.to_be_bytes()[..], &[9; ITEM_DIGEST_LEN]].concat())),
                NOW,
                TokenError::TrailingBytes { count: ITEM_DIGEST_LEN },
            ),
            (
                "bad utf-8",
                seal(VERSION, &[field(b"p"), field(b"\xff"), field(b"r"), NOW.to_be_bytes().to_vec()].concat()),
                NOW,
                TokenError::BadUtf8 { field: "model_version" },
            ),
            (
                "expired",
                good.clone(),
                NOW + 3600 - 9,
                TokenError::Expired { issued_at: NOW - 10, now: NOW + 3591, max_age_secs: 3600 },
            ),
            ("future", good.clone(), NOW - 41, TokenError::IssuedInFuture { issued_at: NOW - 10, now: NOW - 41 }),
        ];
        for (name, token, now, want) in cases {
            assert_eq!(signer().verify(&token, now, HOUR), Err(want), "{name}");
        }
        // The hand-built body itself is valid: the cases above fail for what they change.
        let claims = signer().verify(&seal(VERSION, &body), NOW, HOUR).expect("valid body");
        assert!(claims.is_for_user("u") && claims.user_group == 7 && claims.items == [ItemDigest([9; 4])]);
    }

    #[test]
    fn tampering_with_the_binding_fails() {
        let good = URL_SAFE_NO_PAD.decode(signer().sign(&claims()).expect("fits")).expect("base64");
        // The last 32 bytes are the MAC; before them the item digests, count, group and user.
        let signed = good.len() - MAC_LEN;
        let offsets = [
            ("last item", signed - 1),
            ("first item", signed - 3 * ITEM_DIGEST_LEN),
            ("item count", signed - 3 * ITEM_DIGEST_LEN - 1),
            ("user group", signed - 3 * ITEM_DIGEST_LEN - COUNT_LEN - 1),
            ("user", signed - 3 * ITEM_DIGEST_LEN - COUNT_LEN - GROUP_LEN - 1),
        ];
        for (what, offset) in offsets {
            let mut altered = good.clone();
            altered[offset] ^= 1;
            let token = URL_SAFE_NO_PAD.encode(&altered);
            assert_eq!(signer().verify(&token, NOW, HOUR), Err(TokenError::BadSignature), "{what}");
        }
        // Swapping a whole claim for another user's, re-encoded, is still a forgery.
        let bob = Claims { user: UserDigest::of("bob"), ..claims() };
        let mut swapped = URL_SAFE_NO_PAD.decode(signer().sign(&bob).expect("fits")).expect("base64");
        swapped.truncate(signed);
        swapped.extend_from_slice(&good[signed..]);
        let token = URL_SAFE_NO_PAD.encode(&swapped);
        assert_eq!(signer().verify(&token, NOW, HOUR), Err(TokenError::BadSignature));
    }

    #[test]
    fn time_boundaries_table() {
        let token = signer().sign(&claims()).expect("fits");
        let issued = NOW - 10;
        for (now, ok) in [
            (issued, true),
            (issued + 3600, true),
            (issued + 3601, false),
            (issued - 30, true),
            (issued - 31, false),
            (u64::MAX, false),
        ] {
            assert_eq!(signer().verify(&token, now, HOUR).is_ok(), ok, "now = {now}");
        }
    }

    /// Inputs that once broke, or plausibly could break, a token parser; kept as a corpus.
    #[test]
    fn hostile_corpus_never_panics() {
        let long = "A".repeat(10_000);
        let corpus = [
            "",
            "=",
            "==",
            "A",
            "AA",
            "AAA",
            "AAAA",
            "AQ",
            "Ag",
            "\u{0}",
            "é",
            "🦀🦀🦀",
            "+/+/",
            "-_-_",
            long.as_str(),
        ];
        for token in corpus {
            assert!(signer().verify(token, NOW, HOUR).is_err(), "{token:?}");
        }
    }

    fn any_claims() -> impl Strategy<Value = Claims> {
        (
            (".{0,40}", ".{0,40}", ".{0,40}", any::<u64>()),
            (
                any::<[u8; USER_DIGEST_LEN]>(),
                any::<u16>(),
                prop::collection::vec(any::<[u8; ITEM_DIGEST_LEN]>(), 0..100),
            ),
        )
            .prop_map(|((pipeline, model_version, request_id, issued_at), (user, user_group, items))| Claims {
                pipeline,
                model_version,
                request_id,
                issued_at,
                user: UserDigest(user),
                user_group,
                items: items.into_iter().map(ItemDigest).collect(),
            })
    }

    proptest! {
        #[test]
        fn any_claims_round_trip(claims in any_claims()) {
            let token = signer().sign(&claims).expect("fits");
            prop_assert!(token.len() <= MAX_TOKEN_LEN);
            let now = claims.issued_at;
            prop_assert_eq!(signer().verify(&token, now, HOUR), Ok(claims));
        }

        #[test]
        fn any_byte_flip_fails(claims in any_claims(), index in any::<prop::sample::Index>(), flip in 1u8..=255) {
            let token = signer().sign(&claims).expect("fits");
            let mut bytes = token.into_bytes();
            let i = index.index(bytes.len());
            bytes[i] ^= flip;
            // A flip may produce invalid UTF-8, which cannot even reach `verify` as a `&str`.
            if let Ok(altered) = String::from_utf8(bytes) {
                prop_assert!(signer().verify(&altered, claims.issued_at, HOUR).is_err());
            }
        }

        #[test]
        fn arbitrary_strings_never_panic(token in ".{0,1600}", now in any::<u64>(), age in any::<u64>()) {
            prop_assert!(signer().verify(&token, now, Duration::from_secs(age)).is_err());
        }

        #[test]
        fn arbitrary_base64_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..1200), now in any::<u64>()) {
            let token = URL_SAFE_NO_PAD.encode(&bytes);
            prop_assert!(signer().verify(&token, now, HOUR).is_err());
        }

        #[test]
        fn arbitrary_signed_bodies_never_panic(
            body in prop::collection::vec(any::<u8>(), 0..600),
            now in any::<u64>(),
        ) {
            // Authentic but arbitrary: exercises the claims parser past the MAC check.
            let _ = signer().verify(&seal(VERSION, &body), now, HOUR);
        }
    }
}

//! Kubernetes name rules (DNS-1123), and the one way reco derives object
//! names from pipeline and version names: joined with `-`, lower-cased,
//! and cut to a DNS label with a hash suffix when too long.

use xxhash_rust::xxh3::xxh3_64;

/// Longest DNS-1123 label: Service names, label values.
pub const MAX_LABEL: usize = 63;
/// Longest DNS-1123 subdomain: most other object names.
pub const MAX_SUBDOMAIN: usize = 253;
/// Longest StatefulSet name: its pods carry a `controller-revision-hash`
/// label of the name and an 11-character suffix, which must stay a label.
pub const MAX_STATEFULSET: usize = MAX_LABEL - 11;

/// Why a name breaks a DNS-1123 rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{name:?} is empty")]
    Empty { name: String },
    #[error("{name:?} is {length} characters long, more than {max}")]
    TooLong { name: String, length: usize, max: usize },
    #[error(
        "{name:?} must consist of lower-case letters, digits and '-'{dots}, and start and end with a letter or digit",
        dots = if *.dots { " or '.'" } else { "" }
    )]
    Characters { name: String, dots: bool },
    #[error("{name:?} must start with a lower-case letter")]
    LeadingDigit { name: String },
}

/// A DNS-1123 label: at most 63 of `[a-z0-9-]`, starting and ending alphanumeric.
pub fn check_label(name: &str) -> Result<(), NameError> {
    check(name, MAX_LABEL, false)
}

/// A DNS-1035 label, what a Service name must be: a DNS-1123 label that
/// starts with a letter.
pub fn check_service_name(name: &str) -> Result<(), NameError> {
    check_label(name)?;
    match name.bytes().next().is_some_and(|b| b.is_ascii_lowercase()) {
        true => Ok(()),
        false => Err(NameError::LeadingDigit { name: name.to_owned() }),
    }
}

/// A DNS-1123 subdomain: at most 253 characters, dot-separated labels.
pub fn check_subdomain(name: &str) -> Result<(), NameError> {
    check(name, MAX_SUBDOMAIN, true)?;
    match name.split('.').all(|part| check(part, MAX_LABEL, false).is_ok()) {
        true => Ok(()),
        false => Err(NameError::Characters { name: name.to_owned(), dots: true }),
    }
}

fn check(name: &str, max: usize, dots: bool) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { name: name.to_owned() });
    }
    if name.len() > max {
        return Err(NameError::TooLong { name: name.to_owned(), length: name.len(), max });
    }
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (dots && b == b'.');
    let alphanumeric = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let bytes = name.as_bytes();
    match bytes.iter().all(|b| allowed(*b)) && alphanumeric(bytes.first()) && alphanumeric(bytes.last()) {
        true => Ok(()),
        false => Err(NameError::Characters { name: name.to_owned(), dots }),
    }
}

/// The name of an object made of `parts` (`home-retrieval-v2`): a DNS label
/// whenever the parts are DNS labels. A name over 63 characters keeps its
/// first 54 and ends with 8 hex digits of a hash of the whole, so two long
/// names that share a prefix still differ.
pub fn object_name(parts: &[&str]) -> String {
    object_name_within(parts, MAX_LABEL)
}

/// [`object_name`] cut to at most `max` characters (at least 10), for
/// objects whose names other names are made of (a StatefulSet's pods).
pub fn object_name_within(parts: &[&str], max: usize) -> String {
    let full = parts.join("-").to_lowercase();
    if full.len() <= max {
        return full;
    }
    let suffix = format!("{:08x}", xxh3_64(full.as_bytes()) as u32);
    let mut cut = max.saturating_sub(suffix.len() + 1);
    while !full.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}-{suffix}", full[..cut].trim_end_matches(['-', '.']))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_dns_1123() {
        for good in ["a", "v2", "home-v2", "0abc", &"a".repeat(63)] {
            assert_eq!(check_label(good), Ok(()), "{good}");
        }
        for bad in ["", "-a", "a-", "A", "v2.1", "a_b", "é", &"a".repeat(64)] {
            assert!(check_label(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn service_names_start_with_a_letter() {
        assert_eq!(check_service_name("explore-gateway"), Ok(()));
        assert_eq!(
            check_service_name("2024-gateway").unwrap_err().to_string(),
            "\"2024-gateway\" must start with a lower-case letter"
        );
        assert!(matches!(check_service_name("a.b"), Err(NameError::Characters { .. })));
        assert!(matches!(check_service_name(""), Err(NameError::Empty { .. })));
    }

    #[test]
    fn subdomains_allow_dots_between_labels() {
        for good in ["v2.1", "a.b-c.d", &format!("{}.{}", "a".repeat(63), "b".repeat(63))] {
            assert_eq!(check_subdomain(good), Ok(()), "{good}");
        }
        for bad in ["", ".a", "a.", "a..b", "a.-b", &"a".repeat(254), &"a".repeat(64)] {
            assert!(check_subdomain(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_name_the_rule() {
        assert_eq!(
            check_label("v2.1").unwrap_err().to_string(),
            "\"v2.1\" must consist of lower-case letters, digits and '-', and start and end with a letter or digit"
        );
        assert_eq!(
            check_label(&"a".repeat(64)).unwrap_err().to_string(),
            format!("{:?} is 64 characters long, more than 63", "a".repeat(64))
        );
    }

    #[test]
    fn long_object_names_are_cut_to_a_unique_label() {
        assert_eq!(object_name(&["home", "retrieval", "v2"]), "home-retrieval-v2");
        let long = "x".repeat(60);
        let one = object_name(&["home", "retrieval", &long]);
        let two = object_name(&["home", "ranking", &long]);
        assert_ne!(one, two);
        assert_eq!(check_label(&one), Ok(()));
        assert_eq!(check_label(&two), Ok(()));
        assert_eq!(object_name(&["home", "retrieval", &long]), one, "stable");
        assert_eq!(object_name(&["Explore", "Gateway"]), "explore-gateway");
    }

    #[test]
    fn statefulset_names_leave_room_for_the_revision_label() {
        let name = object_name_within(&[&"x".repeat(50), "features"], MAX_STATEFULSET);
        assert_eq!(name.len(), MAX_STATEFULSET);
        assert_eq!(check_label(&format!("{name}-7d9f8c6b5d")), Ok(()), "the controller-revision-hash label");
        assert_eq!(object_name_within(&["explore", "features"], MAX_STATEFULSET), "explore-features");
        assert_ne!(name, object_name_within(&[&"x".repeat(51), "features"], MAX_STATEFULSET));
    }
}

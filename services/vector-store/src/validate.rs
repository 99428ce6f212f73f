//! Input checks shared by both backends, so a bad vector or request fails the same way (and before any I/O)
//! whichever backend is configured.

use crate::{CollectionSpec, MAX_CATEGORIES, MAX_DIM, MAX_EXCLUDED, MAX_K, Point, Result, SearchFilter, StoreError};

/// Longest collection name; Qdrant and file systems both accept 255.
const MAX_NAME_LEN: usize = 255;

/// `{pipeline}__{version}`, after checking each part is non-empty, made of ASCII letters, digits, `-`, `_`,
/// `.`, and does not start with `.` (a name is also a directory: no `..`, no hidden directories).
pub fn collection_name(pipeline: &str, version: &str) -> Result<String> {
    let name = format!("{pipeline}__{version}");
    for part in [pipeline, version] {
        let reason = if part.is_empty() {
            Some("pipeline and version must be non-empty")
        } else if part.starts_with('.') {
            Some("pipeline and version must not start with '.'")
        } else if !part.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
            Some("only ASCII letters, digits, '-', '_' and '.' are allowed")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(StoreError::InvalidName { name, reason });
        }
    }
    if name.len() > MAX_NAME_LEN {
        return Err(StoreError::InvalidName { name, reason: "longer than 255 bytes" });
    }
    Ok(name)
}

/// Checks the spec and returns the collection name.
pub fn spec(spec: &CollectionSpec) -> Result<String> {
    let collection = spec.name()?;
    if spec.dim == 0 || spec.dim > MAX_DIM {
        return Err(StoreError::InvalidSpec {
            collection,
            reason: format!("dimension {} is out of range 1..={MAX_DIM}", spec.dim),
        });
    }
    Ok(collection)
}

/// Checks one vector: right dimension, every component finite. `what` names it in the error.
pub fn vector(collection: &str, what: impl FnOnce() -> String, v: &[f32], dim: usize) -> Result<()> {
    if v.is_empty() {
        return Err(StoreError::EmptyVector { collection: collection.to_owned(), what: what() });
    }
    if v.len() != dim {
        return Err(StoreError::DimensionMismatch {
            collection: collection.to_owned(),
            what: what(),
            expected: dim,
            got: v.len(),
        });
    }
    if let Some((index, &value)) = v.iter().enumerate().find(|(_, x)| !x.is_finite()) {
        return Err(StoreError::NonFinite { collection: collection.to_owned(), what: what(), index, value });
    }
    Ok(())
}

/// Checks a batch of points: vectors as in [`vector`], and categories non-empty strings, at most
/// [`MAX_CATEGORIES`].
pub fn points(collection: &str, points: &[Point], dim: usize) -> Result<()> {
    for p in points {
        vector(collection, || format!("point {}", p.id), &p.vector, dim)?;
        categories(&p.payload.category).map_err(|reason| StoreError::InvalidPayload {
            collection: collection.to_owned(),
            id: p.id,
            reason,
        })?;
    }
    Ok(())
}

fn categories(categories: &[String]) -> Result<(), String> {
    if categories.len() > MAX_CATEGORIES {
        return Err(format!("{} categories, at most {MAX_CATEGORIES} allowed", categories.len()));
    }
    if categories.iter().any(String::is_empty) {
        return Err("empty category".to_owned());
    }
    Ok(())
}

/// Checks a search request: query vector, `k` in 1..=[`MAX_K`], filter sizes.
pub fn search(collection: &str, query: &[f32], dim: usize, k: usize, filter: &SearchFilter) -> Result<()> {
    vector(collection, || "query".to_owned(), query, dim)?;
    if k == 0 || k > MAX_K {
        return Err(StoreError::InvalidK { collection: collection.to_owned(), k, max: MAX_K });
    }
    if filter.exclude.len() > MAX_EXCLUDED {
        return Err(StoreError::TooMany {
            collection: collection.to_owned(),
            what: "exclude list",
            got: filter.exclude.len(),
            max: MAX_EXCLUDED,
        });
    }
    if let Some(cats) = &filter.categories
        && cats.len() > MAX_CATEGORIES
    {
        return Err(StoreError::TooMany {
            collection: collection.to_owned(),
            what: "category filter",
            got: cats.len(),
            max: MAX_CATEGORIES,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Distance, ItemPayload};

    #[test]
    fn names_join_pipeline_and_version() {
        assert_eq!(collection_name("movies", "v3").unwrap(), "movies__v3");
        assert_eq!(collection_name("a-b.c", "2024-11_01").unwrap(), "a-b.c__2024-11_01");
    }

    #[test]
    fn names_reject_paths_and_odd_characters() {
        for (p, v) in [("", "v1"), ("p", ""), ("..", "v1"), ("p", ".hidden"), ("a/b", "v1"), ("p", "v 1"), ("p", "é")]
        {
            let err = collection_name(p, v).unwrap_err();
            assert!(matches!(err, StoreError::InvalidName { .. }), "{p:?} {v:?}: {err}");
        }
        assert!(collection_name(&"x".repeat(300), "v").is_err());
    }

    #[test]
    fn spec_rejects_zero_and_huge_dimensions() {
        let mut s = CollectionSpec { pipeline: "p".into(), version: "v".into(), dim: 0, distance: Distance::Dot };
        assert!(matches!(spec(&s), Err(StoreError::InvalidSpec { .. })));
        s.dim = MAX_DIM + 1;
        assert!(matches!(spec(&s), Err(StoreError::InvalidSpec { .. })));
        s.dim = 64;
        assert_eq!(spec(&s).unwrap(), "p__v");
    }

    #[test]
    fn vectors_are_checked_for_shape_and_finiteness() {
        let what = || "q".to_owned();
        assert!(vector("c", what, &[0.1, 0.2], 2).is_ok());
        assert!(matches!(vector("c", what, &[], 2), Err(StoreError::EmptyVector { .. })));
        assert!(matches!(vector("c", what, &[0.1], 2), Err(StoreError::DimensionMismatch { got: 1, .. })));
        assert!(matches!(vector("c", what, &[0.1, f32::NAN], 2), Err(StoreError::NonFinite { index: 1, .. })));
        assert!(matches!(vector("c", what, &[f32::INFINITY, 0.0], 2), Err(StoreError::NonFinite { index: 0, .. })));
        let msg = vector("movies__v3", what, &[0.1], 2).unwrap_err().to_string();
        assert!(msg.contains("movies__v3") && msg.contains("dimension 1, expected 2"), "{msg}");
    }

    #[test]
    fn search_checks_k_and_filter_sizes() {
        let f = SearchFilter::default();
        assert!(search("c", &[1.0], 1, 1, &f).is_ok());
        assert!(search("c", &[1.0], 1, MAX_K, &f).is_ok());
        assert!(matches!(search("c", &[1.0], 1, 0, &f), Err(StoreError::InvalidK { k: 0, .. })));
        assert!(matches!(search("c", &[1.0], 1, MAX_K + 1, &f), Err(StoreError::InvalidK { .. })));
        let big = SearchFilter { exclude: (0..=MAX_EXCLUDED as u64).collect(), categories: None };
        assert!(matches!(search("c", &[1.0], 1, 5, &big), Err(StoreError::TooMany { .. })));
        let cats = SearchFilter { exclude: Default::default(), categories: Some(vec!["x".into(); MAX_CATEGORIES + 1]) };
        assert!(matches!(search("c", &[1.0], 1, 5, &cats), Err(StoreError::TooMany { .. })));
    }

    #[test]
    fn points_reject_bad_payloads() {
        let p = |category: Vec<String>| Point {
            id: 7,
            vector: vec![1.0],
            payload: ItemPayload { category, published_at: 0 },
        };
        assert!(points("c", &[p(vec!["a".into()])], 1).is_ok());
        assert!(matches!(points("c", &[p(vec![String::new()])], 1), Err(StoreError::InvalidPayload { id: 7, .. })));
        assert!(points("c", &[p(vec!["a".into(); MAX_CATEGORIES + 1])], 1).is_err());
    }
}

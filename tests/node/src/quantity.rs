//! Kubernetes resource quantities as podman wants them.

/// CPUs of a quantity (`500m`, `2`, `1.5`).
pub fn cpus(q: &str) -> Result<f64, String> {
    let bad = || format!("cpu quantity {q:?} is not understood");
    match q.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().map(|m| m / 1000.0).map_err(|_| bad()),
        None => q.parse::<f64>().map_err(|_| bad()),
    }
    .and_then(|c| if c > 0.0 && c.is_finite() { Ok(c) } else { Err(bad()) })
}

/// Bytes of a memory quantity (`512Mi`, `1Gi`, `128M`, `1000`).
pub fn memory_bytes(q: &str) -> Result<u64, String> {
    const SUFFIXES: [(&str, u64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    let bad = || format!("memory quantity {q:?} is not understood");
    let (number, scale) =
        SUFFIXES.iter().find_map(|(suffix, scale)| q.strip_suffix(suffix).map(|n| (n, *scale))).unwrap_or((q, 1));
    let value: f64 = number.parse().map_err(|_| bad())?;
    if !(value > 0.0 && value.is_finite()) {
        return Err(bad());
    }
    Ok((value * scale as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_convert_as_kubernetes_reads_them() {
        assert_eq!(cpus("500m"), Ok(0.5));
        assert_eq!(cpus("2"), Ok(2.0));
        assert_eq!(memory_bytes("512Mi"), Ok(512 << 20));
        assert_eq!(memory_bytes("1Gi"), Ok(1 << 30));
        assert_eq!(memory_bytes("128M"), Ok(128_000_000));
        for bad in ["", "-1", "abc", "1Xi", "0"] {
            assert!(cpus(bad).is_err() && memory_bytes(bad).is_err(), "{bad}");
        }
    }
}

//! Number formatting for people: `1.2 GiB`, `6.74B`, `[4096, 11008]`.

/// Bytes in binary units: `512 B`, `1.50 KiB`, `13.5 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{n} B"),
        _ if v >= 100.0 => format!("{v:.0} {}", UNITS[unit]),
        _ if v >= 10.0 => format!("{v:.1} {}", UNITS[unit]),
        _ => format!("{v:.2} {}", UNITS[unit]),
    }
}

/// A count with a metric suffix: `950`, `22.7M`, `6.74B`.
pub fn count(n: u64) -> String {
    let (v, s) = match n {
        0..1_000 => return n.to_string(),
        1_000..1_000_000 => (n as f64 / 1e3, "K"),
        1_000_000..1_000_000_000 => (n as f64 / 1e6, "M"),
        1_000_000_000..1_000_000_000_000 => (n as f64 / 1e9, "B"),
        _ => (n as f64 / 1e12, "T"),
    };
    if v >= 100.0 {
        format!("{v:.0}{s}")
    } else if v >= 10.0 {
        format!("{v:.1}{s}")
    } else {
        format!("{v:.2}{s}")
    }
}

/// A shape as `[a, b, c]`.
pub fn shape(dims: &[u64]) -> String {
    let inner: Vec<String> = dims.iter().map(u64::to_string).collect();
    format!("[{}]", inner.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.50 KiB");
        assert_eq!(bytes(13_476_839_424), "12.6 GiB");
        assert_eq!(count(6_738_415_616), "6.74B");
        assert_eq!(count(22_713_216), "22.7M");
        assert_eq!(shape(&[4096, 11008]), "[4096, 11008]");
        assert_eq!(shape(&[]), "[]");
    }
}

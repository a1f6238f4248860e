//! Sizes as people write them: `4096`, `64K`, `64M`, `1G` (binary units). Part of ntbdrv's API
//! because the device's own settings (`PCISOCK_EMU_WINDOW_SIZE`) take them, and the layers above
//! (transport's ring settings, the CLI's options) read theirs the same way.
//!
//! Owns: the one parser and the one formatter of sizes. Must never accept a value that
//! overflows `u64`.

/// Parse a size such as `4096`, `64K`, `64M`, `1G` (binary units; the suffix in either case).
pub fn parse_size(v: &str) -> Result<u64, String> {
    let v = v.trim();
    let (num, mul) = match v.char_indices().last() {
        Some((i, 'k' | 'K')) => (&v[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&v[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&v[..i], 1 << 30),
        _ => (v, 1),
    };
    let n: u64 = num.parse().map_err(|e| format!("{e}"))?;
    n.checked_mul(mul).ok_or_else(|| "too large".to_string())
}

/// A size for people: `64 MiB`, `4 KiB`, `100 B` when it is a whole number of the unit, else
/// one decimal (`1.5 GiB`, `976.6 KiB`).
pub fn format_size(n: u64) -> String {
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if n >= 1 << shift {
            return if n & ((1 << shift) - 1) == 0 {
                format!("{} {unit}", n >> shift)
            } else {
                format!("{:.1} {unit}", n as f64 / (1u64 << shift) as f64)
            };
        }
    }
    format!("{n} B")
}

#[cfg(test)]
mod tests {
    use super::{format_size, parse_size};

    #[test]
    fn sizes_format_whole_units_exactly_and_others_to_a_decimal() {
        assert_eq!(format_size(64 << 20), "64 MiB");
        assert_eq!(format_size(4096), "4 KiB");
        assert_eq!(format_size(100), "100 B");
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(3 << 29), "1.5 GiB");
        assert_eq!(format_size(1_000_000), "976.6 KiB");
        for n in [1u64, 4096, 64 << 20, 1 << 30] {
            let short = format_size(n).replace(' ', "").replace("iB", "");
            assert_eq!(parse_size(short.trim_end_matches('B')), Ok(n), "{short}");
        }
    }

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size(" 64M "), Ok(64 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("1T").is_err());
        assert_eq!(parse_size("17179869184G"), Err("too large".to_string()));
    }
}

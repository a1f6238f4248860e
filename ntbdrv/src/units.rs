//! Sizes as people write them: `4096`, `64K`, `64M`, `1G` (binary units). Part of ntbdrv's API
//! because the device's own settings (`PCISOCK_EMU_WINDOW_SIZE`) take them, and the layers above
//! (transport's ring settings, the CLI's options) read theirs the same way.
//!
//! Owns: the one parser of size strings. Must never accept a value that overflows `u64`.

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

#[cfg(test)]
mod tests {
    use super::parse_size;

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

//! Writing benchmark records: one JSON object per line, appended to a file.

use std::io::Write;
use std::path::Path;

/// Writes `records` as JSON lines to `path` (created or truncated).
pub(crate) fn write_json_lines<T: serde::Serialize>(
    path: &Path,
    records: &[T],
) -> Result<(), String> {
    let mut out = std::fs::File::create(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    for r in records {
        let line = serde_json::to_string(r).map_err(|e| format!("cannot encode a record: {e}"))?;
        writeln!(out, "{line}").map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Parses a byte count such as `4096`, `64K`, `64KiB`, `1M` or `64MiB` (powers of 1024).
pub(crate) fn parse_bytes(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("'{s}' is not a byte count"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        other => return Err(format!("unknown unit '{other}' in '{s}'")),
    };
    n.checked_mul(1usize << shift)
        .ok_or_else(|| format!("'{s}' overflows"))
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn byte_counts_parse_with_binary_units() {
        assert_eq!(parse_bytes("1").unwrap(), 1);
        assert_eq!(parse_bytes("64K").unwrap(), 65536);
        assert_eq!(parse_bytes("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("2g").unwrap(), 2 << 30);
        assert!(parse_bytes("12parsecs").is_err());
        assert!(parse_bytes("").is_err());
    }
}

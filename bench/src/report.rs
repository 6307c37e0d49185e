//! Writing benchmark records: one JSON object per line, appended to a file.

use std::io::Write;
use std::path::Path;

/// Writes `records` as JSON lines to `path` (created or truncated). Each record gets a
/// `machine` object (CPU model and cores, GPU and driver where there is one, the date), so a
/// result file says where it came from.
pub(crate) fn write_json_lines<T: serde::Serialize>(
    path: &Path,
    records: &[T],
) -> Result<(), String> {
    let mut out = std::fs::File::create(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let machine = machine();
    for r in records {
        let mut value =
            serde_json::to_value(r).map_err(|e| format!("cannot encode a record: {e}"))?;
        if let serde_json::Value::Object(map) = &mut value {
            map.insert("machine".into(), machine.clone());
        }
        writeln!(out, "{value}").map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// What the records of this run were measured on.
fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|v| v.split(':').nth(1))
        })
        .map(|v| v.trim().to_string());
    // All the host's logical CPUs (not this process's affinity, which mpirun narrows).
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let gpu = ferry_gpu::Gpu::open(0).ok().map(|g| g.name().to_string());
    let driver = std::fs::read_to_string("/proc/driver/nvidia/version")
        .ok()
        .and_then(|v| v.lines().next().map(|l| l.trim().to_string()));
    serde_json::json!({
        "cpu": cpu,
        "cores": cores,
        "gpu": gpu,
        "driver": driver,
        "date": today(),
    })
}

/// Today's date (UTC) as YYYY-MM-DD, from the system clock (days-to-civil conversion).
fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
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

/// Parses JSON lines (blank lines skipped); an error names the line.
pub(crate) fn parse_json_lines<T: serde::de::DeserializeOwned>(
    text: &str,
) -> Result<Vec<T>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| serde_json::from_str(l).map_err(|e| format!("line {}: {e}", n + 1)))
        .collect()
}

/// Reads and parses a JSON-lines file; an error names the file and the line.
pub(crate) fn read_json_lines<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
) -> Result<Vec<T>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_json_lines(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The median of `v` (the upper one for an even count); `NaN` for an empty `v`.
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_skip_blanks_and_name_the_bad_line() {
        let v: Vec<serde_json::Value> = parse_json_lines("{\"a\":1}\n\n{\"a\":2}\n").unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[1]["a"], 2);
        let e = parse_json_lines::<serde_json::Value>("{}\n{oops\n").unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
        let e = read_json_lines::<serde_json::Value>(std::path::Path::new("/nonexistent/x.jsonl"));
        assert!(e.unwrap_err().contains("/nonexistent/x.jsonl"));
    }

    #[test]
    fn today_is_a_plausible_date() {
        let d = today();
        assert_eq!(d.len(), 10, "{d}");
        let year: i32 = d[..4].parse().unwrap();
        let month: u32 = d[5..7].parse().unwrap();
        let day: u32 = d[8..].parse().unwrap();
        assert!(
            year >= 2024 && (1..=12).contains(&month) && (1..=31).contains(&day),
            "{d}"
        );
        let shell = std::process::Command::new("date")
            .args(["-u", "+%F"])
            .output();
        if let Ok(o) = shell {
            assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), d);
        }
    }

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

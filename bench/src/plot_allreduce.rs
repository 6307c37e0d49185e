//! `ferry-bench plot-allreduce`: draws a PNG of all-reduce bus bandwidth (Gbit/s) against
//! message size, one line per method (ferry and each Open MPI configuration) and rank count,
//! from the merged JSON lines `scripts/bench-allreduce.sh` writes (records with `"summary":
//! true`). The bound, B_fast + B_slow of the bed, is drawn as a dashed line.
//! Drawn with the recipe `chart.rs` shares with `plot-gather`.

use std::path::PathBuf;

use plotters::prelude::SeriesLabelPosition;

use crate::chart;
use crate::report::parse_json_lines;

/// Options of `ferry-bench plot-allreduce`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Merged JSON lines from scripts/bench-allreduce.sh.
    input: PathBuf,
    /// The PNG to write.
    output: PathBuf,
    /// Only records with this many ranks (default: every rank count, one line each).
    #[arg(long)]
    ranks: Option<u64>,
    /// A TrueType font for the labels.
    #[arg(
        long,
        default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
    )]
    font: PathBuf,
}

/// One line: its legend and (bytes, busbw Gbit/s) points, by size.
type Line = chart::Series;

/// The summary records' lines, and the bound (Gbit/s of bus bandwidth) where one is given.
fn lines(text: &str, ranks: Option<u64>) -> Result<(Vec<Line>, Option<f64>), String> {
    let mut out: Vec<Line> = Vec::new();
    let mut bound = None;
    for v in parse_json_lines::<serde_json::Value>(text)? {
        if v["summary"] != true || v["bench"] != "allreduce" {
            continue;
        }
        let p = v["ranks"].as_u64().unwrap_or(0);
        if ranks.is_some_and(|r| r != p) {
            continue;
        }
        let (Some(b), Some(bw)) = (v["bytes"].as_f64(), v["busbw_gbps"].as_f64()) else {
            continue;
        };
        if bound.is_none() {
            bound = v["bound_rates"]["total_gbit"].as_f64();
        }
        let name = format!("{}, {p} ranks", v["method"].as_str().unwrap_or("?"));
        match out.iter_mut().find(|l| l.0 == name) {
            Some(l) => l.1.push((b, bw)),
            None => out.push((name, vec![(b, bw)])),
        }
    }
    if out.is_empty() {
        return Err("no all-reduce summary records".into());
    }
    for l in &mut out {
        l.1.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    Ok((out, bound))
}

pub(crate) fn run(args: &Args) -> Result<(), String> {
    let text = std::fs::read_to_string(&args.input)
        .map_err(|e| format!("cannot read {}: {e}", args.input.display()))?;
    let (lines, bound) =
        lines(&text, args.ranks).map_err(|e| format!("{}: {e}", args.input.display()))?;
    chart::register_font(&args.font)?;
    chart::draw(
        &args.output,
        chart::Chart {
            title: "all-reduce (int32 sum) on the test bed: 2 Gbit + 200 Mbit rails per host"
                .into(),
            x_desc: "message bytes",
            y_desc: "bus bandwidth, Gbit/s",
            x_label: chart::bytes_label,
            series: &lines,
            hline: bound.map(|b| (b, format!("bound: B_fast + B_slow = {b} Gbit/s"))),
            emphasise: |name| name.starts_with("ferry"),
            legend_at: SeriesLabelPosition::UpperLeft,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_take_summaries_by_method_and_size() {
        let text = r#"{"bench":"allreduce","summary":true,"method":"ferry","ranks":2,"bytes":1024,"busbw_gbps":0.5,"bound_rates":{"total_gbit":2.2}}
{"bench":"allreduce","summary":true,"method":"ferry","ranks":2,"bytes":4,"busbw_gbps":0.01}
{"bench":"allreduce","impl":"ferry","ranks":2,"bytes":4,"busbw_gbps":9.0}
{"bench":"allreduce","summary":true,"method":"openmpi tuned","ranks":4,"bytes":4,"busbw_gbps":0.02}"#;
        let (lines, bound) = lines(text, None).unwrap();
        assert_eq!(bound, Some(2.2));
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].0, "ferry, 2 ranks");
        assert_eq!(lines[0].1, [(4.0, 0.01), (1024.0, 0.5)]);
        let (lines, _) = super::lines(text, Some(4)).unwrap();
        assert_eq!(lines[0].0, "openmpi tuned, 4 ranks");
        assert!(super::lines(text, Some(8)).is_err());
        assert!(super::lines("{", None).is_err());
    }
}

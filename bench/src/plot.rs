//! `ferry-bench plot-gather`: draws a PNG of gather throughput (GB/s) against row size, one line
//! per method, from the JSON lines `ferry-bench gather --json` writes (with the PyTorch columns
//! when the run had `--torch-json`), through the shared recipe in `chart.rs`; text needs a
//! TrueType font file, read at run time (`--font`, default DejaVu Sans as Debian installs it).

use std::path::PathBuf;

use plotters::prelude::SeriesLabelPosition;

use crate::chart;
use crate::report::parse_json_lines;

/// Options of `ferry-bench plot-gather`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// JSON lines from `ferry-bench gather --json`.
    input: PathBuf,
    /// The PNG to write.
    output: PathBuf,
    /// Which distribution's records to plot.
    #[arg(long, default_value = "uniform")]
    dist: String,
    /// A TrueType font for the labels.
    #[arg(
        long,
        default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
    )]
    font: PathBuf,
    /// Title above the plot (default: the GPU and table size from the records).
    #[arg(long)]
    title: Option<String>,
}

/// The methods drawn: JSON field and legend name.
const METHODS: [(&str, &str); 12] = [
    ("ferry_gbs", "ferry (GPU-bucketed, aligned)"),
    ("grouped_kernel_gbs", "ferry, several batches per pass"),
    ("pipeline_gbs", "ferry GatherPipeline"),
    ("pipeline_grouped_gbs", "ferry GatherPipeline::grouped"),
    ("ferry_no_align_gbs", "ferry without 128 B alignment"),
    ("ferry_unsorted_gbs", "ferry without bucketing"),
    ("ferry_sort_gbs", "ferry, host-sorted (sort untimed)"),
    ("cpu_gbs", "CPU gather + copy"),
    ("torch_tuned_gbs", "PyTorch tuned"),
    ("torch_naive_gbs", "PyTorch naive"),
    ("sm_read_gbs", "sequential SM read (ceiling)"),
    ("h2d_gbs", "pinned H2D copy (link)"),
];

/// One line of the plot: its name and (row bytes, GB/s) points.
type Line = (&'static str, Vec<(f64, f64)>);

/// Reads the `gather` records of `dist` and returns one line per method that has values.
fn lines(text: &str, dist: &str) -> Result<(Vec<Line>, Option<serde_json::Value>), String> {
    let mut records: Vec<serde_json::Value> = parse_json_lines::<serde_json::Value>(text)?
        .into_iter()
        .filter(|v| v["bench"] == "gather" && v["dist"] == dist)
        .collect();
    if records.is_empty() {
        return Err(format!("no gather records with dist '{dist}'"));
    }
    records.sort_by_key(|v| v["row_bytes"].as_u64().unwrap_or(0));
    let mut out = Vec::new();
    for (field, name) in METHODS {
        let points: Vec<(f64, f64)> = records
            .iter()
            .filter_map(|v| Some((v["row_bytes"].as_f64()?, v[field].as_f64()?)))
            .filter(|&(_, y)| y > 0.0)
            .collect();
        if !points.is_empty() {
            out.push((name, points));
        }
    }
    Ok((out, records.first().cloned()))
}

pub(crate) fn run(args: &Args) -> Result<(), String> {
    let text = std::fs::read_to_string(&args.input)
        .map_err(|e| format!("cannot read {}: {e}", args.input.display()))?;
    let (lines, first) =
        lines(&text, &args.dist).map_err(|e| format!("{}: {e}", args.input.display()))?;
    chart::register_font(&args.font)?;
    let title = args.title.clone().unwrap_or_else(|| {
        let first = first.unwrap_or_default();
        format!(
            "gather, {} GiB table, 1 batch of {} {} indices, {}",
            first["table_gib"].as_f64().unwrap_or(0.0),
            first["batch"].as_u64().unwrap_or(0),
            args.dist,
            first["machine"]["gpu"].as_str().unwrap_or("unknown GPU")
        )
    });
    let series: Vec<chart::Series> = lines
        .into_iter()
        .map(|(name, points)| (name.to_string(), points))
        .collect();
    chart::draw(
        &args.output,
        chart::Chart {
            title,
            x_desc: "row bytes",
            y_desc: "GB/s of gathered rows",
            x_label: |x| format!("{x:.0}"),
            series: &series,
            hline: None,
            emphasise: |name| name.starts_with("ferry (GPU"),
            legend_at: SeriesLabelPosition::LowerRight,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_take_each_method_in_row_order() {
        let text = r#"{"bench":"gather","dist":"uniform","row_bytes":512,"ferry_gbs":50.0,"cpu_gbs":20.0,"torch_tuned_gbs":null}
{"bench":"gather-pin","table_bytes":1}
{"bench":"gather","dist":"powerlaw","row_bytes":64,"ferry_gbs":9.0}
{"bench":"gather","dist":"uniform","row_bytes":64,"ferry_gbs":30.0,"cpu_gbs":10.0}"#;
        let (lines, first) = lines(text, "uniform").unwrap();
        assert_eq!(first.unwrap()["row_bytes"], 64);
        let names: Vec<&str> = lines.iter().map(|l| l.0).collect();
        assert_eq!(
            names,
            ["ferry (GPU-bucketed, aligned)", "CPU gather + copy"]
        );
        assert_eq!(lines[0].1, [(64.0, 30.0), (512.0, 50.0)]);
        assert!(super::lines(text, "zipf").is_err());
        assert!(super::lines("{not json", "uniform").is_err());
    }
}

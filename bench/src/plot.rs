//! `ferry-bench plot-gather`: draws a PNG of gather throughput (GB/s) against row size, one line
//! per method, from the JSON lines `ferry-bench gather --json` writes (with the PyTorch columns
//! when the run had `--torch-json`). Uses plotters' bitmap backend; text needs a TrueType font
//! file, read at run time (`--font`, default DejaVu Sans as Debian installs it).

use std::path::PathBuf;

use plotters::prelude::*;

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
const METHODS: [(&str, &str); 10] = [
    ("ferry_gbs", "ferry (GPU-bucketed, aligned)"),
    ("pipeline_gbs", "ferry GatherPipeline"),
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
    let mut records = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("line {}: {e}", n + 1))?;
        if v["bench"] == "gather" && v["dist"] == dist {
            records.push(v);
        }
    }
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
    let font = std::fs::read(&args.font).map_err(|e| {
        format!(
            "cannot read the font {} (--font names another): {e}",
            args.font.display()
        )
    })?;
    // plotters keeps registered fonts for the whole process.
    plotters::style::register_font("sans-serif", FontStyle::Normal, Vec::leak(font))
        .map_err(|_| format!("{} is not a font plotters can read", args.font.display()))?;
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
    let xs = lines.iter().flat_map(|(_, p)| p.iter().map(|q| q.0));
    let (xmin, xmax) = xs.fold((f64::MAX, 0f64), |(a, b), x| (a.min(x), b.max(x)));
    let ymax = lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.1))
        .fold(0f64, f64::max);
    let draw_err = |e: DrawingAreaErrorKind<_>| format!("drawing {}: {e}", args.output.display());
    let root = BitMapBackend::new(&args.output, (1100, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((xmin / 1.2..xmax * 1.2).log_scale(), 0f64..ymax * 1.1)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc("row bytes")
        .y_desc("GB/s of gathered rows")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(draw_err)?;
    for (i, (name, points)) in lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let style = ShapeStyle::from(color).stroke_width(if i == 0 { 3 } else { 2 });
        chart
            .draw_series(LineSeries::new(points.iter().copied(), style))
            .map_err(draw_err)?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(draw_err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(draw_err)?;
    root.present().map_err(draw_err)?;
    println!("wrote {}", args.output.display());
    Ok(())
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

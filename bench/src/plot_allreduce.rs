//! `ferry-bench plot-allreduce`: draws a PNG of all-reduce bus bandwidth (Gbit/s) against
//! message size, one line per method (ferry and each Open MPI configuration) and rank count,
//! from the merged JSON lines `scripts/bench-allreduce.sh` writes (records with `"summary":
//! true`). The bound, B_fast + B_slow of the bed, is drawn as a dashed line.
//!
//! Not done yet: the drawing code is the same plotters recipe as `plot.rs` (gather); the two
//! could share one helper once both settle.

use std::path::PathBuf;

use plotters::prelude::*;

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
type Line = (String, Vec<(f64, f64)>);

/// The summary records' lines, and the bound (Gbit/s of bus bandwidth) where one is given.
fn lines(text: &str, ranks: Option<u64>) -> Result<(Vec<Line>, Option<f64>), String> {
    let mut out: Vec<Line> = Vec::new();
    let mut bound = None;
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("line {}: {e}", n + 1))?;
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
    let font = std::fs::read(&args.font)
        .map_err(|e| format!("cannot read the font {}: {e}", args.font.display()))?;
    // plotters keeps registered fonts for the whole process.
    plotters::style::register_font("sans-serif", FontStyle::Normal, Vec::leak(font))
        .map_err(|_| format!("{} is not a font plotters can read", args.font.display()))?;
    let xs = lines.iter().flat_map(|(_, p)| p.iter().map(|q| q.0));
    let (xmin, xmax) = xs.fold((f64::MAX, 0f64), |(a, b), x| (a.min(x), b.max(x)));
    let ymax = lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.1))
        .chain(bound)
        .fold(0f64, f64::max);
    let draw_err = |e: DrawingAreaErrorKind<_>| format!("drawing {}: {e}", args.output.display());
    let root = BitMapBackend::new(&args.output, (1100, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "all-reduce (int32 sum) on the test bed: 2 Gbit + 200 Mbit rails per host",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((xmin / 1.5..xmax * 1.5).log_scale(), 0f64..ymax * 1.1)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc("message bytes")
        .y_desc("bus bandwidth, Gbit/s")
        .x_label_formatter(&|x| {
            let x = *x;
            if x >= 1048576.0 {
                format!("{:.0}M", x / 1048576.0)
            } else if x >= 1024.0 {
                format!("{:.0}K", x / 1024.0)
            } else {
                format!("{x:.0}")
            }
        })
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(draw_err)?;
    if let Some(b) = bound {
        let style = ShapeStyle::from(BLACK.mix(0.6)).stroke_width(1);
        chart
            .draw_series(DashedLineSeries::new(
                [(xmin / 1.5, b), (xmax * 1.5, b)],
                8,
                6,
                style,
            ))
            .map_err(draw_err)?
            .label(format!("bound: B_fast + B_slow = {b} Gbit/s"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    for (i, (name, points)) in lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let ferry = name.starts_with("ferry");
        let style = ShapeStyle::from(color).stroke_width(if ferry { 3 } else { 2 });
        chart
            .draw_series(LineSeries::new(points.iter().copied(), style))
            .map_err(draw_err)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(draw_err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
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

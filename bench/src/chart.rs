//! One line chart, drawn to PNG with plotters' bitmap backend: the recipe the `plot-*`
//! subcommands share (log-scale x, linear y from 0, one coloured line with dots per series, an
//! optional dashed horizontal line for a bound, a legend). Text needs a TrueType font file,
//! read at run time.

use std::path::Path;

use plotters::prelude::*;

/// One series: its legend and (x, y) points, sorted by x.
pub(crate) type Series = (String, Vec<(f64, f64)>);

/// What to draw.
pub(crate) struct Chart<'a> {
    pub(crate) title: String,
    pub(crate) x_desc: &'a str,
    pub(crate) y_desc: &'a str,
    /// Labels of the log-scale x axis.
    pub(crate) x_label: fn(f64) -> String,
    pub(crate) series: &'a [Series],
    /// A dashed horizontal line (value, legend), e.g. a bound.
    pub(crate) hline: Option<(f64, String)>,
    /// Series drawn thicker (ferry's own).
    pub(crate) emphasise: fn(&str) -> bool,
    pub(crate) legend_at: SeriesLabelPosition,
}

/// Registers the TrueType font at `path` as plotters' "sans-serif" (kept for the process).
pub(crate) fn register_font(path: &Path) -> Result<(), String> {
    let font = std::fs::read(path).map_err(|e| {
        format!(
            "cannot read the font {} (--font names another): {e}",
            path.display()
        )
    })?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, Vec::leak(font))
        .map_err(|_| format!("{} is not a font plotters can read", path.display()))
}

/// Byte counts as axis labels: 4, 1K, 16M.
pub(crate) fn bytes_label(x: f64) -> String {
    if x >= 1048576.0 {
        format!("{:.0}M", x / 1048576.0)
    } else if x >= 1024.0 {
        format!("{:.0}K", x / 1024.0)
    } else {
        format!("{x:.0}")
    }
}

/// Draws `chart` to the PNG `output` (1100 x 700); [`register_font`] first.
pub(crate) fn draw(output: &Path, chart: Chart<'_>) -> Result<(), String> {
    let xs = chart.series.iter().flat_map(|(_, p)| p.iter().map(|q| q.0));
    let (xmin, xmax) = xs.fold((f64::MAX, 0f64), |(a, b), x| (a.min(x), b.max(x)));
    if xmax <= 0.0 {
        return Err("nothing to draw".into());
    }
    let ymax = chart
        .series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.1))
        .chain(chart.hline.as_ref().map(|h| h.0))
        .fold(0f64, f64::max);
    let (x0, x1) = (xmin / 1.4, xmax * 1.4);
    let draw_err = |e: DrawingAreaErrorKind<_>| format!("drawing {}: {e}", output.display());
    let root = BitMapBackend::new(output, (1100, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let mut c = ChartBuilder::on(&root)
        .caption(&chart.title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((x0..x1).log_scale(), 0f64..ymax * 1.1)
        .map_err(draw_err)?;
    c.configure_mesh()
        .x_desc(chart.x_desc)
        .y_desc(chart.y_desc)
        .x_label_formatter(&|x| (chart.x_label)(*x))
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(draw_err)?;
    if let Some((y, name)) = &chart.hline {
        let style = ShapeStyle::from(BLACK.mix(0.6)).stroke_width(1);
        c.draw_series(DashedLineSeries::new([(x0, *y), (x1, *y)], 8, 6, style))
            .map_err(draw_err)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    for (i, (name, points)) in chart.series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let width = if (chart.emphasise)(name) { 3 } else { 2 };
        let style = ShapeStyle::from(color).stroke_width(width);
        c.draw_series(LineSeries::new(points.iter().copied(), style))
            .map_err(draw_err)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        c.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(draw_err)?;
    }
    c.configure_series_labels()
        .position(chart.legend_at)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(draw_err)?;
    root.present().map_err(draw_err)?;
    println!("wrote {}", output.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_labels() {
        assert_eq!(bytes_label(4.0), "4");
        assert_eq!(bytes_label(2048.0), "2K");
        assert_eq!(bytes_label(16.0 * 1048576.0), "16M");
    }
}

//! The memory sweep as a PNG (plotters, bitmap backend): decode tok/s and
//! TTFT against the memory left available, one line per residency case.
//!
//! Text is drawn with DejaVu Sans (Debian `fonts-dejavu-core`), loaded at
//! run time through plotters' `ab_glyph` backend, so no system font
//! library is linked.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::FontStyle;

/// One measured point of one case.
#[derive(Debug, Clone)]
pub struct Point {
    /// Memory left available (the balloon's target), MB.
    pub available_mb: f64,
    /// TTFT median, ms.
    pub ttft_ms: f64,
    /// Decode tok/s median.
    pub decode_tps: f64,
}

/// One line: a residency case across the sweep.
#[derive(Debug, Clone)]
pub struct Series {
    /// The case, e.g. "(a) resident".
    pub label: String,
    /// Its points, in any order.
    pub points: Vec<Point>,
}

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

fn register_font() -> Result<(), String> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let bytes = FONT_PATHS.iter().find_map(|p| std::fs::read(p).ok()).ok_or_else(|| {
            "no DejaVuSans.ttf found (Debian: apt-get install fonts-dejavu-core)".to_owned()
        })?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| "DejaVuSans.ttf is not a usable font".to_owned())
    })
    .clone()
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(23, 190, 207),
];

/// Draw the sweep: top panel decode tok/s, bottom panel TTFT (s), x the
/// available memory in MB. `title` names the model, profile and machine.
pub fn sweep(path: &Path, title: &str, series: &[Series]) -> Result<(), String> {
    register_font()?;
    let all: Vec<&Point> = series.iter().flat_map(|s| &s.points).collect();
    if all.is_empty() {
        return Err("nothing to plot".into());
    }
    let (mut x0, mut x1) =
        all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.available_mb), b.max(p.available_mb)));
    if x1 - x0 < 1.0 {
        x0 -= 100.0;
        x1 += 100.0;
    }
    let pad = (x1 - x0) * 0.05;
    let (x0, x1) = (x0 - pad, x1 + pad);
    let max_tps = all.iter().map(|p| p.decode_tps).fold(0.0, f64::max).max(1e-3) * 1.15;
    let max_ttft = all.iter().map(|p| p.ttft_ms / 1000.0).fold(0.0, f64::max).max(1e-3) * 1.15;

    let root = BitMapBackend::new(path, (1200, 1000)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (head, body) = root.split_vertically(50);
    head.draw(&Text::new(title.to_owned(), (20, 15), ("sans-serif", 22).into_font()))
        .map_err(|e| e.to_string())?;
    let panels = body.split_evenly((2, 1));
    type Pick = fn(&Point) -> f64;
    let specs: [(&str, f64, Pick); 2] =
        [("decode tok/s", max_tps, |p| p.decode_tps), ("TTFT s", max_ttft, |p| p.ttft_ms / 1000.0)];
    for (panel, (ylabel, ymax, pick)) in panels.iter().zip(specs) {
        let mut chart = ChartBuilder::on(panel)
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1, 0.0..ymax)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("memory left available (MB)")
            .y_desc(ylabel)
            .label_style(("sans-serif", 16))
            .axis_desc_style(("sans-serif", 18))
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, s) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let mut pts: Vec<(f64, f64)> = s.points.iter().map(|p| (p.available_mb, pick(p))).collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(3)))
                .map_err(|e| e.to_string())?
                .label(s.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3)));
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 5, color.filled())))
                .map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            // The axes start at 0 and the lines run high, except where decode
            // collapses, which happens at the left (the least memory).
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 16))
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(())
}

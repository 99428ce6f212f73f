//! `DIR/ctr.png`: each version's CTR over time (as the simulated users saw
//! it, over a sliding window) and the candidate's canary weight.
//!
//! Rendered with plotters' bitmap backend; text goes through ab_glyph with a
//! TrueType font read from disk (`RECO_FONT`, else DejaVu Sans from Debian's
//! `fonts-dejavu-core`), so nothing needs fontconfig or a display.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::report::TimelineEntry;

/// Width of the sliding window of the CTR curves, in seconds.
pub const CTR_WINDOW_SECONDS: f64 = 10.0;

/// Where a font is looked for when `RECO_FONT` is unset.
pub const FONT_PATHS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Why the chart could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    #[error("no TrueType font for the chart: set RECO_FONT or install fonts-dejavu-core (looked in {0})")]
    NoFont(String),
    #[error("font {0} is not a TrueType font plotters can read")]
    BadFont(PathBuf),
    #[error("drawing {path}: {reason}")]
    Draw { path: PathBuf, reason: String },
}

/// A point per tick: (seconds, CTR over the last [`CTR_WINDOW_SECONDS`]) per
/// version, from the cumulative counts in the timeline. Pure.
pub fn ctr_series(timeline: &[TimelineEntry], window: f64) -> BTreeMap<String, Vec<(f64, f64)>> {
    let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for (i, entry) in timeline.iter().enumerate() {
        // The latest earlier tick at least `window` old (or the first one).
        let base = timeline[..i].iter().rev().find(|e| entry.t - e.t >= window).or(timeline.first());
        for (version, now) in &entry.traffic {
            let before = base.and_then(|b| b.traffic.get(version)).copied().unwrap_or_default();
            let impressions = now.impressions.saturating_sub(before.impressions);
            if impressions == 0 {
                continue;
            }
            let clicks = now.clicks.saturating_sub(before.clicks);
            series.entry(version.clone()).or_default().push((entry.t, clicks as f64 / impressions as f64));
        }
    }
    series
}

/// The candidate's weight per tick, as (seconds, percent). Pure.
pub fn weight_series(timeline: &[TimelineEntry]) -> Vec<(f64, f64)> {
    timeline.iter().map(|e| (e.t, f64::from(e.weight))).collect()
}

fn load_font() -> Result<(), ChartError> {
    static FONT: OnceLock<Result<(), String>> = OnceLock::new();
    let result = FONT.get_or_init(|| {
        let candidates: Vec<PathBuf> = match std::env::var_os("RECO_FONT") {
            Some(path) => vec![PathBuf::from(path)],
            None => FONT_PATHS.iter().map(PathBuf::from).collect(),
        };
        let Some((path, bytes)) = candidates.iter().find_map(|p| std::fs::read(p).ok().map(|b| (p.clone(), b))) else {
            return Err(candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "));
        };
        // plotters keeps fonts for the life of the process: leak the bytes once.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("bad font: {}", path.display()))
    });
    match result {
        Ok(()) => Ok(()),
        Err(message) => match message.strip_prefix("bad font: ") {
            Some(path) => Err(ChartError::BadFont(PathBuf::from(path))),
            None => Err(ChartError::NoFont(message.clone())),
        },
    }
}

/// Draws the chart to `path` (PNG).
pub fn draw(timeline: &[TimelineEntry], path: &Path) -> Result<(), ChartError> {
    load_font()?;
    let failed = |reason: String| ChartError::Draw { path: path.to_owned(), reason };
    let ctr = ctr_series(timeline, CTR_WINDOW_SECONDS);
    let weights = weight_series(timeline);
    let t_max = timeline.last().map_or(1.0, |e| e.t).max(1.0);
    let ctr_max = ctr.values().flatten().map(|p| p.1).fold(0.0, f64::max).max(0.01) * 1.15;

    let root = BitMapBackend::new(path, (1200, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| failed(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("reco demo: CTR per version and canary weight", ("sans-serif", 24))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .right_y_label_area_size(60)
        .build_cartesian_2d(0.0..t_max, 0.0..ctr_max)
        .map_err(|e| failed(e.to_string()))?
        .set_secondary_coord(0.0..t_max, 0.0..100.0);
    chart
        .configure_mesh()
        .x_desc("seconds since the replayed traffic started")
        .y_desc(format!("CTR (last {CTR_WINDOW_SECONDS:.0} s)"))
        .y_label_formatter(&|v| format!("{:.1}%", 100.0 * v))
        .draw()
        .map_err(|e| failed(e.to_string()))?;
    chart.configure_secondary_axes().y_desc("canary weight (%)").draw().map_err(|e| failed(e.to_string()))?;
    let palette = [BLUE, GREEN, RED, MAGENTA, CYAN];
    for (i, (version, points)) in ctr.iter().enumerate() {
        let color = palette[i % palette.len()];
        chart
            .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))
            .map_err(|e| failed(e.to_string()))?
            .label(format!("CTR {version}"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    let gray = RGBColor(120, 120, 120);
    chart
        .draw_secondary_series(LineSeries::new(weights, gray.stroke_width(1)))
        .map_err(|e| failed(e.to_string()))?
        .label("canary weight")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], gray.stroke_width(1)));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| failed(e.to_string()))?;
    root.present().map_err(|e| failed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use reco_rollout::VersionPhase;

    use super::*;
    use crate::sim::VersionCounts;

    fn entry(t: f64, weight: u8, v1: (u64, u64), v2: (u64, u64)) -> TimelineEntry {
        let counts = |(impressions, clicks)| VersionCounts { impressions, clicks, ..Default::default() };
        TimelineEntry {
            t,
            version: "v2".into(),
            phase: VersionPhase::Canary,
            step: "step 2/4 (canary 10%)".into(),
            weight,
            stable: "v1".into(),
            stable_impressions: 0,
            stable_clicks: 0,
            stable_ctr: 0.0,
            canary_impressions: 0,
            canary_clicks: 0,
            canary_ctr: 0.0,
            verdict: None,
            message: String::new(),
            transitions: Vec::new(),
            traffic: [("v1".to_owned(), counts(v1)), ("v2".to_owned(), counts(v2))].into(),
        }
    }

    fn timeline() -> Vec<TimelineEntry> {
        vec![
            entry(0.0, 0, (0, 0), (0, 0)),
            entry(5.0, 10, (1000, 100), (0, 0)),
            entry(10.0, 10, (2000, 200), (100, 20)),
            entry(20.0, 25, (2500, 300), (300, 60)),
        ]
    }

    #[test]
    fn ctr_curves_use_the_sliding_window() {
        let series = ctr_series(&timeline(), 10.0);
        assert_eq!(series["v1"], vec![(5.0, 0.1), (10.0, 0.1), (20.0, 0.2)]);
        // v2 served nothing until t = 10; then 20/100 and (60-20)/(300-100).
        assert_eq!(series["v2"], vec![(10.0, 0.2), (20.0, 0.2)]);
        assert!(ctr_series(&[], 10.0).is_empty());
        assert_eq!(weight_series(&timeline()), vec![(0.0, 0.0), (5.0, 10.0), (10.0, 10.0), (20.0, 25.0)]);
    }

    #[test]
    fn draws_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctr.png");
        draw(&timeline(), &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        // An empty timeline still draws axes.
        draw(&[], &path).unwrap();
    }
}

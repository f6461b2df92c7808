//! Loss curves as SVG and PNG (`plotters`), for one run or for the variants of a sweep: the
//! training loss as a thin line, the validation loss as a thick one, one colour per run.
//!
//! Text is drawn with an embedded cut of DejaVu Sans (`assets/`), so plots need no system fonts.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use super::metrics::MetricRecord;
use crate::fsutil;

const FONT: &[u8] = include_bytes!("../../assets/DejaVuSans-ASCII.ttf");
const SIZE: (u32, u32) = (960, 560);
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

#[derive(Debug, thiserror::Error)]
#[error("cannot draw {path}: {reason}")]
pub struct PlotError {
    path: String,
    reason: String,
}

fn register_embedded_font() {
    static REGISTERED: OnceLock<()> = OnceLock::new();
    REGISTERED.get_or_init(|| {
        if register_font("sans-serif", FontStyle::Normal, FONT).is_err() {
            unreachable!("the embedded font is a valid TrueType file");
        }
    });
}

/// Writes `<stem>.svg` and `<stem>.png` into `dir`: the loss curves of each `(label, records)`
/// run (an empty label when there is one run).
pub fn write_loss_plots(
    runs: &[(&str, &[MetricRecord])],
    dir: &Path,
    stem: &str,
) -> Result<(), PlotError> {
    register_embedded_font();
    let svg_path = dir.join(format!("{stem}.svg"));
    let fail = |path: &Path, reason: String| PlotError {
        path: path.display().to_string(),
        reason,
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        draw(&root, runs).map_err(|e| fail(&svg_path, e))?;
    }
    fsutil::write_atomic(&svg_path, svg.as_bytes()).map_err(|e| fail(&svg_path, e.to_string()))?;

    // The PNG encoder writes to a path, so it writes a temporary one that is then renamed.
    let png_path = dir.join(format!("{stem}.png"));
    let tmp = dir.join(format!(".{stem}.png.tmp-{}.png", fsutil::unique_suffix()));
    let drawn = (|| {
        let root = BitMapBackend::new(&tmp, SIZE).into_drawing_area();
        draw(&root, runs)?;
        drop(root);
        std::fs::rename(&tmp, &png_path).map_err(|e| e.to_string())
    })();
    if drawn.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    drawn.map_err(|e| fail(&png_path, e))
}

/// Points (step, loss) of one line.
type Curve = Vec<(f64, f64)>;

/// The training and validation loss curves of a run.
fn curves(records: &[MetricRecord]) -> (Curve, Curve) {
    let mut train = Vec::new();
    let mut val = Vec::new();
    for record in records {
        match record {
            MetricRecord::Train { step, loss, .. } => train.push((*step as f64, *loss)),
            MetricRecord::Eval { step, val_loss, .. } => val.push((*step as f64, *val_loss)),
        }
    }
    (train, val)
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    runs: &[(&str, &[MetricRecord])],
) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(err)?;
    let all: Vec<(f64, f64)> = runs
        .iter()
        .flat_map(|(_, records)| {
            let (train, val) = curves(records);
            train.into_iter().chain(val)
        })
        .filter(|(_, y)| y.is_finite())
        .collect();
    let max_step = all.iter().map(|p| p.0).fold(1.0, f64::max);
    let (lo, hi) = all
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
            (lo.min(p.1), hi.max(p.1))
        });
    let (lo, hi) = if lo.is_finite() {
        let pad = ((hi - lo) * 0.05).max(1e-3);
        ((lo - pad).max(0.0), hi + pad)
    } else {
        (0.0, 1.0)
    };
    let mut chart = ChartBuilder::on(root)
        .caption("loss (nats/token)", ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_step, lo..hi)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("optimizer step")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc("cross-entropy")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    for (i, (label, records)) in runs.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let (train, val) = curves(records);
        let name = |what: &str| {
            if label.is_empty() {
                what.to_string()
            } else {
                format!("{label} {what}")
            }
        };
        chart
            .draw_series(LineSeries::new(train, color.mix(0.55).stroke_width(1)))
            .map_err(err)?
            .label(name("train"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.mix(0.55).stroke_width(1))
            });
        chart
            .draw_series(LineSeries::new(val, color.stroke_width(3)))
            .map_err(err)?
            .label(name("validation"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(scale: f64) -> Vec<MetricRecord> {
        (1..=20)
            .flat_map(|step| {
                let loss = scale * 8.0 / (step as f64).sqrt();
                let mut out = vec![MetricRecord::Train {
                    step,
                    loss,
                    lr: 1e-3,
                    grad_norm: 1.0,
                    tokens: step * 100,
                    tokens_per_sec: 1000.0,
                    elapsed_secs: step as f64,
                }];
                if step % 5 == 0 {
                    out.push(MetricRecord::Eval {
                        step,
                        tokens: step * 100,
                        val_loss: loss * 1.1,
                        val_bpb: loss / 3.0,
                    });
                }
                out
            })
            .collect()
    }

    #[test]
    fn writes_an_svg_and_a_png_with_labels() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (records(1.0), records(0.8));
        write_loss_plots(&[("lr=1e-3", &a), ("lr=5e-4", &b)], dir.path(), "sweep").unwrap();
        let svg = std::fs::read_to_string(dir.path().join("sweep.svg")).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..50]);
        assert!(svg.contains("lr=5e-4 validation"));
        assert!(svg.contains("<polyline"));
        let png = std::fs::read(dir.path().join("sweep.png")).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        assert!(png.len() > 5_000, "a drawn image, not a blank one");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 2, "{leftovers:?}");
    }
}

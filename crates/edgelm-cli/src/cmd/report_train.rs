//! `edgelm report-train LOG.jsonl -o curves.png`: loss curves of a `--json` training log
//! (`edgelm finetune` or `edgelm distill`) as a PNG: the training loss per step, the
//! distillation divergence (`div`) when present, and the held-out evaluation loss.
//!
//! Text needs a TrueType font: `EDGELM_FONT=FILE`, else DejaVu Sans or Liberation Sans from
//! the usual system paths; without one the chart is drawn without text (with a warning).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use plotters::prelude::*;
use serde_json::Value;

use super::GlobalArgs;

/// Arguments of `edgelm report-train`.
#[derive(Debug, Args)]
pub struct ReportTrainArgs {
    /// JSON Lines log written by `edgelm finetune --json` or `edgelm distill --json`.
    pub log: PathBuf,
    /// PNG to write.
    #[arg(short, long, default_value = "loss.png")]
    pub output: PathBuf,
    /// Chart title.
    #[arg(long, default_value = "training")]
    pub title: String,
    #[command(flatten)]
    pub global: GlobalArgs,
}

/// Runs `edgelm report-train`.
pub fn run(args: &ReportTrainArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.log)
        .with_context(|| format!("cannot read {}", args.log.display()))?;
    let mut events = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("{}: line {}: not JSON", args.log.display(), i + 1))?;
        events.push(v);
    }
    plot(&events, &args.output, &args.title)?;
    if !args.global.quiet && !args.global.json {
        eprintln!("report-train: wrote {}", args.output.display());
    }
    Ok(())
}

fn font_loaded() -> bool {
    static LOADED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *LOADED.get_or_init(|| {
        let mut candidates: Vec<PathBuf> = std::env::var_os("EDGELM_FONT")
            .map(PathBuf::from)
            .into_iter()
            .collect();
        for p in [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/TTF/DejaVuSans.ttf",
            "/usr/share/fonts/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
            "/Library/Fonts/Arial.ttf",
            "C:\\Windows\\Fonts\\arial.ttf",
        ] {
            candidates.push(PathBuf::from(p));
        }
        for p in candidates {
            if let Ok(bytes) = std::fs::read(&p) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        tracing::warn!("no TrueType font found (set EDGELM_FONT): the chart has no text");
        false
    })
}

/// (step, value) of `field` in the events named `event`.
fn series(events: &[Value], event: &str, field: &str) -> Vec<(f64, f64)> {
    events
        .iter()
        .filter(|e| e["event"] == event)
        .filter_map(|e| Some((e["step"].as_f64()?, e[field].as_f64()?)))
        .filter(|(_, y)| y.is_finite())
        .collect()
}

/// Draws the curves of a training log's `events` into `png`.
pub fn plot(events: &[Value], png: &Path, title: &str) -> Result<()> {
    let train = series(events, "step", "loss");
    let div = series(events, "step", "div");
    let eval = series(events, "eval", "loss");
    if train.is_empty() {
        bail!("the log has no step events to plot");
    }
    let text = font_loaded();
    let all = train.iter().chain(&div).chain(&eval);
    let x_max = all.clone().map(|p| p.0).fold(1.0f64, f64::max);
    let y_max = all.clone().map(|p| p.1).fold(0.0f64, f64::max) * 1.05;
    let y_min = all.map(|p| p.1).fold(f64::INFINITY, f64::min).min(0.0);
    let root = BitMapBackend::new(png, (900, 540)).into_drawing_area();
    let draw = || -> Result<(), Box<dyn std::error::Error + '_>> {
        root.fill(&WHITE)?;
        let mut b = ChartBuilder::on(&root);
        b.margin(12);
        if text {
            b.caption(title, ("sans-serif", 22))
                .x_label_area_size(36)
                .y_label_area_size(52);
        } else {
            b.x_label_area_size(8).y_label_area_size(8);
        }
        let mut chart = b.build_cartesian_2d(0.0..x_max, y_min..y_max.max(1e-3))?;
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc("step").y_desc("loss (nats)");
        } else {
            mesh.disable_x_mesh()
                .disable_y_mesh()
                .x_labels(0)
                .y_labels(0);
        }
        mesh.draw()?;
        // A moving average makes the per-step noise readable.
        let smooth = |s: &[(f64, f64)]| -> Vec<(f64, f64)> {
            let w = (s.len() / 40).max(1);
            (0..s.len())
                .map(|i| {
                    let lo = i.saturating_sub(w);
                    let hi = (i + w + 1).min(s.len());
                    let m = s[lo..hi].iter().map(|p| p.1).sum::<f64>() / (hi - lo) as f64;
                    (s[i].0, m)
                })
                .collect()
        };
        let lines = [
            ("training objective", smooth(&train), BLUE),
            ("divergence to the teacher", smooth(&div), RED),
        ];
        for (name, pts, color) in lines {
            if pts.is_empty() {
                continue;
            }
            let s = chart.draw_series(LineSeries::new(pts, color.stroke_width(2)))?;
            if text {
                s.label(name)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
            }
        }
        if !eval.is_empty() {
            let green = RGBColor(0, 140, 0);
            let s = chart.draw_series(LineSeries::new(eval.clone(), green.stroke_width(2)))?;
            if text {
                s.label("held-out cross-entropy")
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], green));
            }
            chart.draw_series(eval.iter().map(|&p| Circle::new(p, 4, green.filled())))?;
        }
        if text {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()?;
        }
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

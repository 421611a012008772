//! Draws a training run's learning curve as a PNG: held-out pairwise
//! accuracy against the teacher (`train --eval-data` writes it to
//! `<output>/eval.jsonl`) and, where given, DL19/DL20 nDCG@10 of the run's
//! snapshots with BM25 for reference, against the number of lists seen.
//!
//! ```text
//! cargo run --release -p firstrank --example learning_curve -- \
//!     RUN/eval.jsonl [NDCG.tsv] OUT.png [FONT.ttf]
//! ```
//!
//! `NDCG.tsv` has a header and rows `lists<TAB>dl19<TAB>dl20`; empty cells
//! are skipped. The font (for the axis labels) defaults to DejaVu Sans at
//! its Debian path.

use std::error::Error;

use plotters::prelude::*;
use plotters::style::FontStyle;

const BM25: (f64, f64) = (0.5058, 0.4796);

struct Curve {
    first: Vec<(f64, f64)>,
    passage: Vec<(f64, f64)>,
}

fn read_eval(path: &str) -> Result<Curve, Box<dyn Error>> {
    let mut c = Curve {
        first: Vec::new(),
        passage: Vec::new(),
    };
    for (i, line) in std::fs::read_to_string(path)?.lines().enumerate() {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("{path}:{}: {e}", i + 1))?;
        // Lists seen + 1 so that the untrained point sits on a log axis.
        let x = v["lists_seen"]
            .as_f64()
            .ok_or(format!("{path}:{}: lists_seen", i + 1))?
            + 1.0;
        if let Some(y) = v["first_pairwise_accuracy"].as_f64() {
            c.first.push((x, y));
        }
        if let Some(y) = v["passage_pairwise_accuracy"].as_f64() {
            c.passage.push((x, y));
        }
    }
    Ok(c)
}

/// One row of the nDCG table: lists seen + 1, DL19, DL20.
type NdcgRow = (f64, Option<f64>, Option<f64>);

fn read_ndcg(path: &str) -> Result<Vec<NdcgRow>, Box<dyn Error>> {
    let mut rows = Vec::new();
    for (i, line) in std::fs::read_to_string(path)?.lines().enumerate().skip(1) {
        let cells: Vec<&str> = line.split('\t').collect();
        let num = |k: usize| cells.get(k).and_then(|s| s.trim().parse::<f64>().ok());
        let lists = num(0).ok_or(format!("{path}:{}: lists", i + 1))?;
        rows.push((lists + 1.0, num(1), num(2)));
    }
    Ok(rows)
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (eval, ndcg, out, font) = match args.as_slice() {
        [e, o] => (e, None, o, None),
        [e, n, o] => (e, Some(n), o, None),
        [e, n, o, f] => (e, Some(n), o, Some(f.clone())),
        _ => return Err("usage: learning_curve EVAL.jsonl [NDCG.tsv] OUT.png [FONT.ttf]".into()),
    };
    let font = font.unwrap_or_else(|| "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf".into());
    let bytes: &'static [u8] = Box::leak(
        std::fs::read(&font)
            .map_err(|e| format!("{font}: {e} (pass a .ttf font as the last argument)"))?
            .into_boxed_slice(),
    );
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| format!("{font}: not a usable font"))?;
    let curve = read_eval(eval)?;
    let ndcg = match ndcg {
        Some(n) => read_ndcg(n)?,
        None => Vec::new(),
    };
    let max_x = curve
        .first
        .iter()
        .map(|p| p.0)
        .chain(ndcg.iter().map(|r| r.0))
        .fold(2.0f64, f64::max)
        * 1.3;

    let root = BitMapBackend::new(out, (1200, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(600);

    let mut a = ChartBuilder::on(&left)
        .caption(
            "held-out pairwise accuracy vs the teacher",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((1f64..max_x).log_scale(), 0.4f64..0.8)?;
    a.configure_mesh()
        .x_desc("lists seen + 1")
        .y_desc("pairwise accuracy")
        .draw()?;
    a.draw_series(LineSeries::new([(1.0, 0.5), (max_x, 0.5)], BLACK.mix(0.3)))?
        .label("chance")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLACK.mix(0.3)));
    a.draw_series(LineSeries::new(curve.first.clone(), BLUE.stroke_width(2)).point_size(3))?
        .label("FIRST (identifier logits)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLUE));
    if !curve.passage.is_empty() {
        a.draw_series(LineSeries::new(curve.passage.clone(), RED.stroke_width(2)).point_size(3))?
            .label("per-passage scores")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], RED));
    }
    a.configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()?;

    let mut b = ChartBuilder::on(&right)
        .caption("nDCG@10, BM25 top 20 reranked", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((1f64..max_x).log_scale(), 0.4f64..0.65)?;
    b.configure_mesh()
        .x_desc("lists seen + 1")
        .y_desc("nDCG@10")
        .draw()?;
    for (value, color, name) in [(BM25.0, BLUE, "BM25 DL19"), (BM25.1, GREEN, "BM25 DL20")] {
        b.draw_series(LineSeries::new(
            [(1.0, value), (max_x, value)],
            color.mix(0.4),
        ))?
        .label(name)
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color.mix(0.4)));
    }
    let dl19: Vec<(f64, f64)> = ndcg.iter().filter_map(|r| r.1.map(|v| (r.0, v))).collect();
    let dl20: Vec<(f64, f64)> = ndcg.iter().filter_map(|r| r.2.map(|v| (r.0, v))).collect();
    for (points, color, name) in [(dl19, BLUE, "DL19"), (dl20, GREEN, "DL20")] {
        if !points.is_empty() {
            b.draw_series(LineSeries::new(points, color.stroke_width(2)).point_size(4))?
                .label(name)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color));
        }
    }
    b.configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()?;
    root.present()?;
    Ok(())
}

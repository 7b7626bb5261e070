//! SVG charts with `plotters`, in the paper's style: grouped bars per
//! configuration (Fig. 6–8), lines for rule scaling (Fig. 9-like).
#![forbid(unsafe_code)]

use std::path::Path;

use plotters::prelude::*;

const COLORS: [RGBColor; 4] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
];

/// Grouped bars: one group per category, one bar per series (NaN: no bar).
pub fn bars(
    path: &Path,
    title: &str,
    ylabel: &str,
    cats: &[String],
    series: &[(&str, Vec<f64>)],
) -> anyhow::Result<()> {
    let max = series
        .iter()
        .flat_map(|s| s.1.iter())
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.15;
    let w = (180 * cats.len()).max(640) as u32;
    let root = SVGBackend::new(path, (w, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let n = cats.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..n, 0.0..max)?;
    let cats2 = cats.to_vec();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(cats.len() * 2 + 1)
        .x_label_formatter(&move |x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 0.01 && i < cats2.len() {
                cats2[i].clone()
            } else {
                String::new()
            }
        })
        .y_desc(ylabel)
        .draw()?;
    let k = series.len().max(1) as f64;
    let bw = 0.8 / k;
    for (si, (name, vals)) in series.iter().enumerate() {
        let color = COLORS[si % COLORS.len()];
        chart
            .draw_series(
                vals.iter()
                    .enumerate()
                    .filter(|(_, v)| v.is_finite())
                    .map(|(i, v)| {
                        let x0 = i as f64 + 0.1 + si as f64 * bw;
                        Rectangle::new([(x0, 0.0), (x0 + bw * 0.95, *v)], color.filled())
                    }),
            )?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    if series.len() > 1 {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// Lines over a log10 x axis (rule counts).
pub fn lines(
    path: &Path,
    title: &str,
    xlabel: &str,
    ylabel: &str,
    series: &[(&str, Vec<(f64, f64)>)],
) -> anyhow::Result<()> {
    let pts = series
        .iter()
        .flat_map(|s| s.1.iter())
        .filter(|p| p.1.is_finite());
    let (mut x0, mut x1, mut y1) = (f64::MAX, 0.0f64, 0.0f64);
    for p in pts {
        x0 = x0.min(p.0);
        x1 = x1.max(p.0);
        y1 = y1.max(p.1);
    }
    if x0 > x1 {
        return Ok(());
    }
    let root = SVGBackend::new(path, (720, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (x0.max(1.0)..x1.max(10.0)).log_scale(),
            0.0..y1.max(1e-9) * 1.15,
        )?;
    chart
        .configure_mesh()
        .x_desc(xlabel)
        .y_desc(ylabel)
        .draw()?;
    for (si, (name, p)) in series.iter().enumerate() {
        let color = COLORS[si % COLORS.len()];
        let p: Vec<(f64, f64)> = p.iter().copied().filter(|p| p.1.is_finite()).collect();
        chart
            .draw_series(LineSeries::new(p.clone(), color.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], color));
        chart.draw_series(p.into_iter().map(|q| Circle::new(q, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn draws() {
        let d = std::env::temp_dir().join(format!("weir-perf-plot-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        super::bars(
            &d.join("b.svg"),
            "t",
            "pps",
            &["a".into(), "b".into()],
            &[("p50", vec![1.0, 2.0]), ("p99", vec![3.0, f64::NAN])],
        )
        .unwrap();
        super::lines(
            &d.join("l.svg"),
            "t",
            "rules",
            "conn/s",
            &[("nft", vec![(10.0, 5.0), (10000.0, 1.0)])],
        )
        .unwrap();
        assert!(std::fs::read_to_string(d.join("b.svg"))
            .unwrap()
            .contains("<svg"));
        let _ = std::fs::remove_dir_all(&d);
    }
}

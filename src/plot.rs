//! Small self-contained SVG charts for run reports (no plotting dependency).

use std::fmt::Write;

/// One series of a line chart.
pub struct Series<'a> {
    pub name: &'a str,
    pub color: &'a str,
    pub points: Vec<(f64, f64)>,
    /// Draw lines between the points (otherwise only markers).
    pub line: bool,
}

const W: f64 = 640.0;
const H: f64 = 400.0;
const L: f64 = 70.0;
const R: f64 = 20.0;
const T: f64 = 40.0;
const B: f64 = 50.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn header(out: &mut String, title: &str, height: f64) {
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" viewBox="0 0 {W} {height}" font-family="sans-serif" font-size="12">
<rect width="{W}" height="{height}" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>
"#,
        W / 2.0,
        esc(title)
    );
}

fn nice_ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / n as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + 1e-9 * span {
        out.push(t);
        t += step;
    }
    out
}

/// `v` with as many decimals as the tick spacing `step` needs.
fn fmt_tick(v: f64, step: f64) -> String {
    let mut digits = 0usize;
    while digits < 6
        && ((step * 10f64.powi(digits as i32)).round() - step * 10f64.powi(digits as i32)).abs()
            > 1e-6
    {
        digits += 1;
    }
    format!("{v:.digits$}")
}

/// A line chart; `log_x` uses a base-10 x axis. `hline` draws a dashed reference line.
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series<'_>],
    log_x: bool,
    hline: Option<(f64, &str)>,
) -> String {
    let fx = |x: f64| if log_x { x.max(1e-12).log10() } else { x };
    let pts = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(fx(x));
        x1 = x1.max(fx(x));
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if let Some((y, _)) = hline {
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 < 1e-9 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.08).max(1e-6);
    let (y0, y1) = (y0 - pad, y1 + pad);
    let px = |x: f64| L + (fx(x) - x0) / (x1 - x0) * (W - L - R);
    let py = |y: f64| T + (y1 - y) / (y1 - y0) * (H - T - B);
    let mut s = String::new();
    header(&mut s, title, H);
    let _ = writeln!(
        s,
        r##"<rect x="{L}" y="{T}" width="{}" height="{}" fill="none" stroke="#888"/>"##,
        W - L - R,
        H - T - B
    );
    // x ticks
    let xt: Vec<f64> = if log_x {
        let mut v = Vec::new();
        for e in x0.floor() as i32..=x1.ceil() as i32 {
            for m in [1.0, 2.0, 5.0] {
                let val = m * 10f64.powi(e);
                if val.log10() >= x0 - 1e-9 && val.log10() <= x1 + 1e-9 {
                    v.push(val);
                }
            }
        }
        v
    } else {
        nice_ticks(x0, x1, 6)
    };
    let x_step = if xt.len() > 1 { xt[1] - xt[0] } else { 1.0 };
    for x in xt {
        let step = if log_x { x } else { x_step };
        let _ = writeln!(
            s,
            r##"<line x1="{0}" y1="{T}" x2="{0}" y2="{1}" stroke="#eee"/><text x="{0}" y="{2}" text-anchor="middle">{3}</text>"##,
            px(x),
            H - B,
            H - B + 16.0,
            fmt_tick(x, step)
        );
    }
    let yt = nice_ticks(y0, y1, 6);
    let y_step = if yt.len() > 1 { yt[1] - yt[0] } else { 1.0 };
    for y in yt {
        let _ = writeln!(
            s,
            r##"<line x1="{L}" y1="{0}" x2="{1}" y2="{0}" stroke="#eee"/><text x="{2}" y="{3}" text-anchor="end">{4}</text>"##,
            py(y),
            W - R,
            L - 6.0,
            py(y) + 4.0,
            fmt_tick(y, y_step)
        );
    }
    if let Some((y, label)) = hline {
        let _ = writeln!(
            s,
            r##"<line x1="{L}" y1="{0}" x2="{1}" y2="{0}" stroke="#c00" stroke-dasharray="5,4"/><text x="{2}" y="{3}" text-anchor="end" fill="#c00">{4}</text>"##,
            py(y),
            W - R,
            W - R - 4.0,
            py(y) - 4.0,
            esc(label)
        );
    }
    for (i, ser) in series.iter().enumerate() {
        if ser.line && ser.points.len() > 1 {
            let path: Vec<String> = ser
                .points
                .iter()
                .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
                path.join(" "),
                ser.color
            );
        }
        for &(x, y) in &ser.points {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#,
                px(x),
                py(y),
                ser.color
            );
        }
        let ly = T + 16.0 + 16.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{}" y="{}" width="12" height="4" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            L + 10.0,
            ly - 4.0,
            ser.color,
            L + 28.0,
            ly,
            esc(ser.name)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        L + (W - L - R) / 2.0,
        H - 12.0,
        esc(x_label)
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{0}" text-anchor="middle" transform="rotate(-90 16 {0})">{1}</text>"#,
        T + (H - T - B) / 2.0,
        esc(y_label)
    );
    s.push_str("</svg>\n");
    s
}

/// Horizontal bars of values in `[0, 1]` (densities), one per label, with the value printed.
pub fn bar_chart(title: &str, bars: &[(String, f64)]) -> String {
    let row = 22.0;
    let h = T + 20.0 + row * bars.len() as f64;
    let left = 170.0;
    let width = W - left - 80.0;
    let mut s = String::new();
    header(&mut s, title, h);
    for (i, (label, v)) in bars.iter().enumerate() {
        let y = T + row * i as f64;
        let v = v.clamp(0.0, 1.0);
        let _ = writeln!(
            s,
            r##"<text x="{0}" y="{1}" text-anchor="end">{2}</text><rect x="{3}" y="{4}" width="{5}" height="14" fill="#eee"/><rect x="{3}" y="{4}" width="{6:.1}" height="14" fill="#2a6fb0"/><text x="{7}" y="{1}">{8:.2}%</text>"##,
            left - 8.0,
            y + 11.0,
            esc(label),
            left,
            y,
            width,
            v * width,
            left + width + 6.0,
            100.0 * v
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_have_the_precision_of_their_spacing() {
        assert_eq!(fmt_tick(99.15, 0.05), "99.15");
        assert_eq!(fmt_tick(99.2, 0.1), "99.2");
        assert_eq!(fmt_tick(20.0, 5.0), "20");
        assert_eq!(fmt_tick(2.5, 2.5), "2.5");
        let t = nice_ticks(99.07, 99.31, 6);
        let labels: Vec<String> = t.iter().map(|&v| fmt_tick(v, t[1] - t[0])).collect();
        let mut dedup = labels.clone();
        dedup.dedup();
        assert_eq!(labels, dedup, "repeated labels {labels:?}");
    }

    #[test]
    fn charts_are_well_formed() {
        let svg = line_chart(
            "t <&>",
            "x",
            "y",
            &[Series {
                name: "a",
                color: "#000",
                points: vec![(1.0, 99.0), (3.0, 98.5), (10.0, 98.0)],
                line: true,
            }],
            true,
            Some((98.2, "limit")),
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("t &lt;&amp;&gt;") && svg.contains("polyline"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        let bars = bar_chart("d", &[("fc1".into(), 0.25), ("fc2".into(), 1.0)]);
        assert!(bars.contains("25.00%") && bars.contains("100.00%"));
    }
}

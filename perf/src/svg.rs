//! Small hand-written SVG charts (no font or rendering dependencies):
//! grouped bars (latency percentiles) and lines (throughput by clients).

use std::fmt::Write;

/// One data series: name, colour, one value per category / x (None = missing).
pub struct Series {
    pub name: String,
    pub color: &'static str,
    pub values: Vec<Option<f64>>,
}

pub const ETCD_COLOR: &str = "#4e79a7";
pub const IRONCD_COLOR: &str = "#e15759";

const W: f64 = 760.0;
const H: f64 = 420.0;
const ML: f64 = 80.0;
const MR: f64 = 20.0;
const MT: f64 = 50.0;
const MB: f64 = 70.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A short human number: 1.23k, 45.6, 0.123.
pub fn fmt_num(v: f64) -> String {
    let trim = |s: String| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    let a = v.abs();
    if a >= 1e9 {
        trim(format!("{:.3}", v / 1e9)) + "G"
    } else if a >= 1e6 {
        trim(format!("{:.3}", v / 1e6)) + "M"
    } else if a >= 1e3 {
        trim(format!("{:.3}", v / 1e3)) + "k"
    } else if a >= 1.0 || a == 0.0 {
        trim(format!("{v:.3}"))
    } else {
        format!("{v:.0e}")
    }
}

struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
}

impl Axis {
    fn new(values: impl Iterator<Item = f64>, log: bool) -> Axis {
        let vs: Vec<f64> = values.filter(|v| v.is_finite() && (!log || *v > 0.0)).collect();
        if vs.is_empty() {
            return Axis { lo: if log { 1.0 } else { 0.0 }, hi: 10.0, log };
        }
        let max = vs.iter().cloned().fold(f64::MIN, f64::max);
        let min = vs.iter().cloned().fold(f64::MAX, f64::min);
        if log {
            let lo = 10f64.powf(min.log10().floor());
            let mut hi = 10f64.powf(max.log10().ceil());
            if hi <= lo {
                hi = lo * 10.0;
            }
            Axis { lo, hi, log }
        } else {
            let step = nice_step(max / 5.0);
            Axis { lo: 0.0, hi: ((max / step).ceil() * step).max(step), log }
        }
    }

    /// 0..1 position of v.
    fn frac(&self, v: f64) -> f64 {
        if self.log {
            (v.max(self.lo).log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        }
    }

    fn ticks(&self) -> Vec<f64> {
        if self.log {
            let mut t = Vec::new();
            let mut x = self.lo;
            for _ in 0..40 {
                if x > self.hi * 1.0001 {
                    break;
                }
                t.push(x);
                x *= 10.0;
            }
            t
        } else {
            let step = nice_step(self.hi / 5.0);
            (0..=((self.hi / step).round() as usize).min(50)).map(|i| i as f64 * step).collect()
        }
    }
}

fn nice_step(raw: f64) -> f64 {
    if raw <= 0.0 || !raw.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(raw.log10().floor());
    let m = raw / p;
    let n = if m <= 1.0 {
        1.0
    } else if m <= 2.0 {
        2.0
    } else if m <= 5.0 {
        5.0
    } else {
        10.0
    };
    n * p
}

fn frame(s: &mut String, title: &str, y: &Axis, y_label: &str) {
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="24" text-anchor="middle" font-size="15" font-weight="bold">{}</text>
"#,
        W / 2.0,
        esc(title)
    );
    let ph = H - MT - MB;
    for t in y.ticks() {
        let py = MT + ph * (1.0 - y.frac(t));
        let _ = writeln!(
            s,
            r##"<line x1="{ML}" x2="{}" y1="{py:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - MR,
            ML - 6.0,
            py + 4.0,
            fmt_num(t)
        );
    }
    let _ = writeln!(
        s,
        r#"<text transform="translate(18,{}) rotate(-90)" text-anchor="middle">{}</text>"#,
        MT + ph / 2.0,
        esc(y_label)
    );
    let _ = writeln!(s, r#"<line x1="{ML}" x2="{ML}" y1="{MT}" y2="{}" stroke="black"/>"#, H - MB);
    let _ = writeln!(s, r#"<line x1="{ML}" x2="{}" y1="{}" y2="{}" stroke="black"/>"#, W - MR, H - MB, H - MB);
}

fn legend(s: &mut String, series: &[Series]) {
    for (i, se) in series.iter().enumerate() {
        let x = ML + 10.0 + i as f64 * 140.0;
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="{}" width="12" height="12" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            H - 22.0,
            se.color,
            x + 18.0,
            H - 12.0,
            esc(&se.name)
        );
    }
}

/// Grouped bars, one group per category, one bar per series.
pub fn bar_chart(title: &str, y_label: &str, categories: &[String], series: &[Series], log_y: bool) -> String {
    let y = Axis::new(series.iter().flat_map(|s| s.values.iter().flatten().copied()), log_y);
    let mut s = String::new();
    frame(&mut s, title, &y, y_label);
    let pw = W - ML - MR;
    let ph = H - MT - MB;
    let gw = pw / categories.len().max(1) as f64;
    let bw = gw * 0.8 / series.len().max(1) as f64;
    for (ci, c) in categories.iter().enumerate() {
        let gx = ML + gw * ci as f64;
        // Staggered labels so neighbours do not overlap.
        let dy = if categories.len() > 4 { (ci % 2) as f64 * 15.0 } else { 0.0 };
        let _ = writeln!(s, r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#, gx + gw / 2.0, H - MB + 18.0 + dy, esc(c));
        for (si, se) in series.iter().enumerate() {
            let Some(v) = se.values.get(ci).copied().flatten() else { continue };
            let f = y.frac(v).clamp(0.0, 1.0);
            let bh = ph * f;
            let x = gx + gw * 0.1 + bw * si as f64;
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" fill="{}"><title>{}: {}</title></rect>"#,
                MT + ph - bh,
                bw * 0.95,
                se.color,
                esc(&se.name),
                fmt_num(v)
            );
        }
    }
    legend(&mut s, series);
    s.push_str("</svg>\n");
    s
}

/// Lines over numeric x (log x when `log_x`), markers at each point.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, xs: &[f64], series: &[Series], log_x: bool) -> String {
    let y = Axis::new(series.iter().flat_map(|s| s.values.iter().flatten().copied()), false);
    let x = Axis::new(xs.iter().copied(), log_x);
    let mut s = String::new();
    frame(&mut s, title, &y, y_label);
    let pw = W - ML - MR;
    let ph = H - MT - MB;
    for &xv in xs {
        let px = ML + pw * x.frac(xv);
        let _ = writeln!(s, r#"<text x="{px:.1}" y="{}" text-anchor="middle">{}</text>"#, H - MB + 18.0, fmt_num(xv));
    }
    let _ = writeln!(s, r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#, ML + pw / 2.0, H - MB + 36.0, esc(x_label));
    for se in series {
        let pts: Vec<(f64, f64)> = xs
            .iter()
            .zip(&se.values)
            .filter_map(|(&xv, v)| v.map(|v| (ML + pw * x.frac(xv), MT + ph * (1.0 - y.frac(v)))))
            .collect();
        if pts.len() > 1 {
            let d: Vec<String> = pts.iter().map(|(a, b)| format!("{a:.1},{b:.1}")).collect();
            let _ = writeln!(s, r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#, se.color, d.join(" "));
        }
        for (a, b) in &pts {
            let _ = writeln!(s, r#"<circle cx="{a:.1}" cy="{b:.1}" r="4" fill="{}"/>"#, se.color);
        }
    }
    legend(&mut s, series);
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_well_formed_svg() {
        let series = vec![
            Series { name: "etcd".into(), color: ETCD_COLOR, values: vec![Some(1e-3), Some(2e-3), None] },
            Series { name: "ironcd".into(), color: IRONCD_COLOR, values: vec![Some(2e-4), Some(5e-4), Some(9e-4)] },
        ];
        let cats: Vec<String> = ["p50", "p99", "p99.9"].iter().map(|s| s.to_string()).collect();
        let b = bar_chart("put <1/1>", "seconds", &cats, &series, true);
        assert!(b.starts_with("<svg") && b.trim_end().ends_with("</svg>"));
        assert_eq!(b.matches("<rect x=").count(), 5 + 2, "5 bars + 2 legend boxes");
        assert!(b.contains("put &lt;1/1&gt;"));
        let l = line_chart("t", "clients", "req/s", &[1.0, 10.0, 100.0], &series, true);
        assert_eq!(l.matches("<circle").count(), 5);
        assert_eq!(l.matches("<polyline").count(), 2);
    }

    #[test]
    fn numbers_and_steps() {
        assert_eq!(fmt_num(1500.0), "1.5k");
        assert_eq!(fmt_num(0.001), "1e-3");
        assert_eq!(fmt_num(250.0), "250");
        assert_eq!(fmt_num(2000.0), "2k");
        assert_eq!(nice_step(3.3), 5.0);
        assert_eq!(nice_step(0.12), 0.2);
    }
}

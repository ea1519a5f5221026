//! Hand-written SVG plots: stacked time-series panels and grouped bar charts.

use std::fmt::Write as _;

/// One time-series panel: successful requests per 100 ms, failures per 100 ms (red bars, same
/// scale), reload instants (grey ticks under the axis) and single events (blue dashed lines).
pub struct Panel {
    pub title: String,
    pub ok: Vec<u64>,
    pub fails: Vec<u64>,
    pub reloads_ms: Vec<u64>,
    pub events: Vec<(u64, String)>,
}

const W: f64 = 960.0;
const PH: f64 = 150.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
const TOP_GAP: f64 = 34.0;
const BOTTOM_GAP: f64 = 30.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * p >= v {
            return m * p;
        }
    }
    10.0 * p
}

pub fn timeseries(title: &str, panels: &[Panel]) -> String {
    let ph_total = TOP_GAP + PH + BOTTOM_GAP;
    let h = 40.0 + ph_total * panels.len() as f64 + 24.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="11">
<rect width="100%" height="100%" fill="white"/>
<text x="{LEFT}" y="22" font-size="15" font-weight="bold">{}</text>
"#,
        esc(title)
    );
    let pw = W - LEFT - RIGHT;
    for (i, p) in panels.iter().enumerate() {
        let y0 = 40.0 + ph_total * i as f64 + TOP_GAP;
        let base = y0 + PH;
        let n = p.ok.len().max(p.fails.len()).max(1);
        let span_ms = (n as f64) * 100.0;
        let ymax = nice_max(
            p.ok.iter()
                .chain(p.fails.iter())
                .copied()
                .max()
                .unwrap_or(1) as f64,
        );
        let x = |ms: f64| LEFT + pw * (ms / span_ms).min(1.0);
        let y = |v: f64| base - PH * (v / ymax).min(1.0);
        let nfail: u64 = p.fails.iter().sum();
        let _ = writeln!(
            s,
            r##"<text x="{LEFT}" y="{}" font-size="12" font-weight="bold">{}</text><text x="{}" y="{}" text-anchor="end" fill="#555">{} reloads, {} failures</text>"##,
            y0 - 8.0,
            esc(&p.title),
            W - RIGHT,
            y0 - 8.0,
            p.reloads_ms.len(),
            nfail
        );
        let _ = writeln!(
            s,
            r##"<rect x="{LEFT}" y="{y0}" width="{pw}" height="{PH}" fill="none" stroke="#999"/>"##
        );
        for k in 0..=2 {
            let v = ymax * k as f64 / 2.0;
            let _ = writeln!(
                s,
                r##"<text x="{}" y="{}" text-anchor="end" fill="#555">{}</text>"##,
                LEFT - 4.0,
                y(v) + 4.0,
                v
            );
        }
        // x ticks in seconds
        let secs = span_ms / 1000.0;
        let step = nice_max(secs / 8.0).max(0.1);
        let mut t = 0.0;
        while t <= secs + 1e-9 {
            let _ = writeln!(
                s,
                r##"<text x="{}" y="{}" text-anchor="middle" fill="#555">{}s</text>"##,
                x(t * 1000.0),
                base + 24.0,
                (t * 10.0).round() / 10.0
            );
            t += step;
        }
        // Reload ticks, failure bars and the request line as single paths with whole-pixel
        // coordinates: a 60 s storm has 600 of each per panel.
        let mut ticks = String::new();
        for &r in &p.reloads_ms {
            let _ = write!(ticks, "M{:.0} {:.0}v7", x(r as f64), base + 1.0);
        }
        if !ticks.is_empty() {
            let _ = writeln!(
                s,
                r##"<path d="{ticks}" stroke="#888" stroke-width="0.7" fill="none"/>"##
            );
        }
        for (ms, label) in &p.events {
            let _ = writeln!(
                s,
                r##"<line x1="{0:.1}" x2="{0:.1}" y1="{1}" y2="{2}" stroke="#15c" stroke-dasharray="4 3"/><text x="{3:.1}" y="{4}" fill="#15c">{5}</text>"##,
                x(*ms as f64),
                y0,
                base,
                x(*ms as f64) + 3.0,
                y0 + 12.0,
                esc(label)
            );
        }
        let mut pts = String::new();
        for (k, v) in p.ok.iter().enumerate() {
            let _ = write!(
                pts,
                "{:.0},{:.0} ",
                x(k as f64 * 100.0 + 50.0),
                y(*v as f64)
            );
        }
        let _ = writeln!(
            s,
            r##"<polyline points="{pts}" fill="none" stroke="#2a7" stroke-width="1.2"/>"##
        );
        let bw = (pw / n as f64).max(1.0);
        let (mut bars, mut dots) = (String::new(), String::new());
        for (k, v) in p.fails.iter().enumerate().filter(|(_, v)| **v > 0) {
            let _ = write!(
                bars,
                "M{:.1} {:.1}h{bw:.1}V{base}h-{bw:.1}Z",
                x(k as f64 * 100.0),
                y(*v as f64).min(base - 1.0)
            );
            let _ = write!(dots, "M{:.0} {:.0}v0", x(k as f64 * 100.0 + 50.0), y0 + 4.0);
        }
        if !bars.is_empty() {
            let _ = writeln!(
                s,
                r##"<path d="{bars}" fill="#d22"/><path d="{dots}" stroke="#d22" stroke-width="5" stroke-linecap="round"/>"##
            );
        }
    }
    let _ = writeln!(
        s,
        r##"<text x="{LEFT}" y="{}" fill="#555">green: successful requests per 100 ms; red: failed requests per 100 ms (dot on top marks any); grey ticks under the axis: reloads; blue dashed: events</text>
</svg>"##,
        h - 8.0
    );
    s
}

/// Grouped bars: one group per label, one bar per series.
pub fn bars(title: &str, unit: &str, series: &[&str], groups: &[(String, Vec<f64>)]) -> String {
    const COLORS: [&str; 6] = ["#2a7", "#e80", "#15c", "#a3c", "#888", "#d22"];
    let h = 360.0;
    let (top, bottom) = (50.0, 300.0);
    let pw = W - LEFT - RIGHT;
    let vmax = nice_max(
        groups
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .fold(0.0, f64::max),
    );
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="11">
<rect width="100%" height="100%" fill="white"/>
<text x="{LEFT}" y="22" font-size="15" font-weight="bold">{}</text>"#,
        esc(title)
    );
    for k in 0..=4 {
        let v = vmax * k as f64 / 4.0;
        let y = bottom - (bottom - top) * k as f64 / 4.0;
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{}" y1="{y}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end" fill="#555">{} {}</text>"##,
            W - RIGHT,
            LEFT - 4.0,
            y + 4.0,
            (v * 100.0).round() / 100.0,
            esc(unit)
        );
    }
    let gw = pw / groups.len().max(1) as f64;
    let bw = (gw * 0.8) / series.len().max(1) as f64;
    for (g, (label, vals)) in groups.iter().enumerate() {
        let gx = LEFT + gw * g as f64 + gw * 0.1;
        for (k, v) in vals.iter().enumerate() {
            let bh = (bottom - top) * (v / vmax).min(1.0);
            let color = COLORS[k % COLORS.len()];
            let _ = writeln!(
                s,
                r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}"><title>{} {}: {v:.3}</title></rect><text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="9">{}</text>"##,
                gx + bw * k as f64,
                bottom - bh,
                bw * 0.9,
                bh,
                esc(label),
                esc(series.get(k).copied().unwrap_or("")),
                gx + bw * k as f64 + bw * 0.45,
                bottom - bh - 3.0,
                if *v >= 100.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v:.2}")
                }
            );
        }
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"##,
            gx + gw * 0.4,
            bottom + 16.0,
            esc(label)
        );
    }
    for (k, name) in series.iter().enumerate() {
        let x = LEFT + 150.0 * k as f64;
        let _ = writeln!(
            s,
            r##"<rect x="{x}" y="{}" width="10" height="10" fill="{}"/><text x="{}" y="{}">{}</text>"##,
            bottom + 32.0,
            COLORS[k % COLORS.len()],
            x + 14.0,
            bottom + 41.0,
            esc(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

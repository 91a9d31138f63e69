//! The time-series plot as a plain SVG document: open connections, ping p50/p99 and drops, one panel each,
//! sampled once a second. Built by hand (axes, labels, polylines) so it needs no fonts at build or run time.

use std::fmt::Write as _;

use crate::load::Sample;

const WIDTH: f64 = 900.0;
const PANEL_HEIGHT: f64 = 200.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const GAP: f64 = 50.0;

struct Series<'a> {
    label: &'a str,
    color: &'a str,
    points: Vec<(f64, f64)>,
}

/// The SVG for `samples`, titled `title`.
pub fn svg(samples: &[Sample], title: &str) -> String {
    let t_max = samples.last().map_or(1.0, |s| s.t_s).max(1.0);
    let panels: Vec<(&str, Vec<Series<'_>>)> = vec![
        (
            "open connections",
            vec![Series {
                label: "open",
                color: "#1f77b4",
                points: samples.iter().map(|s| (s.t_s, s.open as f64)).collect(),
            }],
        ),
        (
            "ping RTT (ms)",
            vec![
                Series {
                    label: "p50",
                    color: "#2ca02c",
                    points: samples.iter().filter_map(|s| Some((s.t_s, s.ping_p50_ms?))).collect(),
                },
                Series {
                    label: "p99",
                    color: "#d62728",
                    points: samples.iter().filter_map(|s| Some((s.t_s, s.ping_p99_ms?))).collect(),
                },
            ],
        ),
        (
            "drops (cumulative)",
            vec![Series {
                label: "drops",
                color: "#9467bd",
                points: samples.iter().map(|s| (s.t_s, s.drops as f64)).collect(),
            }],
        ),
    ];
    let height = TOP + panels.len() as f64 * (PANEL_HEIGHT + GAP) + 10.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    for (i, (name, series)) in panels.iter().enumerate() {
        let y0 = TOP + i as f64 * (PANEL_HEIGHT + GAP);
        panel(&mut out, y0, name, series, t_max);
    }
    out.push_str("</svg>\n");
    out
}

fn panel(out: &mut String, y0: f64, name: &str, series: &[Series<'_>], t_max: f64) {
    let plot_w = WIDTH - LEFT - RIGHT;
    let y_max = nice_max(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold(0.0, f64::max));
    let x = |t: f64| LEFT + t / t_max * plot_w;
    let y = |v: f64| y0 + PANEL_HEIGHT - v / y_max * PANEL_HEIGHT;
    let _ = writeln!(out, r#"<text x="{LEFT}" y="{}" font-weight="bold">{}</text>"#, y0 - 8.0, escape(name));
    // Grid and y labels.
    for k in 0..=4 {
        let v = y_max * k as f64 / 4.0;
        let yy = y(v);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            yy + 4.0,
            fmt_value(v)
        );
    }
    // x ticks (seconds).
    let step = nice_step(t_max / 8.0);
    let mut t = 0.0;
    while t <= t_max + 1e-9 {
        let xx = x(t);
        let _ = writeln!(
            out,
            r##"<line x1="{xx:.1}" y1="{:.1}" x2="{xx:.1}" y2="{:.1}" stroke="#888"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle">{}s</text>"##,
            y0 + PANEL_HEIGHT,
            y0 + PANEL_HEIGHT + 4.0,
            y0 + PANEL_HEIGHT + 17.0,
            fmt_value(t)
        );
        t += step;
    }
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{y0}" width="{plot_w}" height="{PANEL_HEIGHT}" fill="none" stroke="#444"/>"##
    );
    for (j, s) in series.iter().enumerate() {
        if !s.points.is_empty() {
            let pts: Vec<String> = s.points.iter().map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v))).collect();
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/>"#,
                s.color,
                pts.join(" ")
            );
        }
        let lx = LEFT + plot_w - 120.0 + j as f64 * 60.0;
        let _ = writeln!(
            out,
            r#"<line x1="{lx}" y1="{ly}" x2="{:.1}" y2="{ly}" stroke="{}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 16.0,
            s.color,
            lx + 20.0,
            y0 - 4.0,
            escape(s.label),
            ly = y0 - 8.0,
        );
    }
}

/// 1, 2 or 5 times a power of ten, at least `v` (and at least 1).
fn nice_max(v: f64) -> f64 {
    if v <= 1.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * p).find(|c| *c >= v).unwrap_or(10.0 * p)
}

fn nice_step(v: f64) -> f64 {
    if v <= 1.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * p).find(|c| *c >= v).unwrap_or(10.0 * p)
}

fn fmt_value(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_three_panels() {
        let samples: Vec<Sample> = (1..=10)
            .map(|i| Sample {
                t_s: i as f64,
                open: i * 100,
                ping_p50_ms: Some(0.5),
                ping_p99_ms: (i % 2 == 0).then_some(1.5),
                drops: 0,
            })
            .collect();
        let svg = svg(&samples, "ws://127.0.0.1:1/ <test>");
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert!(svg.contains("&lt;test&gt;"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(nice_max(730.0), 1000.0);
        assert_eq!(nice_max(0.0), 1.0);
    }
}

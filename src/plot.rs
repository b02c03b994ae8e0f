//! Small charts without a plotting dependency: line and marker series on one
//! pair of linear axes, written as SVG (text) and PNG (an RGB raster drawn
//! here, with a built-in 5×7 bitmap font).
//!
//! ```no_run
//! use dora_wgpu::plot::{Chart, Series};
//! let steps = [(0.0, 2.3), (10.0, 1.9), (20.0, 1.7)];
//! let chart = Chart::new("Training loss", "step", "loss")
//!     .with(Series::line("train", steps.to_vec()))
//!     .with(Series::line("validation", vec![(20.0, 1.8)]));
//! chart.save(std::path::Path::new("loss"))?; // loss.svg and loss.png
//! # Ok::<(), dora_wgpu::Error>(())
//! ```
//!
//! The data behind a picture can be checked without looking at pixels: the
//! SVG's marker elements carry `class="point"` and `data-x`/`data-y`, each
//! series group carries `data-points` (the number of points drawn), and both
//! files embed the drawn series as JSON (the SVG in `<metadata
//! id="chart-data">`, the PNG in a zTXt chunk with keyword `chart-data`).
//! Points with a NaN or infinite coordinate are skipped (a line breaks there).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::Result;
use crate::io::write_atomically;

/// An sRGB colour.
pub type Rgb = [u8; 3];

/// Series colours in order (matplotlib's "tab10", familiar from papers).
pub const PALETTE: [Rgb; 10] = [
    [0x1f, 0x77, 0xb4],
    [0xff, 0x7f, 0x0e],
    [0x2c, 0xa0, 0x2c],
    [0xd6, 0x27, 0x28],
    [0x94, 0x67, 0xbd],
    [0x8c, 0x56, 0x4b],
    [0xe3, 0x77, 0xc2],
    [0x7f, 0x7f, 0x7f],
    [0xbc, 0xbd, 0x22],
    [0x17, 0xbe, 0xcf],
];

/// How a series is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SeriesKind {
    /// Points joined in order.
    Line,
    /// One marker per point.
    Markers,
}

/// The shape of a marker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Marker {
    #[default]
    Circle,
    Square,
    Triangle,
    Diamond,
    Cross,
}

impl Marker {
    /// Shapes in the order charts hand them out (e.g. one per method).
    pub const ALL: [Marker; 5] = [
        Marker::Circle,
        Marker::Square,
        Marker::Triangle,
        Marker::Diamond,
        Marker::Cross,
    ];
}

/// One named set of (x, y) points.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Legend text; an empty label keeps the series out of the legend.
    pub label: String,
    pub kind: SeriesKind,
    pub points: Vec<(f64, f64)>,
    /// Used by `Markers` series.
    pub marker: Marker,
    /// `None`: the palette colour of the series' position in the chart.
    pub color: Option<Rgb>,
}

impl Series {
    pub fn line(label: impl Into<String>, points: Vec<(f64, f64)>) -> Series {
        Series {
            label: label.into(),
            kind: SeriesKind::Line,
            points,
            marker: Marker::Circle,
            color: None,
        }
    }

    pub fn markers(label: impl Into<String>, points: Vec<(f64, f64)>) -> Series {
        Series {
            kind: SeriesKind::Markers,
            ..Series::line(label, points)
        }
    }

    pub fn with_marker(mut self, marker: Marker) -> Series {
        self.marker = marker;
        self
    }

    pub fn with_color(mut self, color: Rgb) -> Series {
        self.color = Some(color);
        self
    }

    /// The points that can be drawn (both coordinates finite).
    fn finite_points(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
    }
}

/// A chart: a title, axis labels and series on linear axes that fit the data.
#[derive(Clone, Debug, PartialEq)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// The plotting area in pixels; margins, labels and the legend come on top.
    pub plot_size: (u32, u32),
}

impl Chart {
    pub fn new(
        title: impl Into<String>,
        x_label: impl Into<String>,
        y_label: impl Into<String>,
    ) -> Chart {
        Chart {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            series: Vec::new(),
            plot_size: (560, 380),
        }
    }

    /// Adds a series (builder style).
    pub fn with(mut self, series: Series) -> Chart {
        self.series.push(series);
        self
    }

    /// Writes `<stem>.svg` and `<stem>.png`, each atomically.
    pub fn save(&self, stem: &Path) -> Result<()> {
        write_atomically(&with_suffix(stem, "svg"), self.to_svg().as_bytes())?;
        write_atomically(&with_suffix(stem, "png"), &self.to_png())
    }

    fn color(&self, i: usize) -> Rgb {
        self.series[i].color.unwrap_or(PALETTE[i % PALETTE.len()])
    }

    /// The drawn series as JSON (ASCII only, so it fits a PNG text chunk).
    fn data_json(&self, layout: &Layout) -> String {
        #[derive(Serialize)]
        struct SeriesData<'a> {
            label: &'a str,
            kind: SeriesKind,
            marker: Marker,
            color: String,
            points: Vec<[f64; 2]>,
        }
        #[derive(Serialize)]
        struct Data<'a> {
            title: &'a str,
            x_label: &'a str,
            y_label: &'a str,
            x_range: [f64; 2],
            y_range: [f64; 2],
            series: Vec<SeriesData<'a>>,
        }
        let data = Data {
            title: &self.title,
            x_label: &self.x_label,
            y_label: &self.y_label,
            x_range: [layout.x.lo, layout.x.hi],
            y_range: [layout.y.lo, layout.y.hi],
            series: self
                .series
                .iter()
                .enumerate()
                .map(|(i, s)| SeriesData {
                    label: &s.label,
                    kind: s.kind,
                    marker: s.marker,
                    color: hex(self.color(i)),
                    points: s.finite_points().map(|(x, y)| [x, y]).collect(),
                })
                .collect(),
        };
        // Plain strings and finite numbers: serializing cannot fail.
        let json = serde_json::to_string(&data).unwrap_or_default();
        let mut ascii = String::with_capacity(json.len());
        for c in json.chars() {
            if c.is_ascii() {
                ascii.push(c);
            } else {
                // Non-ASCII only occurs inside JSON strings, where \u escapes are valid.
                for unit in c.encode_utf16(&mut [0; 2]) {
                    let _ = write!(ascii, "\\u{unit:04x}");
                }
            }
        }
        ascii
    }

    /// The chart as an SVG document.
    pub fn to_svg(&self) -> String {
        let l = Layout::new(self);
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="DejaVu Sans Mono, Menlo, Consolas, monospace" font-size="10">
<title>{title}</title>
<metadata id="chart-data">{data}</metadata>
<rect width="{w}" height="{h}" fill="white"/>"#,
            w = l.width,
            h = l.height,
            title = xml_escape(&self.title),
            // JSON's own \u escapes keep markup characters out of the XML.
            data = self
                .data_json(&l)
                .replace('&', "\\u0026")
                .replace('<', "\\u003c")
                .replace('>', "\\u003e"),
        );
        // Grid, frame, ticks and tick labels.
        let (x0, y0, x1, y1) = (l.left, l.top, l.left + l.plot_w, l.top + l.plot_h);
        let _ = writeln!(s, r##"<g class="grid" stroke="#ebebeb">"##);
        for &(p, _) in &l.x_ticks() {
            let _ = writeln!(s, r#"<line x1="{p}" y1="{y0}" x2="{p}" y2="{y1}"/>"#);
        }
        for &(p, _) in &l.y_ticks() {
            let _ = writeln!(s, r#"<line x1="{x0}" y1="{p}" x2="{x1}" y2="{p}"/>"#);
        }
        let _ = writeln!(s, "</g>");
        let _ = writeln!(
            s,
            r#"<g class="axes" stroke="black"><rect x="{x0}" y="{y0}" width="{}" height="{}" fill="none"/>"#,
            l.plot_w, l.plot_h
        );
        for &(p, _) in &l.x_ticks() {
            let _ = writeln!(
                s,
                r#"<line x1="{p}" y1="{y1}" x2="{p}" y2="{}"/>"#,
                y1 + TICK
            );
        }
        for &(p, _) in &l.y_ticks() {
            let _ = writeln!(
                s,
                r#"<line x1="{}" y1="{p}" x2="{x0}" y2="{p}"/>"#,
                x0 - TICK
            );
        }
        let _ = writeln!(s, "</g>");
        let _ = writeln!(s, r#"<g class="tick-labels">"#);
        for (p, label) in l.x_ticks() {
            svg_text(&mut s, "", p, y1 + TICK + 4.0 + GLYPH_H, "middle", 1, label);
        }
        for (p, label) in l.y_ticks() {
            svg_text(&mut s, "", x0 - TICK - 4.0, p + 3.5, "end", 1, label);
        }
        let _ = writeln!(s, "</g>");
        let mid_x = x0 + l.plot_w / 2.0;
        svg_text(
            &mut s,
            "title",
            mid_x,
            PAD + 2.0 * GLYPH_H,
            "middle",
            2,
            &self.title,
        );
        svg_text(
            &mut s,
            "x-label",
            mid_x,
            l.x_label_top + GLYPH_H,
            "middle",
            1,
            &self.x_label,
        );
        if !self.y_label.is_empty() {
            let (cx, cy) = (PAD + GLYPH_H, y0 + l.plot_h / 2.0);
            let _ = writeln!(
                s,
                r#"<text class="y-label" x="{cx}" y="{cy}" text-anchor="middle" transform="rotate(-90 {cx} {cy})">{}</text>"#,
                xml_escape(&self.y_label)
            );
        }
        // Series.
        for (i, series) in self.series.iter().enumerate() {
            let color = hex(self.color(i));
            let count = series.finite_points().count();
            let kind = match series.kind {
                SeriesKind::Line => "line",
                SeriesKind::Markers => "markers",
            };
            let _ = writeln!(
                s,
                r#"<g class="series" data-series="{i}" data-kind="{kind}" data-label="{}" data-points="{count}">"#,
                xml_escape(&series.label)
            );
            match series.kind {
                SeriesKind::Line => {
                    for run in line_runs(series) {
                        let pts: Vec<String> = run
                            .iter()
                            .map(|&(x, y)| format!("{:.2},{:.2}", l.px(x), l.py(y)))
                            .collect();
                        let _ = writeln!(
                            s,
                            r#"<polyline class="line" points="{}" fill="none" stroke="{color}" stroke-width="2" stroke-linejoin="round"/>"#,
                            pts.join(" ")
                        );
                    }
                }
                SeriesKind::Markers => {
                    for (x, y) in series.finite_points() {
                        let attrs = format!(
                            r#"class="point" data-series="{i}" data-x="{}" data-y="{}""#,
                            num(x),
                            num(y)
                        );
                        svg_marker(&mut s, series.marker, l.px(x), l.py(y), &color, &attrs);
                    }
                }
            }
            let _ = writeln!(s, "</g>");
        }
        // Legend.
        let _ = writeln!(s, r#"<g class="legend">"#);
        for (row, i) in l.legend.iter().enumerate() {
            let series = &self.series[*i];
            let (lx, cy) = (l.legend_x, l.legend_row_center(row));
            let color = hex(self.color(*i));
            match series.kind {
                SeriesKind::Line => {
                    let _ = writeln!(
                        s,
                        r#"<line x1="{lx}" y1="{cy}" x2="{}" y2="{cy}" stroke="{color}" stroke-width="2"/>"#,
                        lx + SWATCH
                    );
                }
                SeriesKind::Markers => {
                    svg_marker(&mut s, series.marker, lx + SWATCH / 2.0, cy, &color, "");
                }
            }
            svg_text(
                &mut s,
                "",
                lx + SWATCH + 6.0,
                cy + 3.5,
                "start",
                1,
                &series.label,
            );
        }
        let _ = writeln!(s, "</g>\n</svg>");
        s
    }

    /// The chart as a PNG file (8-bit RGB), with the title and the drawn
    /// series in text chunks.
    pub fn to_png(&self) -> Vec<u8> {
        let l = Layout::new(self);
        let mut c = Canvas::new(l.width as usize, l.height as usize);
        let (x0, y0, x1, y1) = (l.left, l.top, l.left + l.plot_w, l.top + l.plot_h);
        const GRID: Rgb = [0xeb, 0xeb, 0xeb];
        const BLACK: Rgb = [0, 0, 0];
        for &(p, _) in &l.x_ticks() {
            c.line(p, y0, p, y1, 1, GRID);
        }
        for &(p, _) in &l.y_ticks() {
            c.line(x0, p, x1, p, 1, GRID);
        }
        c.line(x0, y0, x1, y0, 1, BLACK);
        c.line(x0, y1, x1, y1, 1, BLACK);
        c.line(x0, y0, x0, y1, 1, BLACK);
        c.line(x1, y0, x1, y1, 1, BLACK);
        for (p, label) in l.x_ticks() {
            c.line(p, y1, p, y1 + TICK, 1, BLACK);
            let w = text_width(label, 1);
            c.text(p - w / 2.0, y1 + TICK + 4.0, label, 1, BLACK);
        }
        for (p, label) in l.y_ticks() {
            c.line(x0 - TICK, p, x0, p, 1, BLACK);
            let w = text_width(label, 1);
            c.text(x0 - TICK - 4.0 - w, p - 3.0, label, 1, BLACK);
        }
        let mid_x = x0 + l.plot_w / 2.0;
        c.text(
            mid_x - text_width(&self.title, 2) / 2.0,
            PAD,
            &self.title,
            2,
            BLACK,
        );
        c.text(
            mid_x - text_width(&self.x_label, 1) / 2.0,
            l.x_label_top,
            &self.x_label,
            1,
            BLACK,
        );
        let half = text_width(&self.y_label, 1) / 2.0;
        c.text_up(PAD, y0 + l.plot_h / 2.0 + half, &self.y_label, BLACK);
        for (i, series) in self.series.iter().enumerate() {
            let color = self.color(i);
            match series.kind {
                SeriesKind::Line => {
                    for run in line_runs(series) {
                        for w in run.windows(2) {
                            let (a, b) = (w[0], w[1]);
                            c.line(l.px(a.0), l.py(a.1), l.px(b.0), l.py(b.1), 2, color);
                        }
                        if let [(x, y)] = run[..] {
                            // A lone point of a line still shows.
                            c.line(l.px(x), l.py(y), l.px(x), l.py(y), 3, color);
                        }
                    }
                }
                SeriesKind::Markers => {
                    for (x, y) in series.finite_points() {
                        c.marker(series.marker, l.px(x), l.py(y), color);
                    }
                }
            }
        }
        for (row, i) in l.legend.iter().enumerate() {
            let series = &self.series[*i];
            let (lx, cy) = (l.legend_x, l.legend_row_center(row));
            match series.kind {
                SeriesKind::Line => c.line(lx, cy, lx + SWATCH, cy, 2, self.color(*i)),
                SeriesKind::Markers => {
                    c.marker(series.marker, lx + SWATCH / 2.0, cy, self.color(*i))
                }
            }
            c.text(lx + SWATCH + 6.0, cy - 3.0, &series.label, 1, BLACK);
        }
        let title = latin1(&self.title);
        encode_png(
            c.width as u32,
            c.height as u32,
            &c.rgb,
            &[(b"Title", &title), (b"Software", b"dora-wgpu")],
            &[(b"chart-data", self.data_json(&l).as_bytes())],
        )
    }
}

/// `stem` with `.ext` appended (not replacing a dot already in the name).
fn with_suffix(stem: &Path, ext: &str) -> PathBuf {
    let mut s = stem.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

/// The runs of consecutive finite points of a line (a NaN breaks the line).
fn line_runs(series: &Series) -> Vec<Vec<(f64, f64)>> {
    let mut runs = vec![Vec::new()];
    for &(x, y) in &series.points {
        if x.is_finite() && y.is_finite() {
            if let Some(run) = runs.last_mut() {
                run.push((x, y));
            }
        } else if runs.last().is_some_and(|r| !r.is_empty()) {
            runs.push(Vec::new());
        }
    }
    runs.retain(|r| !r.is_empty());
    runs
}

fn hex(c: Rgb) -> String {
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

/// A number as JSON writes it: shortest round-trip form.
fn num(v: f64) -> String {
    serde_json::to_string(&v).unwrap_or_default()
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters are not allowed in XML 1.0.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// PNG tEXt is Latin-1: other characters become '?'.
fn latin1(s: &str) -> Vec<u8> {
    s.chars()
        .map(|c| match c as u32 {
            0x20..=0x7e | 0xa0..=0xff => c as u32 as u8,
            _ => b'?',
        })
        .collect()
}

fn svg_text(
    s: &mut String,
    class: &str,
    x: f64,
    baseline: f64,
    anchor: &str,
    scale: u32,
    text: &str,
) {
    if text.is_empty() {
        return;
    }
    let class = if class.is_empty() {
        String::new()
    } else {
        format!(r#" class="{class}""#)
    };
    let size = if scale == 1 {
        String::new()
    } else {
        format!(r#" font-size="{}""#, 10 * scale)
    };
    let _ = writeln!(
        s,
        r#"<text{class} x="{x}" y="{baseline}" text-anchor="{anchor}"{size}>{}</text>"#,
        xml_escape(text)
    );
}

fn svg_marker(s: &mut String, marker: Marker, x: f64, y: f64, color: &str, attrs: &str) {
    let r = MARKER_R;
    let _ = match marker {
        Marker::Circle => writeln!(
            s,
            r#"<circle {attrs} cx="{x:.2}" cy="{y:.2}" r="{r}" fill="{color}"/>"#
        ),
        Marker::Square => writeln!(
            s,
            r#"<rect {attrs} x="{:.2}" y="{:.2}" width="{}" height="{}" fill="{color}"/>"#,
            x - r + 0.5,
            y - r + 0.5,
            2.0 * r - 1.0,
            2.0 * r - 1.0
        ),
        Marker::Triangle => writeln!(
            s,
            r#"<polygon {attrs} points="{:.2},{:.2} {:.2},{:.2} {:.2},{:.2}" fill="{color}"/>"#,
            x,
            y - r - 0.5,
            x - r - 0.5,
            y + r - 0.5,
            x + r + 0.5,
            y + r - 0.5
        ),
        Marker::Diamond => writeln!(
            s,
            r#"<polygon {attrs} points="{:.2},{:.2} {:.2},{:.2} {:.2},{:.2} {:.2},{:.2}" fill="{color}"/>"#,
            x,
            y - r - 0.5,
            x + r + 0.5,
            y,
            x,
            y + r + 0.5,
            x - r - 0.5,
            y
        ),
        Marker::Cross => writeln!(
            s,
            r#"<path {attrs} d="M{:.2},{:.2}L{:.2},{:.2}M{:.2},{:.2}L{:.2},{:.2}" stroke="{color}" stroke-width="2" fill="none"/>"#,
            x - r,
            y - r,
            x + r,
            y + r,
            x - r,
            y + r,
            x + r,
            y - r
        ),
    };
}

// ---------------------------------------------------------------- layout

const PAD: f64 = 12.0;
const TICK: f64 = 5.0;
const GLYPH_W: f64 = 5.0;
const GLYPH_H: f64 = 7.0;
const ADVANCE: f64 = 6.0;
const SWATCH: f64 = 20.0;
const LEGEND_ROW: f64 = 16.0;
const MARKER_R: f64 = 4.0;

/// Pixel width of `text` drawn with the bitmap font at `scale`.
fn text_width(text: &str, scale: u32) -> f64 {
    let n = text.chars().count() as f64;
    if n == 0.0 {
        0.0
    } else {
        ((n - 1.0) * ADVANCE + GLYPH_W) * scale as f64
    }
}

/// One axis: its limits and the "nice" tick values within them.
struct Axis {
    lo: f64,
    hi: f64,
    ticks: Vec<(f64, String)>,
}

impl Axis {
    /// Limits covering `values` with a little room, ticks at 1, 2 or 5 × 10^k.
    fn fit(values: impl Iterator<Item = f64>) -> Axis {
        let (mut lo, mut hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
        if lo > hi {
            (lo, hi) = (0.0, 1.0); // no data
        }
        if hi - lo <= 1e-9 * lo.abs().max(hi.abs()) {
            // One value (or values equal to plotting precision): centre it in a small window.
            let pad = if lo == 0.0 { 1.0 } else { 0.1 * lo.abs() };
            (lo, hi) = (lo - pad, hi + pad);
        } else {
            let pad = 0.04 * (hi - lo);
            (lo, hi) = (lo - pad, hi + pad);
        }
        let step = nice_step((hi - lo) / 5.0);
        let (first, last) = ((lo / step).ceil(), (hi / step).floor());
        let mut ticks = Vec::new();
        if step.is_finite() && step > 0.0 && last - first < 50.0 {
            let mut k = first;
            while k <= last {
                let v = k * step;
                ticks.push((v, tick_label(v, step, lo.abs().max(hi.abs()))));
                k += 1.0;
            }
        }
        Axis { lo, hi, ticks }
    }
}

/// 1, 2 or 5 × 10^k, the nearest to `raw`.
fn nice_step(raw: f64) -> f64 {
    let p = 10f64.powf(raw.log10().floor());
    let f = raw / p;
    let nice = if f < 1.5 {
        1.0
    } else if f < 3.0 {
        2.0
    } else if f < 7.0 {
        5.0
    } else {
        10.0
    };
    nice * p
}

/// A tick value with as many decimals as the step needs; scientific
/// notation for very large or very small values.
fn tick_label(v: f64, step: f64, magnitude: f64) -> String {
    // k·step can land a hair off zero; never print "-0" or "1e-17".
    let v = if v.abs() < step * 1e-6 { 0.0 } else { v };
    let step_exp = (step.log10() + 1e-9).floor();
    if magnitude >= 1e5 || step < 1e-3 {
        if v == 0.0 {
            return "0".into();
        }
        let digits = ((magnitude.log10().floor() - step_exp).clamp(0.0, 6.0)) as usize;
        format!("{v:.digits$e}")
    } else {
        let decimals = (-step_exp).clamp(0.0, 12.0) as usize;
        format!("{v:.decimals$}")
    }
}

/// Where everything goes, shared by the SVG and PNG writers.
struct Layout {
    width: f64,
    height: f64,
    left: f64,
    top: f64,
    plot_w: f64,
    plot_h: f64,
    x_label_top: f64,
    x: Axis,
    y: Axis,
    /// Indices of the series shown in the legend.
    legend: Vec<usize>,
    legend_x: f64,
}

impl Layout {
    fn new(chart: &Chart) -> Layout {
        let points = || chart.series.iter().flat_map(Series::finite_points);
        let x = Axis::fit(points().map(|p| p.0));
        let y = Axis::fit(points().map(|p| p.1));
        let (plot_w, plot_h) = (
            chart.plot_size.0.clamp(50, 10_000) as f64,
            chart.plot_size.1.clamp(50, 10_000) as f64,
        );
        let y_tick_w = y
            .ticks
            .iter()
            .map(|(_, l)| text_width(l, 1))
            .fold(0.0, f64::max);
        let y_label_w = if chart.y_label.is_empty() {
            0.0
        } else {
            GLYPH_H + 10.0
        };
        let left = PAD + y_label_w + y_tick_w + 4.0 + TICK;
        let top = if chart.title.is_empty() {
            PAD + 4.0
        } else {
            PAD + 2.0 * GLYPH_H + 12.0
        };
        let x_label_top = top + plot_h + TICK + 4.0 + GLYPH_H + 10.0;
        let bottom = if chart.x_label.is_empty() {
            TICK + 4.0 + GLYPH_H + PAD
        } else {
            x_label_top - top - plot_h + GLYPH_H + PAD
        };
        let legend: Vec<usize> = (0..chart.series.len())
            .filter(|&i| !chart.series[i].label.is_empty())
            .collect();
        let legend_x = left + plot_w + 16.0;
        // The last x tick label may hang over the plot's right edge.
        let overhang = x.ticks.last().map_or(0.0, |(_, l)| text_width(l, 1) / 2.0);
        let right = if legend.is_empty() {
            PAD + overhang
        } else {
            let label_w = legend
                .iter()
                .map(|&i| text_width(&chart.series[i].label, 1))
                .fold(0.0, f64::max);
            16.0 + SWATCH + 6.0 + label_w + PAD
        };
        let title_w = text_width(&chart.title, 2);
        let width = (left + plot_w + right).max(title_w + 2.0 * PAD).ceil();
        let legend_h = legend.len() as f64 * LEGEND_ROW;
        let height = (top + plot_h + bottom).max(top + legend_h + PAD).ceil();
        Layout {
            width,
            height,
            left,
            top,
            plot_w,
            plot_h,
            x_label_top,
            x,
            y,
            legend,
            legend_x,
        }
    }

    fn px(&self, x: f64) -> f64 {
        self.left + (x - self.x.lo) / (self.x.hi - self.x.lo) * self.plot_w
    }

    fn py(&self, y: f64) -> f64 {
        self.top + self.plot_h - (y - self.y.lo) / (self.y.hi - self.y.lo) * self.plot_h
    }

    /// (pixel position, label) of each x tick.
    fn x_ticks(&self) -> Vec<(f64, &str)> {
        let t = &self.x.ticks;
        t.iter()
            .map(|(v, l)| (self.px(*v).round(), l.as_str()))
            .collect()
    }

    fn y_ticks(&self) -> Vec<(f64, &str)> {
        let t = &self.y.ticks;
        t.iter()
            .map(|(v, l)| (self.py(*v).round(), l.as_str()))
            .collect()
    }

    fn legend_row_center(&self, row: usize) -> f64 {
        self.top + 8.0 + row as f64 * LEGEND_ROW
    }
}

// ---------------------------------------------------------------- raster

/// An RGB image, white to start with; drawing outside it is clipped.
struct Canvas {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
}

impl Canvas {
    fn new(width: usize, height: usize) -> Canvas {
        Canvas {
            width,
            height,
            rgb: vec![0xff; width * height * 3],
        }
    }

    fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if x >= 0 && y >= 0 && (x as usize) < self.width && (y as usize) < self.height {
            let i = (y as usize * self.width + x as usize) * 3;
            self.rgb[i..i + 3].copy_from_slice(&c);
        }
    }

    /// A `thick`-pixel line from (x0, y0) to (x1, y1) (Bresenham, square pen).
    fn line(&mut self, x0: f64, y0: f64, x1: f64, y1: f64, thick: i64, c: Rgb) {
        // Keep coordinates near the canvas so a wild value cannot loop for long.
        let limit = 4.0 * (self.width + self.height) as f64;
        let p = |v: f64| v.round().clamp(-limit, limit) as i64;
        let (mut x, mut y, x1, y1) = (p(x0), p(y0), p(x1), p(y1));
        let (dx, dy) = ((x1 - x).abs(), -(y1 - y).abs());
        let (sx, sy) = (if x < x1 { 1 } else { -1 }, if y < y1 { 1 } else { -1 });
        let mut err = dx + dy;
        let lo = -(thick - 1) / 2;
        loop {
            for oy in lo..lo + thick {
                for ox in lo..lo + thick {
                    self.set(x + ox, y + oy, c);
                }
            }
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    fn marker(&mut self, marker: Marker, x: f64, y: f64, c: Rgb) {
        let r = MARKER_R as i64;
        let (cx, cy) = (x.round() as i64, y.round() as i64);
        for dy in -r..=r {
            for dx in -r..=r {
                let inside = match marker {
                    Marker::Circle => dx * dx + dy * dy <= r * r,
                    Marker::Square => dx.abs() < r && dy.abs() < r,
                    // Apex up: the half-width grows by one pixel every two rows.
                    Marker::Triangle => dy < r && dx.abs() <= (dy + r) / 2,
                    Marker::Diamond => dx.abs() + dy.abs() <= r,
                    Marker::Cross => (dx - dy).abs() <= 1 || (dx + dy).abs() <= 1,
                };
                if inside {
                    self.set(cx + dx, cy + dy, c);
                }
            }
        }
    }

    /// Text with its top-left corner at (x, y), each font pixel `scale`² pixels.
    fn text(&mut self, x: f64, y: f64, text: &str, scale: u32, c: Rgb) {
        let s = scale as i64;
        let (x, y) = (x.round() as i64, y.round() as i64);
        for (k, ch) in text.chars().enumerate() {
            let gx = x + k as i64 * ADVANCE as i64 * s;
            let gy = y + drop_rows(ch) * s;
            for (row, bits) in glyph(ch).iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        for oy in 0..s {
                            for ox in 0..s {
                                self.set(gx + col * s + ox, gy + row as i64 * s + oy, c);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Text read bottom to top (a y-axis label), starting at (x, y_bottom):
    /// the glyphs' tops face left.
    fn text_up(&mut self, x: f64, y_bottom: f64, text: &str, c: Rgb) {
        let (x, y) = (x.round() as i64, y_bottom.round() as i64);
        for (k, ch) in text.chars().enumerate() {
            let (u0, drop) = (k as i64 * ADVANCE as i64, drop_rows(ch));
            for (row, bits) in glyph(ch).iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        // Along the text (u) goes up; down the glyph (row) goes right.
                        self.set(x + drop + row as i64, y - (u0 + col), c);
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------- PNG

/// CRC-32 (ISO-HDLC, as PNG uses) lookup table, built at compile time.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut n = 0;
    while n < 256 {
        let mut c = n as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[n] = c;
        n += 1;
    }
    table
};

fn crc32(parts: &[&[u8]]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for part in parts {
        for &b in *part {
            c = CRC_TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
        }
    }
    c ^ 0xffff_ffff
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc32(&[kind, data]).to_be_bytes());
}

/// An 8-bit RGB PNG: IHDR, tEXt and zTXt chunks, one IDAT, IEND.
fn encode_png(
    width: u32,
    height: u32,
    rgb: &[u8],
    texts: &[(&[u8], &[u8])],
    compressed_texts: &[(&[u8], &[u8])],
) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    // Bit depth 8, colour type 2 (RGB), deflate, adaptive filtering, no interlace.
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    for (key, text) in texts {
        chunk(&mut out, b"tEXt", &[key, &b"\0"[..], text].concat());
    }
    for (key, text) in compressed_texts {
        let z = miniz_oxide::deflate::compress_to_vec_zlib(text, 9);
        chunk(&mut out, b"zTXt", &[key, &b"\0\0"[..], &z].concat());
    }
    // Each scanline starts with its filter type; 0 (none) is plenty for flat
    // chart colours, which deflate squeezes well on its own.
    let row = width as usize * 3;
    let mut raw = Vec::with_capacity((row + 1) * height as usize);
    for line in rgb.chunks(row.max(1)).take(height as usize) {
        raw.push(0);
        raw.extend_from_slice(line);
    }
    chunk(
        &mut out,
        b"IDAT",
        &miniz_oxide::deflate::compress_to_vec_zlib(&raw, 9),
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

// ---------------------------------------------------------------- font

/// A 5×7 glyph: seven rows, top first; bit 4 is the leftmost column.
type Glyph = [u8; 7];

fn glyph(c: char) -> Glyph {
    match c {
        ' '..='~' => FONT[c as usize - 32],
        'Δ' => [0x04, 0x04, 0x0a, 0x0a, 0x11, 0x11, 0x1f],
        '−' | '–' | '—' => FONT[b'-' as usize - 32],
        '·' | '•' => [0x00, 0x00, 0x00, 0x0c, 0x0c, 0x00, 0x00],
        '‖' => [0x0a; 7],
        _ => FONT[b'?' as usize - 32],
    }
}

/// Rows a glyph is drawn below the others: g, p, q and y hang their tails
/// under the baseline (their FONT rows start at the x-height).
fn drop_rows(c: char) -> i64 {
    if matches!(c, 'g' | 'p' | 'q' | 'y') {
        2
    } else {
        0
    }
}

/// Printable ASCII, ' ' (32) to '~' (126).
#[rustfmt::skip]
const FONT: [Glyph; 95] = [
    [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00], // ' '
    [0x04, 0x04, 0x04, 0x04, 0x04, 0x00, 0x04], // !
    [0x0a, 0x0a, 0x0a, 0x00, 0x00, 0x00, 0x00], // "
    [0x0a, 0x0a, 0x1f, 0x0a, 0x1f, 0x0a, 0x0a], // #
    [0x04, 0x0f, 0x14, 0x0e, 0x05, 0x1e, 0x04], // $
    [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03], // %
    [0x0c, 0x12, 0x14, 0x08, 0x15, 0x12, 0x0d], // &
    [0x0c, 0x04, 0x08, 0x00, 0x00, 0x00, 0x00], // '
    [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02], // (
    [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08], // )
    [0x00, 0x04, 0x15, 0x0e, 0x15, 0x04, 0x00], // *
    [0x00, 0x04, 0x04, 0x1f, 0x04, 0x04, 0x00], // +
    [0x00, 0x00, 0x00, 0x00, 0x0c, 0x04, 0x08], // ,
    [0x00, 0x00, 0x00, 0x1f, 0x00, 0x00, 0x00], // -
    [0x00, 0x00, 0x00, 0x00, 0x00, 0x0c, 0x0c], // .
    [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00], // /
    [0x0e, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0e], // 0
    [0x04, 0x0c, 0x04, 0x04, 0x04, 0x04, 0x0e], // 1
    [0x0e, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1f], // 2
    [0x1f, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0e], // 3
    [0x02, 0x06, 0x0a, 0x12, 0x1f, 0x02, 0x02], // 4
    [0x1f, 0x10, 0x1e, 0x01, 0x01, 0x11, 0x0e], // 5
    [0x06, 0x08, 0x10, 0x1e, 0x11, 0x11, 0x0e], // 6
    [0x1f, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08], // 7
    [0x0e, 0x11, 0x11, 0x0e, 0x11, 0x11, 0x0e], // 8
    [0x0e, 0x11, 0x11, 0x0f, 0x01, 0x02, 0x0c], // 9
    [0x00, 0x0c, 0x0c, 0x00, 0x0c, 0x0c, 0x00], // :
    [0x00, 0x0c, 0x0c, 0x00, 0x0c, 0x04, 0x08], // ;
    [0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02], // <
    [0x00, 0x00, 0x1f, 0x00, 0x1f, 0x00, 0x00], // =
    [0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08], // >
    [0x0e, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04], // ?
    [0x0e, 0x11, 0x01, 0x0d, 0x15, 0x15, 0x0e], // @
    [0x0e, 0x11, 0x11, 0x11, 0x1f, 0x11, 0x11], // A
    [0x1e, 0x11, 0x11, 0x1e, 0x11, 0x11, 0x1e], // B
    [0x0e, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0e], // C
    [0x1c, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1c], // D
    [0x1f, 0x10, 0x10, 0x1e, 0x10, 0x10, 0x1f], // E
    [0x1f, 0x10, 0x10, 0x1e, 0x10, 0x10, 0x10], // F
    [0x0e, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0f], // G
    [0x11, 0x11, 0x11, 0x1f, 0x11, 0x11, 0x11], // H
    [0x0e, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0e], // I
    [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0c], // J
    [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11], // K
    [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1f], // L
    [0x11, 0x1b, 0x15, 0x15, 0x11, 0x11, 0x11], // M
    [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11], // N
    [0x0e, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0e], // O
    [0x1e, 0x11, 0x11, 0x1e, 0x10, 0x10, 0x10], // P
    [0x0e, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0d], // Q
    [0x1e, 0x11, 0x11, 0x1e, 0x14, 0x12, 0x11], // R
    [0x0f, 0x10, 0x10, 0x0e, 0x01, 0x01, 0x1e], // S
    [0x1f, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04], // T
    [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0e], // U
    [0x11, 0x11, 0x11, 0x11, 0x11, 0x0a, 0x04], // V
    [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0a], // W
    [0x11, 0x11, 0x0a, 0x04, 0x0a, 0x11, 0x11], // X
    [0x11, 0x11, 0x11, 0x0a, 0x04, 0x04, 0x04], // Y
    [0x1f, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1f], // Z
    [0x0e, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0e], // [
    [0x00, 0x10, 0x08, 0x04, 0x02, 0x01, 0x00], // \
    [0x0e, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0e], // ]
    [0x04, 0x0a, 0x11, 0x00, 0x00, 0x00, 0x00], // ^
    [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1f], // _
    [0x08, 0x04, 0x02, 0x00, 0x00, 0x00, 0x00], // `
    [0x00, 0x00, 0x0e, 0x01, 0x0f, 0x11, 0x0f], // a
    [0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1e], // b
    [0x00, 0x00, 0x0e, 0x10, 0x10, 0x11, 0x0e], // c
    [0x01, 0x01, 0x0d, 0x13, 0x11, 0x11, 0x0f], // d
    [0x00, 0x00, 0x0e, 0x11, 0x1f, 0x10, 0x0e], // e
    [0x06, 0x09, 0x08, 0x1c, 0x08, 0x08, 0x08], // f
    [0x0f, 0x11, 0x11, 0x11, 0x0f, 0x01, 0x0e], // g (drawn 2 rows lower)
    [0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11], // h
    [0x04, 0x00, 0x0c, 0x04, 0x04, 0x04, 0x0e], // i
    [0x02, 0x00, 0x06, 0x02, 0x02, 0x12, 0x0c], // j
    [0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12], // k
    [0x0c, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0e], // l
    [0x00, 0x00, 0x1a, 0x15, 0x15, 0x11, 0x11], // m
    [0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11], // n
    [0x00, 0x00, 0x0e, 0x11, 0x11, 0x11, 0x0e], // o
    [0x1e, 0x11, 0x11, 0x11, 0x1e, 0x10, 0x10], // p (drawn 2 rows lower)
    [0x0f, 0x11, 0x11, 0x11, 0x0f, 0x01, 0x01], // q (drawn 2 rows lower)
    [0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10], // r
    [0x00, 0x00, 0x0e, 0x10, 0x0e, 0x01, 0x1e], // s
    [0x08, 0x08, 0x1c, 0x08, 0x08, 0x09, 0x06], // t
    [0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0d], // u
    [0x00, 0x00, 0x11, 0x11, 0x11, 0x0a, 0x04], // v
    [0x00, 0x00, 0x11, 0x11, 0x15, 0x15, 0x0a], // w
    [0x00, 0x00, 0x11, 0x0a, 0x04, 0x0a, 0x11], // x
    [0x11, 0x11, 0x11, 0x11, 0x0f, 0x01, 0x0e], // y (drawn 2 rows lower)
    [0x00, 0x00, 0x1f, 0x02, 0x04, 0x08, 0x1f], // z
    [0x02, 0x04, 0x04, 0x08, 0x04, 0x04, 0x02], // {
    [0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04], // |
    [0x08, 0x04, 0x04, 0x02, 0x04, 0x04, 0x08], // }
    [0x00, 0x00, 0x08, 0x15, 0x02, 0x00, 0x00], // ~
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        // The CRC catalogue's check value for "123456789".
        assert_eq!(crc32(&[b"123456789"]), 0xcbf4_3926);
    }

    #[test]
    fn ticks_are_nice_and_inside_the_limits() {
        let a = Axis::fit([0.013, 0.087].into_iter());
        let labels: Vec<&str> = a.ticks.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["0.02", "0.04", "0.06", "0.08"]);
        assert!(a.lo < 0.013 && a.hi > 0.087);
        let a = Axis::fit([-3.0, 3.0].into_iter());
        assert!(
            a.ticks.iter().any(|(_, l)| l == "0"),
            "no -0: {:?}",
            a.ticks
        );
        let a = Axis::fit([2e-6, 9e-6].into_iter());
        assert_eq!(a.ticks[0].1, "2e-6");
        let a = Axis::fit([5.0].into_iter());
        assert!(a.lo < 5.0 && a.hi > 5.0 && !a.ticks.is_empty());
    }
}

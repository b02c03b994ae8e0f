//! Small charts: line and marker series on one pair of linear axes, drawn
//! once through a `Painter` into an SVG (text) and into a PNG (rasterised
//! by `tiny-skia`, text from the glyph outlines of DejaVu Sans Mono, embedded
//! by the `dejavu` crate and read by `ttf-parser`; encoded by `png`).
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

use tiny_skia::{FillRule, Paint, PathBuilder, Pixmap, Stroke, Transform};

use crate::error::{Error, Result};
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
        write_atomically(&with_suffix(stem, "png"), &self.to_png()?)
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
        let mut svg = Svg(String::new());
        let _ = writeln!(
            svg.0,
            r#"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="{FONT_FAMILY}" font-size="{FONT_SIZE}">
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
        self.draw(&l, &mut svg);
        svg.0.push_str("</svg>\n");
        svg.0
    }

    /// The chart as a PNG file (8-bit RGB): the same drawing as the SVG,
    /// rasterised by `tiny-skia` with the embedded DejaVu Sans Mono, encoded
    /// by `png` with the title and the drawn series in text chunks.
    pub fn to_png(&self) -> Result<Vec<u8>> {
        let l = Layout::new(self);
        let fail = |e: &dyn std::fmt::Display| Error::InvalidArgument(format!("chart PNG: {e}"));
        let mut pixmap = Pixmap::new(l.width as u32, l.height as u32)
            .ok_or_else(|| fail(&format!("no {}×{} image", l.width, l.height)))?;
        pixmap.fill(tiny_skia::Color::WHITE);
        let face =
            ttf_parser::Face::parse(dejavu::sans_mono::regular(), 0).map_err(|e| fail(&e))?;
        self.draw(
            &l,
            &mut Raster {
                pixmap: &mut pixmap,
                face,
            },
        );
        // Opaque pixels: premultiplied RGBA is plain RGBA; drop the alpha.
        let rgb: Vec<u8> = pixmap
            .data()
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect();
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, pixmap.width(), pixmap.height());
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(png::Compression::High);
        let texts = [
            encoder.add_text_chunk("Title".into(), latin1(&self.title)),
            encoder.add_text_chunk("Software".into(), "dora-wgpu".into()),
            encoder.add_ztxt_chunk("chart-data".into(), self.data_json(&l)),
        ];
        texts
            .into_iter()
            .try_for_each(|r| r.map_err(|e| fail(&e)))?;
        let mut writer = encoder.write_header().map_err(|e| fail(&e))?;
        writer.write_image_data(&rgb).map_err(|e| fail(&e))?;
        writer.finish().map_err(|e| fail(&e))?;
        Ok(out)
    }

    /// Draws the chart once, for either file.
    fn draw(&self, l: &Layout, p: &mut impl Painter) {
        const GRID: Rgb = [0xeb, 0xeb, 0xeb];
        const BLACK: Rgb = [0, 0, 0];
        let (x0, y0, x1, y1) = (l.left, l.top, l.left + l.plot_w, l.top + l.plot_h);
        // One-pixel lines through pixel centres stay sharp.
        let c = |v: f64| v.floor() + 0.5;
        p.group(r#"class="grid""#);
        for &(x, _) in &l.x_ticks() {
            p.line(&[(c(x), c(y0)), (c(x), c(y1))], GRID, 1.0, "");
        }
        for &(y, _) in &l.y_ticks() {
            p.line(&[(c(x0), c(y)), (c(x1), c(y))], GRID, 1.0, "");
        }
        p.end_group();
        p.group(r#"class="axes""#);
        let frame = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)];
        let frame: Vec<_> = frame.iter().map(|&(x, y)| (c(x), c(y))).collect();
        p.line(&frame, BLACK, 1.0, "");
        for &(x, _) in &l.x_ticks() {
            p.line(&[(c(x), c(y1)), (c(x), c(y1 + TICK))], BLACK, 1.0, "");
        }
        for &(y, _) in &l.y_ticks() {
            p.line(&[(c(x0 - TICK), c(y)), (c(x0), c(y))], BLACK, 1.0, "");
        }
        p.end_group();
        p.group(r#"class="tick-labels""#);
        let below = y1 + TICK + 4.0 + GLYPH_H;
        for (x, label) in l.x_ticks() {
            p.text(&Text::new(label, x, below, Anchor::Middle));
        }
        for (y, label) in l.y_ticks() {
            p.text(&Text::new(label, x0 - TICK - 4.0, y + 3.5, Anchor::End));
        }
        p.end_group();
        let mid_x = x0 + l.plot_w / 2.0;
        p.text(&Text {
            class: "title",
            size: 2.0 * FONT_SIZE,
            ..Text::new(&self.title, mid_x, PAD + 2.0 * GLYPH_H, Anchor::Middle)
        });
        p.text(&Text {
            class: "x-label",
            ..Text::new(
                &self.x_label,
                mid_x,
                l.x_label_top + GLYPH_H,
                Anchor::Middle,
            )
        });
        p.text(&Text {
            class: "y-label",
            upward: true,
            ..Text::new(
                &self.y_label,
                PAD + GLYPH_H,
                y0 + l.plot_h / 2.0,
                Anchor::Middle,
            )
        });
        for (i, series) in self.series.iter().enumerate() {
            let color = self.color(i);
            let kind = match series.kind {
                SeriesKind::Line => "line",
                SeriesKind::Markers => "markers",
            };
            p.group(&format!(
                r#"class="series" data-series="{i}" data-kind="{kind}" data-label="{}" data-points="{}""#,
                xml_escape(&series.label),
                series.finite_points().count()
            ));
            match series.kind {
                SeriesKind::Line => {
                    for run in line_runs(series) {
                        let px: Vec<_> = run.iter().map(|&(x, y)| (l.px(x), l.py(y))).collect();
                        p.line(&px, color, 2.0, r#"class="line""#);
                    }
                }
                SeriesKind::Markers => {
                    for (x, y) in series.finite_points() {
                        let attrs = format!(
                            r#"class="point" data-series="{i}" data-x="{}" data-y="{}""#,
                            num(x),
                            num(y)
                        );
                        p.marker(series.marker, l.px(x), l.py(y), color, &attrs);
                    }
                }
            }
            p.end_group();
        }
        p.group(r#"class="legend""#);
        for (row, &i) in l.legend.iter().enumerate() {
            let series = &self.series[i];
            let (lx, cy) = (l.legend_x, l.legend_row_center(row));
            match series.kind {
                SeriesKind::Line => p.line(&[(lx, cy), (lx + SWATCH, cy)], self.color(i), 2.0, ""),
                SeriesKind::Markers => {
                    p.marker(series.marker, lx + SWATCH / 2.0, cy, self.color(i), "")
                }
            }
            p.text(&Text::new(
                &series.label,
                lx + SWATCH + 6.0,
                cy + 3.5,
                Anchor::Start,
            ));
        }
        p.end_group();
    }
}

// ---------------------------------------------------------------- drawing

/// Where text sits relative to its x (SVG's `text-anchor`).
#[derive(Clone, Copy, PartialEq)]
enum Anchor {
    Start,
    Middle,
    End,
}

/// One line of text at (x, baseline); `upward` turns it to read bottom to
/// top (a y-axis label), turning around (x, baseline).
struct Text<'a> {
    text: &'a str,
    class: &'a str,
    x: f64,
    baseline: f64,
    anchor: Anchor,
    size: f64,
    upward: bool,
}

impl<'a> Text<'a> {
    fn new(text: &'a str, x: f64, baseline: f64, anchor: Anchor) -> Text<'a> {
        Text {
            text,
            class: "",
            x,
            baseline,
            anchor,
            size: FONT_SIZE,
            upward: false,
        }
    }
}

/// The drawing operations a chart is made of, in pixel coordinates.
trait Painter {
    /// Starts a group of elements (`attrs`: SVG attributes naming it).
    fn group(&mut self, _attrs: &str) {}
    fn end_group(&mut self) {}
    /// A polyline of `width` pixels.
    fn line(&mut self, points: &[(f64, f64)], color: Rgb, width: f64, attrs: &str);
    fn marker(&mut self, marker: Marker, x: f64, y: f64, color: Rgb, attrs: &str);
    fn text(&mut self, text: &Text);
}

/// The SVG body, element by element.
struct Svg(String);

impl Painter for Svg {
    fn group(&mut self, attrs: &str) {
        let _ = writeln!(self.0, "<g {attrs}>");
    }

    fn end_group(&mut self) {
        self.0.push_str("</g>\n");
    }

    fn line(&mut self, points: &[(f64, f64)], color: Rgb, width: f64, attrs: &str) {
        let pts: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{x:.2},{y:.2}"))
            .collect();
        let _ = writeln!(
            self.0,
            r#"<polyline {attrs} points="{}" fill="none" stroke="{}" stroke-width="{width}" stroke-linejoin="round"/>"#,
            pts.join(" "),
            hex(color)
        );
    }

    fn marker(&mut self, marker: Marker, x: f64, y: f64, color: Rgb, attrs: &str) {
        let color = hex(color);
        let pts = |points: &[(f64, f64)]| -> String {
            let p: Vec<String> = points
                .iter()
                .map(|(x, y)| format!("{x:.2},{y:.2}"))
                .collect();
            p.join(" ")
        };
        let _ = match marker {
            Marker::Circle => writeln!(
                self.0,
                r#"<circle {attrs} cx="{x:.2}" cy="{y:.2}" r="{MARKER_R}" fill="{color}"/>"#
            ),
            Marker::Cross => {
                let p = marker_points(marker, x, y);
                writeln!(
                    self.0,
                    r#"<path {attrs} d="M{}L{}M{}L{}" stroke="{color}" stroke-width="2" fill="none"/>"#,
                    pts(&p[0..1]),
                    pts(&p[1..2]),
                    pts(&p[2..3]),
                    pts(&p[3..4])
                )
            }
            _ => writeln!(
                self.0,
                r#"<polygon {attrs} points="{}" fill="{color}"/>"#,
                pts(&marker_points(marker, x, y))
            ),
        };
    }

    fn text(&mut self, t: &Text) {
        if t.text.is_empty() {
            return;
        }
        let class = if t.class.is_empty() {
            String::new()
        } else {
            format!(r#" class="{}""#, t.class)
        };
        let size = if t.size == FONT_SIZE {
            String::new()
        } else {
            format!(r#" font-size="{}""#, t.size)
        };
        let anchor = match t.anchor {
            Anchor::Start => "start",
            Anchor::Middle => "middle",
            Anchor::End => "end",
        };
        let (x, y) = (t.x, t.baseline);
        let turn = if t.upward {
            format!(r#" transform="rotate(-90 {x} {y})""#)
        } else {
            String::new()
        };
        let _ = writeln!(
            self.0,
            r#"<text{class} x="{x}" y="{y}" text-anchor="{anchor}"{size}{turn}>{}</text>"#,
            xml_escape(t.text)
        );
    }
}

/// Vertices of a square, triangle or diamond marker; the two strokes of a cross.
fn marker_points(marker: Marker, x: f64, y: f64) -> Vec<(f64, f64)> {
    let (r, h) = (MARKER_R, MARKER_R - 0.5);
    match marker {
        Marker::Circle => vec![(x, y)],
        Marker::Square => vec![
            (x - h, y - h),
            (x + h, y - h),
            (x + h, y + h),
            (x - h, y + h),
        ],
        Marker::Triangle => vec![(x, y - r - 0.5), (x - r - 0.5, y + h), (x + r + 0.5, y + h)],
        Marker::Diamond => vec![
            (x, y - r - 0.5),
            (x + r + 0.5, y),
            (x, y + r + 0.5),
            (x - r - 0.5, y),
        ],
        Marker::Cross => vec![
            (x - r, y - r),
            (x + r, y + r),
            (x - r, y + r),
            (x + r, y - r),
        ],
    }
}

/// The PNG's pixels, painted by tiny-skia; text from the font's glyph outlines.
struct Raster<'a> {
    pixmap: &'a mut Pixmap,
    face: ttf_parser::Face<'static>,
}

fn paint(color: Rgb) -> Paint<'static> {
    let mut paint = Paint::default();
    paint.set_color_rgba8(color[0], color[1], color[2], 255);
    paint
}

fn fill(pixmap: &mut Pixmap, path: Option<tiny_skia::Path>, color: Rgb, transform: Transform) {
    if let Some(path) = path {
        pixmap.fill_path(&path, &paint(color), FillRule::Winding, transform, None);
    }
}

fn stroke(pixmap: &mut Pixmap, path: Option<tiny_skia::Path>, color: Rgb, width: f64) {
    let stroke = Stroke {
        width: width as f32,
        line_join: tiny_skia::LineJoin::Round,
        ..Stroke::default()
    };
    if let Some(path) = path {
        pixmap.stroke_path(&path, &paint(color), &stroke, Transform::identity(), None);
    }
}

/// A polyline (or polygon) through `points`; `None` for fewer than two.
fn path_through(points: &[(f64, f64)], close: bool) -> Option<tiny_skia::Path> {
    let mut pb = PathBuilder::new();
    for (k, &(x, y)) in points.iter().enumerate() {
        // Far-off points (a wild value) are clamped so the rasteriser stays bounded.
        let (x, y) = (x.clamp(-1e6, 1e6) as f32, y.clamp(-1e6, 1e6) as f32);
        if k == 0 {
            pb.move_to(x, y);
        } else {
            pb.line_to(x, y);
        }
    }
    if close {
        pb.close();
    }
    pb.finish()
}

impl Painter for Raster<'_> {
    fn line(&mut self, points: &[(f64, f64)], color: Rgb, width: f64, _attrs: &str) {
        if let [(x, y)] = points {
            // A lone point of a line still shows.
            let dot = PathBuilder::from_circle(*x as f32, *y as f32, width as f32);
            fill(self.pixmap, dot, color, Transform::identity());
        } else {
            stroke(self.pixmap, path_through(points, false), color, width);
        }
    }

    fn marker(&mut self, marker: Marker, x: f64, y: f64, color: Rgb, _attrs: &str) {
        let p = marker_points(marker, x, y);
        match marker {
            Marker::Circle => {
                let circle = PathBuilder::from_circle(x as f32, y as f32, MARKER_R as f32);
                fill(self.pixmap, circle, color, Transform::identity());
            }
            Marker::Cross => {
                stroke(self.pixmap, path_through(&p[0..2], false), color, 2.0);
                stroke(self.pixmap, path_through(&p[2..4], false), color, 2.0);
            }
            _ => fill(
                self.pixmap,
                path_through(&p, true),
                color,
                Transform::identity(),
            ),
        }
    }

    fn text(&mut self, t: &Text) {
        let scale = t.size / self.face.units_per_em() as f64;
        let glyphs: Vec<ttf_parser::GlyphId> = t
            .text
            .chars()
            .map(|c| self.face.glyph_index(c).unwrap_or_default())
            .collect();
        let face = &self.face;
        let advance = |g| face.glyph_hor_advance(g).unwrap_or_default() as f64 * scale;
        let width: f64 = glyphs.iter().map(|&g| advance(g)).sum();
        let mut pen = match t.anchor {
            Anchor::Start => 0.0,
            Anchor::Middle => -width / 2.0,
            Anchor::End => -width,
        };
        // Font units (y up) to the text's frame at (x, baseline), then upright or turned.
        let place = if t.upward {
            Transform::from_row(0.0, -1.0, 1.0, 0.0, t.x as f32, t.baseline as f32)
        } else {
            Transform::from_translate(t.x as f32, t.baseline as f32)
        };
        for g in glyphs {
            let mut outline = Outline(PathBuilder::new());
            if face.outline_glyph(g, &mut outline).is_some() {
                let glyph =
                    Transform::from_row(scale as f32, 0.0, 0.0, -scale as f32, pen as f32, 0.0);
                fill(
                    self.pixmap,
                    outline.0.finish(),
                    [0, 0, 0],
                    place.pre_concat(glyph),
                );
            }
            pen += advance(g);
        }
    }
}

/// A glyph outline as a tiny-skia path.
struct Outline(PathBuilder);

impl ttf_parser::OutlineBuilder for Outline {
    fn move_to(&mut self, x: f32, y: f32) {
        self.0.move_to(x, y);
    }
    fn line_to(&mut self, x: f32, y: f32) {
        self.0.line_to(x, y);
    }
    fn quad_to(&mut self, x1: f32, y1: f32, x: f32, y: f32) {
        self.0.quad_to(x1, y1, x, y);
    }
    fn curve_to(&mut self, x1: f32, y1: f32, x2: f32, y2: f32, x: f32, y: f32) {
        self.0.cubic_to(x1, y1, x2, y2, x, y);
    }
    fn close(&mut self) {
        self.0.close();
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
fn latin1(s: &str) -> String {
    s.chars()
        .map(|c| match c as u32 {
            0x20..=0x7e | 0xa0..=0xff => c,
            _ => '?',
        })
        .collect()
}

// ---------------------------------------------------------------- layout

const PAD: f64 = 12.0;
const TICK: f64 = 5.0;
/// Text size in pixels (the font's em); titles are twice as large.
const FONT_SIZE: f64 = 10.0;
/// The PNG's font first; SVG viewers without it fall back to the others.
const FONT_FAMILY: &str = "DejaVu Sans Mono, Menlo, Consolas, monospace";
/// Height of a digit at `FONT_SIZE` (DejaVu Sans Mono's cap height, rounded).
const GLYPH_H: f64 = 7.0;
/// DejaVu Sans Mono's advance (1233/2048 em) at `FONT_SIZE`.
const ADVANCE: f64 = 6.02;
const SWATCH: f64 = 20.0;
const LEGEND_ROW: f64 = 16.0;
const MARKER_R: f64 = 4.0;

/// Pixel width of `text` at `scale` × `FONT_SIZE` (monospace: every glyph alike).
fn text_width(text: &str, scale: u32) -> f64 {
    text.chars().count() as f64 * ADVANCE * scale as f64
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

#[cfg(test)]
mod tests {
    use super::*;

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

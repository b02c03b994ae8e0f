//! The weight-decomposition analysis (DoRA paper §3.2) and the chart files:
//! ΔM and ΔD against plain f64 on the CPU, constructed cases with known
//! answers, the least-squares fits against hand values, PNG/SVG files read
//! back by the `png` and `roxmltree` crates (checksums, the raster size, XML
//! well-formedness) and checked by the data they embed, and the `analyze`
//! command end to end.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{fixture, gpu, random, round_bf16, temp_dir, to_f64};
use dora_wgpu::io::{read_safetensors, AdapterWeights};
use dora_wgpu::nn::{Rng, PROJECTIONS};
use dora_wgpu::plot::{Chart, Marker, Series};
use dora_wgpu::tasks::analyze::{self, decompose, fit_line, Record};
use dora_wgpu::{DType, Tensor};
use serde_json::Value;

// ------------------------------------------------------------ references

/// (ΔM, ΔD) in f64 straight from the definition: cosines from dot products.
fn decompose_ref(w0: &[f64], wt: &[f64], rows: usize, cols: usize) -> (f64, f64) {
    let (mut dm, mut dd) = (0.0, 0.0);
    for i in 0..rows {
        let (a, b) = (&w0[i * cols..(i + 1) * cols], &wt[i * cols..(i + 1) * cols]);
        let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let na = a.iter().map(|x| x * x).sum::<f64>().sqrt();
        let nb = b.iter().map(|x| x * x).sum::<f64>().sqrt();
        dm += (nb - na).abs();
        dd += 1.0 - dot / (na * nb);
    }
    (dm / rows as f64, dd / rows as f64)
}

fn upload(data: &[f32], shape: &[usize], dtype: DType) -> Tensor {
    Tensor::from_f32_as(gpu(), data, shape, dtype).unwrap()
}

fn close(what: &str, got: f64, want: f64, rtol: f64, atol: f64) {
    assert!(
        (got - want).abs() <= atol + rtol * want.abs(),
        "{what}: got {got:e}, want {want:e}"
    );
}

// ------------------------------------------------------------ ΔM and ΔD

#[test]
fn decomposition_matches_f64_on_random_weights() {
    let mut rng = Rng::new(7);
    for &(rows, cols) in &[(1, 1), (7, 33), (33, 257), (64, 160), (257, 5)] {
        let w0 = random(&mut rng, rows * cols);
        let noise = random(&mut rng, rows * cols);
        let near: Vec<f32> = w0.iter().zip(&noise).map(|(w, n)| w + 0.05 * n).collect();
        let far = random(&mut rng, rows * cols);
        for (name, wt) in [("small update", &near), ("unrelated", &far)] {
            for dtype in [DType::F32, DType::BF16] {
                let w0_stored = if dtype == DType::BF16 {
                    round_bf16(&w0)
                } else {
                    w0.clone()
                };
                let got = decompose(
                    &upload(&w0, &[rows, cols], dtype),
                    &upload(wt, &[rows, cols], DType::F32),
                )
                .unwrap();
                let (dm, dd) = decompose_ref(&to_f64(&w0_stored), &to_f64(wt), rows, cols);
                let what = format!("[{rows}, {cols}] {name} {dtype:?}");
                close(&format!("{what} ΔM"), got.delta_m, dm, 1e-5, 1e-7);
                close(&format!("{what} ΔD"), got.delta_d, dd, 1e-4, 1e-7);
            }
        }
    }
}

#[test]
fn row_rescaling_changes_magnitude_only() {
    let mut rng = Rng::new(11);
    let (rows, cols) = (33, 65);
    let w0 = random(&mut rng, rows * cols);
    let c: Vec<f64> = (0..rows).map(|_| rng.uniform_in(0.5, 2.0) as f64).collect();
    let wt: Vec<f32> = (0..rows * cols)
        .map(|k| (w0[k] as f64 * c[k / cols]) as f32)
        .collect();
    let got = decompose(
        &upload(&w0, &[rows, cols], DType::F32),
        &upload(&wt, &[rows, cols], DType::F32),
    )
    .unwrap();
    // ‖c·w‖ − ‖w‖ = (c − 1)·‖w‖.
    let norms = common::row_norm_ref(&to_f64(&w0), rows, cols);
    let want_dm = (0..rows)
        .map(|i| (c[i] - 1.0).abs() * norms[i])
        .sum::<f64>()
        / rows as f64;
    close("ΔM", got.delta_m, want_dm, 1e-5, 0.0);
    assert!(got.delta_d.abs() < 1e-6, "ΔD {:e} should be 0", got.delta_d);
}

#[test]
fn rotation_on_the_input_side_changes_direction_only() {
    let mut rng = Rng::new(13);
    let theta = 0.3f64;
    let (c, s) = (theta.cos(), theta.sin());
    // W·Q with Q block-diagonal Givens rotations on coordinate pairs (2k, 2k+1):
    // each pair (x, y) becomes (x·c + y·s, −x·s + y·c), so a row keeps its norm
    // and its dot product with the original is c times its rotated part's ‖·‖².
    // With an odd width the last coordinate is left alone.
    for &(rows, cols) in &[(20, 48), (7, 33)] {
        let w0 = random(&mut rng, rows * cols);
        let mut wt = w0.clone();
        let mut want_dd = 0.0;
        for i in 0..rows {
            let (row, out) = (
                &w0[i * cols..(i + 1) * cols],
                &mut wt[i * cols..(i + 1) * cols],
            );
            let mut rotated = 0.0;
            for p in 0..cols / 2 {
                let (x, y) = (row[2 * p] as f64, row[2 * p + 1] as f64);
                out[2 * p] = (x * c + y * s) as f32;
                out[2 * p + 1] = (-x * s + y * c) as f32;
                rotated += x * x + y * y;
            }
            let total: f64 = row.iter().map(|&v| (v as f64).powi(2)).sum();
            // 1 − cos = (1 − c)·(rotated part)/‖row‖².
            want_dd += (1.0 - c) * rotated / total;
        }
        want_dd /= rows as f64;
        let got = decompose(
            &upload(&w0, &[rows, cols], DType::F32),
            &upload(&wt, &[rows, cols], DType::F32),
        )
        .unwrap();
        assert!(
            got.delta_m < 2e-6,
            "[{rows}, {cols}] ΔM {:e} should be 0",
            got.delta_m
        );
        close(
            &format!("[{rows}, {cols}] ΔD"),
            got.delta_d,
            want_dd,
            1e-5,
            0.0,
        );
        if cols % 2 == 0 {
            close("ΔD = 1 − cos θ", got.delta_d, 1.0 - c, 1e-5, 0.0);
        }
    }
}

#[test]
fn zero_rows_and_bad_shapes() {
    // A zero row: unchanged when both are zero, a full direction change when one is.
    let w0 = [0.0, 0.0, 1.0, 2.0, 0.0, 0.0];
    let wt = [0.0, 0.0, 1.0, 2.0, 3.0, 4.0];
    let got = decompose(
        &upload(&w0, &[3, 2], DType::F32),
        &upload(&wt, &[3, 2], DType::F32),
    )
    .unwrap();
    close("ΔM", got.delta_m, 5.0 / 3.0, 1e-6, 0.0);
    close("ΔD", got.delta_d, 1.0 / 3.0, 1e-6, 0.0);
    let err = decompose(
        &upload(&w0, &[3, 2], DType::F32),
        &upload(&wt, &[2, 3], DType::F32),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("[2, 3]") && err.contains("[3, 2]"), "{err}");
    assert_eq!(err.lines().count(), 1);
}

// ------------------------------------------------------------ fits

#[test]
fn least_squares_slope_and_pearson_match_hand_values() {
    // x̄ = ȳ = 2.5, Σdx·dy = 3, Σdx² = Σdy² = 5: slope 0.6, intercept 1, r 0.6.
    let f = fit_line(&[(1.0, 2.0), (2.0, 1.0), (3.0, 4.0), (4.0, 3.0)]);
    close("slope", f.slope.unwrap(), 0.6, 1e-12, 0.0);
    close("intercept", f.intercept.unwrap(), 1.0, 1e-12, 0.0);
    close("r", f.pearson.unwrap(), 0.6, 1e-12, 0.0);
    let f = fit_line(&[(1.0, 3.0), (2.0, 2.0), (3.0, 1.0), (f64::NAN, 9.0)]);
    assert_eq!(f.points, 3, "NaN skipped");
    close("slope", f.slope.unwrap(), -1.0, 1e-12, 0.0);
    close("r", f.pearson.unwrap(), -1.0, 1e-12, 0.0);
    // Small, close ΔD values as the analysis produces them.
    let pts: Vec<(f64, f64)> = (0..5)
        .map(|i| (1e-4 + i as f64 * 1e-6, 0.02 - 300.0 * i as f64 * 1e-6))
        .collect();
    close(
        "tiny slope",
        fit_line(&pts).slope.unwrap(),
        -300.0,
        1e-6,
        0.0,
    );
    // Degenerate inputs give no fit rather than NaN.
    assert_eq!(fit_line(&[]).slope, None);
    assert_eq!(fit_line(&[(1.0, 1.0)]).slope, None);
    assert_eq!(fit_line(&[(1.0, 1.0), (1.0, 2.0)]).slope, None);
    let flat = fit_line(&[(1.0, 2.0), (3.0, 2.0)]);
    assert_eq!((flat.slope, flat.pearson), (Some(0.0), None));
}

fn rec(checkpoint: &str, method: &str, d: f64, m: f64) -> Record {
    Record {
        module: format!("model.layers.0.mlp.up_proj.{d}"),
        checkpoint: checkpoint.into(),
        method: method.into(),
        delta_m: m,
        delta_d: d,
    }
}

#[test]
fn fits_group_by_method_and_checkpoint() {
    let records = vec![
        rec("ck-1", "DoRA", 1.0, 3.0),
        rec("ck-1", "DoRA", 2.0, 1.0),
        rec("ck-2", "DoRA", 3.0, 2.0),
        rec("ck-2", "DoRA", 4.0, 2.0),
        rec("lora", "LoRA", 1.0, 1.0),
        rec("lora", "LoRA", 2.0, 3.0),
    ];
    let fits = analyze::fits(&records);
    let keys: Vec<(&str, Option<&str>, usize)> = fits
        .iter()
        .map(|f| (f.method.as_str(), f.checkpoint.as_deref(), f.line.points))
        .collect();
    assert_eq!(
        keys,
        [
            ("DoRA", Some("ck-1"), 2),
            ("DoRA", Some("ck-2"), 2),
            ("DoRA", None, 4),
            ("LoRA", Some("lora"), 2)
        ]
    );
    assert_eq!(fits[0].line.slope, Some(-2.0));
    assert_eq!(fits[1].line.slope, Some(0.0));
    // Pooled DoRA: x̄ 2.5, ȳ 2, Σdx·dy = −1.5·1 − 0.5·(−1) + 0 + 0 = −1, Σdx² = 5.
    close(
        "pooled slope",
        fits[2].line.slope.unwrap(),
        -0.2,
        1e-12,
        0.0,
    );
    close(
        "pooled r",
        fits[2].line.pearson.unwrap(),
        -1.0 / (5.0f64 * 2.0).sqrt(),
        1e-12,
        0.0,
    );
    assert_eq!(fits[3].line.slope, Some(2.0));
}

#[test]
fn csv_and_json_writers() {
    let records = vec![
        rec("a,b", "DoRA", 0.25, 1.5e-7),
        rec("plain", "LoRA", 1.0, 2.0),
    ];
    let csv = analyze::to_csv(&records);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "module,checkpoint,method,delta_m,delta_d");
    assert_eq!(
        lines[1],
        "model.layers.0.mlp.up_proj.0.25,\"a,b\",DoRA,1.5e-7,2.5e-1"
    );
    assert_eq!(lines.len(), 3);
    let json: Vec<Record> = serde_json::from_str(&analyze::to_json(&records)).unwrap();
    assert_eq!(json, records);
    let v: Value = serde_json::from_str(&analyze::to_json(&records)).unwrap();
    assert_eq!(
        v[0].as_object().unwrap().keys().collect::<Vec<_>>(),
        ["checkpoint", "delta_d", "delta_m", "method", "module"]
    );
}

// ------------------------------------------------------------ PNG and SVG checks

struct Png {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
    /// zTXt and tEXt chunks, keyword → text.
    texts: BTreeMap<String, String>,
}

/// Decodes a PNG with the `png` crate, every checksum verified (the CRC of
/// each chunk, text chunks included, and zlib's Adler-32), through IEND: an
/// 8-bit RGB image and its text chunks.
fn parse_png(bytes: &[u8]) -> Png {
    let mut options = png::DecodeOptions::default();
    options.set_ignore_checksums(false);
    options.set_skip_ancillary_crc_failures(false);
    let decoder = png::Decoder::new_with_options(std::io::Cursor::new(bytes), options);
    let mut reader = decoder.read_info().expect("PNG header");
    let mut rgb = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut rgb).expect("PNG image data");
    reader.finish().expect("PNG ends with IEND");
    assert_eq!(
        (frame.color_type, frame.bit_depth),
        (png::ColorType::Rgb, png::BitDepth::Eight),
        "8-bit RGB"
    );
    assert!(!reader.info().interlaced, "no interlace");
    let (width, height) = (frame.width as usize, frame.height as usize);
    rgb.truncate(frame.buffer_size());
    assert_eq!(rgb.len(), width * height * 3, "raster size");
    let info = reader.info();
    let mut texts = BTreeMap::new();
    for t in &info.uncompressed_latin1_text {
        texts.insert(t.keyword.clone(), t.text.clone());
    }
    for t in &info.compressed_latin1_text {
        texts.insert(t.keyword.clone(), t.get_text().expect("zTXt inflates"));
    }
    Png {
        width,
        height,
        rgb,
        texts,
    }
}

/// An element's start tag: its name and attributes.
struct Tag {
    name: String,
    attrs: BTreeMap<String, String>,
}

/// Parses the SVG as XML (`roxmltree`: well-formed, properly nested, no
/// duplicate attributes) and returns every element, in document order.
fn parse_svg(text: &str) -> Vec<Tag> {
    assert!(
        text.starts_with(r#"<?xml version="1.0" encoding="UTF-8"?>"#),
        "XML declaration"
    );
    let doc = roxmltree::Document::parse(text).expect("SVG is well-formed XML");
    let tags: Vec<Tag> = doc
        .descendants()
        .filter(|n| n.is_element())
        .map(|n| Tag {
            name: n.tag_name().name().to_string(),
            attrs: n
                .attributes()
                .map(|a| (a.name().to_string(), a.value().to_string()))
                .collect(),
        })
        .collect();
    assert_eq!(tags[0].name, "svg");
    tags
}

/// The JSON in the SVG's `<metadata id="chart-data">`.
fn svg_data(text: &str) -> Value {
    let doc = roxmltree::Document::parse(text).unwrap();
    let metadata = doc
        .descendants()
        .find(|n| n.has_tag_name("metadata") && n.attribute("id") == Some("chart-data"))
        .expect("chart-data metadata");
    serde_json::from_str(metadata.text().unwrap()).unwrap()
}

/// Finite points per series, as the embedded data says.
fn counts(data: &Value) -> Vec<usize> {
    data["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["points"].as_array().unwrap().len())
        .collect()
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Saves `chart` and checks both files; returns the parsed PNG, SVG tags and data.
fn save_and_check(chart: &Chart, dir: &Path, stem: &str) -> (Png, Vec<Tag>, Value) {
    let path = dir.join(stem);
    chart.save(&path).unwrap();
    let png = parse_png(&read(&dir.join(format!("{stem}.png"))));
    let svg_text = String::from_utf8(read(&dir.join(format!("{stem}.svg")))).unwrap();
    let tags = parse_svg(&svg_text);
    let data: Value = serde_json::from_str(&png.texts["chart-data"]).unwrap();
    assert_eq!(data, svg_data(&svg_text), "PNG and SVG embed the same data");
    let latin1: String = chart
        .title
        .chars()
        .map(|c| if (c as u32) < 0x100 { c } else { '?' })
        .collect();
    assert_eq!(png.texts["Title"], latin1);
    // Every series group says how many points it drew; markers are one element each.
    let groups: Vec<&Tag> = tags
        .iter()
        .filter(|t| t.attrs.get("class").map(String::as_str) == Some("series"))
        .collect();
    assert_eq!(groups.len(), chart.series.len());
    for (i, (g, n)) in groups.iter().zip(counts(&data)).enumerate() {
        assert_eq!(g.attrs["data-points"], n.to_string(), "series {i}");
        let points = tags
            .iter()
            .filter(|t| {
                t.attrs.get("class").map(String::as_str) == Some("point")
                    && t.attrs["data-series"] == i.to_string()
            })
            .count();
        let markers = chart.series[i].kind == dora_wgpu::plot::SeriesKind::Markers;
        assert_eq!(
            points,
            if markers { n } else { 0 },
            "series {i} point elements"
        );
    }
    (png, tags, data)
}

#[test]
fn chart_files_are_valid_and_carry_their_data() {
    let dir = temp_dir("plot");
    let nan = f64::NAN;
    let chart = Chart::new("Δ test: markers & <lines>", "x axis", "y axis")
        .with(Series::markers(
            "markers",
            vec![
                (0.1, 1.0),
                (0.2, 3.0),
                (nan, 2.0),
                (0.4, -1.0),
                (0.3, f64::INFINITY),
                (0.5, 0.5),
            ],
        ))
        .with(
            Series::markers("squares", vec![(0.15, 2.0), (0.45, 2.5)]).with_marker(Marker::Square),
        )
        .with(Series::line(
            "line with a gap",
            vec![(0.0, 0.0), (0.1, 0.5), (0.2, nan), (0.3, 1.0), (0.4, 1.5)],
        ))
        .with(Series::line("empty", vec![]))
        .with(Series::markers("", vec![(0.25, 0.0)]).with_marker(Marker::Triangle));
    let (png, tags, data) = save_and_check(&chart, &dir, "mixed");
    assert_eq!(counts(&data), [4, 2, 4, 0, 1]);
    let pts = &data["series"][0]["points"];
    assert_eq!(
        pts[2],
        serde_json::json!([0.4, -1.0]),
        "NaN and ∞ points skipped, order kept"
    );
    // The line breaks at the NaN: two polylines.
    assert_eq!(
        tags.iter()
            .filter(|t| t.attrs.get("class").map(String::as_str) == Some("line"))
            .count(),
        2
    );
    // Unlabelled series stay out of the legend: 4 legend texts + title + axis labels.
    let (w, h) = (png.width, png.height);
    let svg = &tags[0].attrs;
    assert_eq!(
        (
            svg["width"].parse::<usize>().unwrap(),
            svg["height"].parse::<usize>().unwrap()
        ),
        (w, h)
    );
    // The PNG draws each marker where the SVG puts it, in the series colour.
    for t in tags
        .iter()
        .filter(|t| t.name == "circle" && t.attrs.contains_key("data-x"))
    {
        let (x, y) = (
            t.attrs["cx"].parse::<f64>().unwrap().round() as usize,
            t.attrs["cy"].parse::<f64>().unwrap().round() as usize,
        );
        let i = (y * w + x) * 3;
        assert_eq!(
            &png.rgb[i..i + 3],
            &[0x1f, 0x77, 0xb4],
            "marker pixel at ({x}, {y})"
        );
        // The data attributes are the point's own values.
        let dx: f64 = t.attrs["data-x"].parse().unwrap();
        assert!(data["series"][0]["points"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p[0].as_f64() == Some(dx)));
    }
    // Background white, some ink.
    assert_eq!(&png.rgb[..3], &[255, 255, 255]);
    assert!(png.rgb.iter().any(|&b| b < 128));
}

#[test]
fn degenerate_charts_still_render() {
    let dir = temp_dir("plot-degenerate");
    let cases = [
        ("nothing", Chart::new("", "", "")),
        (
            "empty-series",
            Chart::new("t", "x", "y")
                .with(Series::line("a", vec![]))
                .with(Series::markers("b", vec![])),
        ),
        (
            "one-point",
            Chart::new("t", "x", "y").with(Series::markers("p", vec![(3.0, 4.0)])),
        ),
        (
            "constant",
            Chart::new("t", "x", "y")
                .with(Series::line("c", vec![(1.0, 2.0), (2.0, 2.0), (3.0, 2.0)])),
        ),
        (
            "zeros",
            Chart::new("t", "x", "y").with(Series::markers("z", vec![(0.0, 0.0), (0.0, 0.0)])),
        ),
        (
            "all-nan",
            Chart::new("t", "x", "y")
                .with(Series::line("n", vec![(f64::NAN, 1.0), (2.0, f64::NAN)])),
        ),
        (
            "huge",
            Chart::new("t", "x", "y")
                .with(Series::markers("h", vec![(-1e300, 1e300), (1e300, -1e300)])),
        ),
        (
            "tiny-range",
            Chart::new("t", "x", "y").with(Series::markers(
                "r",
                vec![(1e9, 1e-12), (1e9 + 1e-6, 2e-12)],
            )),
        ),
        (
            "non-ascii",
            Chart::new("ΔM über ‖W‖ — 日本", "é", "ü").with(Series::markers("ß", vec![(1.0, 1.0)])),
        ),
    ];
    for (stem, chart) in &cases {
        let (png, _, data) = save_and_check(chart, &dir, stem);
        assert!(png.width > 100 && png.height > 100, "{stem}");
        for range in ["x_range", "y_range"] {
            let r = &data[range];
            assert!(
                r[0].as_f64().unwrap() < r[1].as_f64().unwrap(),
                "{stem} {range} {r}"
            );
        }
    }
}

#[test]
fn a_loss_curve_is_three_line_series() {
    // The trainer's loss plot: training loss, its moving average, validation loss.
    let train: Vec<(f64, f64)> = (0..200)
        .map(|s| {
            (
                s as f64,
                3.0 * (-(s as f64) / 60.0).exp() + 0.1 * ((s * 7) % 5) as f64 / 5.0,
            )
        })
        .collect();
    let avg: Vec<(f64, f64)> = train
        .iter()
        .enumerate()
        .map(|(i, &(s, _))| {
            let w = &train[i.saturating_sub(19)..=i];
            (s, w.iter().map(|p| p.1).sum::<f64>() / w.len() as f64)
        })
        .collect();
    let val: Vec<(f64, f64)> = (0..=4)
        .map(|k| {
            (
                k as f64 * 50.0,
                3.0 * (-(k as f64) * 50.0 / 60.0).exp() + 0.15,
            )
        })
        .collect();
    let chart = Chart::new("Training loss", "step", "loss")
        .with(Series::line("train", train))
        .with(Series::line("train (moving average)", avg))
        .with(Series::line("validation", val));
    let dir = temp_dir("plot-loss");
    let (png, _, data) = save_and_check(&chart, &dir, "loss");
    assert_eq!(counts(&data), [200, 200, 5]);
    let size = std::fs::metadata(dir.join("loss.png")).unwrap().len();
    assert!(size < 60_000, "loss.png is {size} bytes");
    assert!(png.width < 1000);
}

// ------------------------------------------------------------ the analyze command

fn run_in(dir: &Path, args: &[&str]) -> (bool, String, String) {
    common::run_cli_in(dir, args)
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// The records an adapter should give, merged and measured in f64 on the CPU.
fn adapter_reference(base: &Path, adapter_dir: &Path) -> BTreeMap<String, (f64, f64)> {
    let weights = read_safetensors(&base.join("model.safetensors")).unwrap();
    let adapter = AdapterWeights::load(adapter_dir).unwrap();
    let mut out = BTreeMap::new();
    for (module, m) in &adapter.modules {
        let w = &weights[&format!("{module}.weight")];
        let (rows, cols) = (w.shape[0], w.shape[1]);
        let w0 = to_f64(&w.to_f32());
        let (a, b) = (to_f64(&m.lora_a.to_f32()), to_f64(&m.lora_b.to_f32()));
        let r = m.lora_a.shape[0];
        let s = adapter.config.lora_alpha as f64 / adapter.config.r as f64;
        let mut wt = w0.clone();
        for i in 0..rows {
            for j in 0..cols {
                wt[i * cols + j] += s * (0..r).map(|k| b[i * r + k] * a[k * cols + j]).sum::<f64>();
            }
        }
        if let Some(mag) = &m.magnitude {
            let mag = to_f64(&mag.to_f32());
            let norms = common::row_norm_ref(&wt, rows, cols);
            for i in 0..rows {
                for j in 0..cols {
                    wt[i * cols + j] *= mag[i] / norms[i];
                }
            }
        }
        out.insert(module.clone(), decompose_ref(&w0, &wt, rows, cols));
    }
    out
}

fn read_records(path: &Path) -> Vec<Record> {
    serde_json::from_slice(&read(path)).unwrap()
}

fn check_against(records: &[Record], want: &BTreeMap<String, (f64, f64)>) {
    assert_eq!(records.len(), want.len());
    for r in records {
        let (dm, dd) = want[&r.module];
        close(&format!("{} ΔM", r.module), r.delta_m, dm, 1e-4, 1e-7);
        close(&format!("{} ΔD", r.module), r.delta_d, dd, 1e-4, 1e-7);
    }
}

#[test]
fn analyze_command_writes_json_csv_png_and_svg() {
    let (base, dora) = (
        fixture("models/tiny-llama"),
        fixture("models/tiny-llama-dora"),
    );
    let dir = temp_dir("analyze-cli");
    let (ok, out, err) = run_in(
        &dir,
        &[
            "analyze",
            "--base",
            &path_str(&base),
            "--adapter",
            &path_str(&dora),
        ],
    );
    assert!(ok, "{err}");
    // Defaults land in the current directory.
    let records = read_records(&dir.join("decomposition.json"));
    assert_eq!(records.len(), 14);
    let modules: Vec<String> = (0..2)
        .flat_map(|i| {
            PROJECTIONS
                .iter()
                .map(move |(p, n)| format!("model.layers.{i}.{p}.{n}"))
        })
        .collect();
    assert_eq!(
        records.iter().map(|r| r.module.clone()).collect::<Vec<_>>(),
        modules,
        "layer order"
    );
    assert!(records
        .iter()
        .all(|r| r.method == "DoRA" && r.checkpoint == "tiny-llama-dora"));
    check_against(&records, &adapter_reference(&base, &dora));
    // The CSV holds the same numbers.
    let csv = String::from_utf8(read(&dir.join("decomposition.csv"))).unwrap();
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(rows.len(), 14);
    for (row, r) in rows.iter().zip(&records) {
        assert_eq!(
            (row[0], row[1], row[2]),
            (r.module.as_str(), "tiny-llama-dora", "DoRA")
        );
        close("csv ΔM", row[3].parse().unwrap(), r.delta_m, 1e-12, 0.0);
        close("csv ΔD", row[4].parse().unwrap(), r.delta_d, 1e-12, 0.0);
    }
    // The plot: 14 markers and the fitted line, whose slope the legend and stdout state.
    let png = parse_png(&read(&dir.join("decomposition.png")));
    let data: Value = serde_json::from_str(&png.texts["chart-data"]).unwrap();
    assert_eq!(counts(&data), [14, 2]);
    let svg = parse_svg(&String::from_utf8(read(&dir.join("decomposition.svg"))).unwrap());
    assert_eq!(
        svg.iter()
            .filter(|t| t.attrs.get("class").map(String::as_str) == Some("point"))
            .count(),
        14
    );
    let fit = fit_line(
        &records
            .iter()
            .map(|r| (r.delta_d, r.delta_m))
            .collect::<Vec<_>>(),
    );
    let label = data["series"][1]["label"].as_str().unwrap();
    assert!(
        label.contains(&format!("r = {:.3}", fit.pearson.unwrap())),
        "{label}"
    );
    assert!(
        out.contains("model.layers.1.mlp.down_proj")
            && out.contains(&format!("{:.3e}", fit.slope.unwrap())),
        "{out}"
    );
    assert!(out.contains("wrote decomposition.json"), "{out}");
}

#[test]
fn analyze_several_checkpoints_and_a_tuned_model() {
    let (base, dora) = (
        fixture("models/tiny-llama"),
        fixture("models/tiny-llama-dora"),
    );
    let dir = temp_dir("analyze-several");
    // A LoRA checkpoint: the DoRA adapter's A and B without the magnitude.
    let mut lora = AdapterWeights::load(&dora).unwrap();
    lora.config.use_dora = false;
    for m in lora.modules.values_mut() {
        m.magnitude = None;
    }
    let lora_dir = dir.join("lora-step-100");
    lora.save(&lora_dir).unwrap();
    let (json, csv, plot) = (dir.join("out.json"), dir.join("out.csv"), dir.join("fig"));
    let (ok, out, err) = run_in(
        &dir,
        &[
            "analyze",
            "--base",
            &path_str(&base),
            "--adapter",
            &path_str(&dora),
            "--adapter",
            &path_str(&lora_dir),
            "--json",
            &path_str(&json),
            "--csv",
            &path_str(&csv),
            "--plot",
            &path_str(&plot),
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("LoRA") && !out.contains("(all)"), "{out}");
    let records = read_records(&json);
    let (d, l): (Vec<Record>, Vec<Record>) = records.into_iter().partition(|r| r.method == "DoRA");
    assert!(l
        .iter()
        .all(|r| r.method == "LoRA" && r.checkpoint == "lora-step-100"));
    check_against(&d, &adapter_reference(&base, &dora));
    check_against(&l, &adapter_reference(&base, &lora_dir));
    assert!(csv.exists() && !dir.join("decomposition.json").exists());
    let png = parse_png(&read(&dir.join("fig.png")));
    let data: Value = serde_json::from_str(&png.texts["chart-data"]).unwrap();
    // Two checkpoints (markers, one colour and shape each) and a fit per method.
    assert_eq!(counts(&data), [14, 14, 2, 2]);
    assert_ne!(data["series"][0]["color"], data["series"][1]["color"]);
    assert_eq!(
        (
            data["series"][0]["marker"].as_str(),
            data["series"][1]["marker"].as_str()
        ),
        (Some("circle"), Some("square"))
    );
    assert!(dir.join("fig.svg").exists());

    // A merged model analysed as a full fine-tune gives the adapter's numbers.
    let merged = dir.join("merged");
    let (ok, _, err) = run_in(
        &dir,
        &[
            "merge",
            "--model",
            &path_str(&base),
            "--adapter",
            &path_str(&dora),
            "--out",
            &path_str(&merged),
        ],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = run_in(
        &dir,
        &[
            "analyze",
            "--base",
            &path_str(&base),
            "--tuned",
            &path_str(&merged),
        ],
    );
    assert!(ok, "{err}");
    let ft = read_records(&dir.join("decomposition.json"));
    assert!(ft
        .iter()
        .all(|r| r.method == "FT" && r.checkpoint == "merged"));
    check_against(&ft, &adapter_reference(&base, &dora));
}

/// Asserts a failure reported as one `error:` line that mentions every needle.
fn fails_with(args: &[&str], needles: &[&str]) {
    let dir = temp_dir("analyze-fail");
    let (ok, _, err) = run_in(&dir, args);
    assert!(!ok, "{args:?} should fail");
    assert_eq!(err.lines().count(), 1, "one line expected, got {err:?}");
    assert!(err.starts_with("error: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "{err:?} should mention {n:?}");
    }
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "nothing written on failure"
    );
}

#[test]
fn analyze_rejects_adapters_for_another_model_and_bad_arguments() {
    let base = path_str(&fixture("models/tiny-llama"));
    let qwen = path_str(&fixture("models/tiny-qwen2-dora"));
    let dora = path_str(&fixture("models/tiny-llama-dora"));
    // tiny-qwen2's MLP is 128 wide, tiny-llama's 160.
    fails_with(
        &["analyze", "--base", &base, "--adapter", &qwen],
        &["tiny-qwen2-dora", "lora_", "has shape", "expected"],
    );
    fails_with(
        &[
            "analyze",
            "--base",
            &base,
            "--adapter",
            &dora,
            "--adapter",
            &qwen,
        ],
        &["tiny-qwen2-dora", "has shape"],
    );
    fails_with(&["analyze", "--base", &base], &["--adapter", "--tuned"]);
    fails_with(
        &[
            "analyze",
            "--base",
            &base,
            "--adapter",
            &dora,
            "--tuned",
            &base,
        ],
        &["--adapter", "--tuned"],
    );
    fails_with(&["analyze", "--adapter", &dora], &["--base"]);
    fails_with(
        &[
            "analyze",
            "--base",
            &base,
            "--tuned",
            &path_str(&fixture("models/tiny-qwen2")),
        ],
        &["mlp", "has shape", "[128, 64]"],
    );
    fails_with(
        &["analyze", "--base", &base, "--adapter", "/no/such/adapter"],
        &["/no/such/adapter/adapter_config.json"],
    );
}

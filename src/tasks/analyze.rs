//! `analyze`: the DoRA paper's weight-decomposition analysis (Liu et al.
//! 2024, §3.2, Fig. 2). For each adapted weight W [out, in] and checkpoint t,
//!
//!   ΔM = mean_i |‖W_t,i‖ − ‖W_0,i‖|        (magnitude change)
//!   ΔD = mean_i (1 − cos(W_t,i, W_0,i))    (direction change)
//!
//! over output rows i (the paper's column norm in its [in, out] layout), with
//! W_0 the base weight. For an adapter W_t is the merged weight (a DoRA
//! merge has rows of norm m in the direction of W_0 + s·B·A, a LoRA merge is
//! W_0 + s·B·A), so both methods — and full fine-tuning — are measured the
//! same way. The paper finds FT and DoRA with a negative ΔM-on-ΔD slope and
//! LoRA with a positive one.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::autograd::no_grad;
use crate::error::{arg_err, shape_err, Error, Result};
use crate::gpu::Gpu;
use crate::io::hf::{load_weights, MappedWeights, ModelConfig};
use crate::io::{write_atomically, AdapterConfig, AdapterWeights, HostTensor, ModuleAdapter};
use crate::nn::{projections, DoraLinear, Linear, LoraLinear};
use crate::ops;
use crate::plot::{Chart, Marker, Rgb, Series, PALETTE};
use crate::tensor::Tensor;

/// One point of the analysis: a module of one checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// e.g. `model.layers.0.self_attn.q_proj`
    pub module: String,
    /// The adapter's (or tuned model's) directory name.
    pub checkpoint: String,
    /// "DoRA", "LoRA" or "FT".
    pub method: String,
    pub delta_m: f64,
    pub delta_d: f64,
}

/// ΔM and ΔD of one weight.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decomposition {
    pub delta_m: f64,
    pub delta_d: f64,
}

/// ΔM and ΔD of `tuned` against `base`, both [out, in] (f32, bf16 or f16).
///
/// The GPU computes the row norms of both and of their difference; the host
/// combines them in f64 as 1 − cos = (‖a − b‖² − (‖a‖ − ‖b‖)²) / (2‖a‖‖b‖),
/// which keeps its precision for the tiny angles fine-tuning makes (1 − a·b/…
/// in f32 would be swamped by rounding). A zero row has no direction: it
/// counts as unchanged when both rows are zero and as 1 − 0 otherwise
/// (torch's cosine_similarity gives 0 there).
pub fn decompose(base: &Tensor, tuned: &Tensor) -> Result<Decomposition> {
    let &[rows, _] = base.shape() else {
        shape_err!(
            "weight decomposition: base weight must be 2-D [out, in], got {:?}",
            base.shape()
        );
    };
    if tuned.shape() != base.shape() {
        shape_err!(
            "weight decomposition: tuned weight is {:?} but the base weight is {:?}",
            tuned.shape(),
            base.shape()
        );
    }
    if rows == 0 {
        shape_err!("weight decomposition: the weight has no rows");
    }
    let _g = no_grad();
    let n0 = ops::row_norm(base)?;
    let nt = ops::row_norm(tuned)?;
    let diff = ops::row_norm(&ops::sub(&ops::to_f32(tuned)?, &ops::to_f32(base)?)?)?;
    let (n0, nt, diff) = (n0.to_vec_f32()?, nt.to_vec_f32()?, diff.to_vec_f32()?);
    let (mut dm, mut dd) = (0.0f64, 0.0f64);
    for i in 0..rows {
        let (a, b, e) = (nt[i] as f64, n0[i] as f64, diff[i] as f64);
        dm += (a - b).abs();
        dd += if a == 0.0 && b == 0.0 {
            0.0
        } else if a == 0.0 || b == 0.0 {
            1.0
        } else {
            ((e * e - (a - b) * (a - b)) / (2.0 * a * b)).clamp(0.0, 2.0)
        };
    }
    Ok(Decomposition {
        delta_m: dm / rows as f64,
        delta_d: dd / rows as f64,
    })
}

/// The method name an adapter config stands for.
pub fn adapter_method(config: &AdapterConfig) -> &'static str {
    if config.use_dora {
        "DoRA"
    } else {
        "LoRA"
    }
}

/// Records for one or more PEFT adapters (LoRA or DoRA) of the model in
/// `base_dir`, checkpoint by checkpoint in the given order, modules in layer
/// order. An adapter made for another model fails naming the tensor and shapes.
pub fn analyze_adapters(
    gpu: &Gpu,
    base_dir: &Path,
    adapter_dirs: &[PathBuf],
) -> Result<Vec<Record>> {
    if adapter_dirs.is_empty() {
        arg_err!("the analysis needs at least one adapter directory");
    }
    let (config, held) = MappedWeights::open_with_config(base_dir)?;
    crate::nn::check_weights_fit(&config, base_dir, &held.shapes())?;
    let mut weights = load_weights(base_dir)?;
    let modules = projection_shapes(&config, &weights, base_dir)?;
    let shapes: BTreeMap<String, (usize, usize)> = modules.iter().cloned().collect();
    // Read and check every adapter before the GPU work starts.
    let mut adapters = Vec::with_capacity(adapter_dirs.len());
    for dir in adapter_dirs {
        let adapter = AdapterWeights::load(dir)?;
        adapter.check_fits(&shapes).map_err(|e| match e {
            // Name the adapter too: several may be analysed at once.
            Error::Shape(message) => Error::Format {
                path: dir.display().to_string(),
                message,
            },
            e => e,
        })?;
        adapters.push(adapter);
    }
    let labels = checkpoint_labels(adapter_dirs);
    let _g = no_grad();
    let mut per_checkpoint = vec![Vec::new(); adapters.len()];
    for (module, _) in &modules {
        if !adapters.iter().any(|a| a.modules.contains_key(module)) {
            continue;
        }
        // One base weight on the GPU at a time, shared by every checkpoint.
        let name = format!("{module}.weight");
        let w0 = take(&mut weights, &name, base_dir)?.to_gpu(gpu)?;
        for (k, adapter) in adapters.iter().enumerate() {
            let Some(m) = adapter.modules.get(module) else {
                continue;
            };
            let merged = merged_f32(&w0, m, &adapter.config, module)?;
            let d = decompose(&w0, &merged)?;
            per_checkpoint[k].push(Record {
                module: module.clone(),
                checkpoint: labels[k].clone(),
                method: adapter_method(&adapter.config).into(),
                delta_m: d.delta_m,
                delta_d: d.delta_d,
            });
        }
    }
    Ok(per_checkpoint.concat())
}

/// Records for a fully fine-tuned (or merged) model in `tuned_dir` against
/// its base in `base_dir`: every projection of every layer, method "FT".
pub fn analyze_tuned(gpu: &Gpu, base_dir: &Path, tuned_dir: &Path) -> Result<Vec<Record>> {
    let (config, held) = MappedWeights::open_with_config(base_dir)?;
    crate::nn::check_weights_fit(&config, base_dir, &held.shapes())?;
    let mut base = load_weights(base_dir)?;
    let modules = projection_shapes(&config, &base, base_dir)?;
    let mut tuned = load_weights(tuned_dir)?;
    let checkpoint = checkpoint_labels(&[tuned_dir.to_path_buf()]).remove(0);
    let _g = no_grad();
    let mut records = Vec::with_capacity(modules.len());
    for (module, (out_f, in_f)) in modules {
        let name = format!("{module}.weight");
        let t = take(&mut tuned, &name, tuned_dir)?;
        let fail = |message: String| {
            Err(Error::Format {
                path: tuned_dir.display().to_string(),
                message,
            })
        };
        if t.shape != [out_f, in_f] {
            return fail(format!(
                "tensor {name} has shape {:?} but the base model's is [{out_f}, {in_f}] \
                 (is this a fine-tune of {}?)",
                t.shape,
                base_dir.display()
            ));
        }
        if !t.dtype.is_float() {
            return fail(format!(
                "tensor {name} has dtype {}; expected f32, bf16 or f16",
                t.dtype.name()
            ));
        }
        let w0 = take(&mut base, &name, base_dir)?.to_gpu(gpu)?;
        let d = decompose(&w0, &t.to_gpu(gpu)?)?;
        records.push(Record {
            module,
            checkpoint: checkpoint.clone(),
            method: "FT".into(),
            delta_m: d.delta_m,
            delta_d: d.delta_d,
        });
    }
    Ok(records)
}

fn take(weights: &mut BTreeMap<String, HostTensor>, name: &str, dir: &Path) -> Result<HostTensor> {
    weights.remove(name).ok_or_else(|| Error::Format {
        path: dir.display().to_string(),
        message: format!("tensor {name} is missing from the model weights"),
    })
}

/// `[out, in]` of every adaptable projection, in layer order.
fn projection_shapes(
    config: &ModelConfig,
    weights: &BTreeMap<String, HostTensor>,
    dir: &Path,
) -> Result<Vec<(String, (usize, usize))>> {
    let names = projections(config);
    let mut out = Vec::with_capacity(config.num_hidden_layers * names.len());
    for i in 0..config.num_hidden_layers {
        for (parent, name) in names {
            let module = crate::nn::module_path(config, i, parent, name);
            let err = |message: String| Error::Format {
                path: dir.display().to_string(),
                message,
            };
            let t = weights.get(&format!("{module}.weight")).ok_or_else(|| {
                err(format!(
                    "tensor {module}.weight is missing from the model weights"
                ))
            })?;
            match t.shape[..] {
                [o, n] if t.dtype.is_float() => out.push((module, (o, n))),
                _ => {
                    return Err(err(format!(
                        "tensor {module}.weight is {} {:?}; expected a 2-D float weight [out, in]",
                        t.dtype.name(),
                        t.shape
                    )))
                }
            }
        }
    }
    Ok(out)
}

/// The merged weight in f32: the layers' own merges without their cast back
/// to the base dtype (a bf16 rounding would show up as a direction change).
fn merged_f32(
    w0: &Tensor,
    m: &ModuleAdapter,
    config: &AdapterConfig,
    module: &str,
) -> Result<Tensor> {
    let base = Linear::new(w0.clone(), None)?;
    let scale = config.scaling(module);
    if config.use_dora {
        Ok(DoraLinear::from_adapter(base, m, scale, 0.0)?
            .merge_f32()?
            .0)
    } else {
        LoraLinear::from_adapter(base, m, scale, 0.0)?.merged_weight_f32()
    }
}

/// A label per directory: its name, or the path as given where two names clash.
fn checkpoint_labels(dirs: &[PathBuf]) -> Vec<String> {
    let name = |d: &PathBuf| {
        // "." or "run/.." have no plain name: ask the file system.
        let named = d.file_name().map(PathBuf::from).or_else(|| {
            d.canonicalize()
                .ok()
                .and_then(|c| c.file_name().map(PathBuf::from))
        });
        named.map_or_else(|| d.display().to_string(), |n| n.display().to_string())
    };
    let names: Vec<String> = dirs.iter().map(name).collect();
    names
        .iter()
        .zip(dirs)
        .map(|(n, d)| {
            if names.iter().filter(|m| *m == n).count() > 1 {
                d.display().to_string()
            } else {
                n.clone()
            }
        })
        .collect()
}

/// Least-squares line y = intercept + slope·x and Pearson's r.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LineFit {
    pub points: usize,
    /// None with fewer than two distinct x values.
    pub slope: Option<f64>,
    pub intercept: Option<f64>,
    /// None when x or y does not vary.
    pub pearson: Option<f64>,
}

/// Fits the finite points of `points` (x, y).
pub fn fit_line(points: &[(f64, f64)]) -> LineFit {
    let pts: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    let n = pts.len() as f64;
    let none = LineFit {
        points: pts.len(),
        slope: None,
        intercept: None,
        pearson: None,
    };
    if pts.len() < 2 {
        return none;
    }
    // Centred sums: the ΔD values are small and close together.
    let (mx, my) = (
        pts.iter().map(|p| p.0).sum::<f64>() / n,
        pts.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let (mut sxx, mut syy, mut sxy) = (0.0, 0.0, 0.0);
    for &(x, y) in &pts {
        let (dx, dy) = (x - mx, y - my);
        sxx += dx * dx;
        syy += dy * dy;
        sxy += dx * dy;
    }
    if sxx == 0.0 {
        return none;
    }
    let slope = sxy / sxx;
    LineFit {
        slope: Some(slope),
        intercept: Some(my - slope * mx),
        pearson: (syy > 0.0).then(|| (sxy / (sxx * syy).sqrt()).clamp(-1.0, 1.0)),
        ..none
    }
}

/// The fit of ΔM on ΔD for one method: one checkpoint, or all of the
/// method's checkpoints pooled (`checkpoint: None`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Fit {
    pub method: String,
    pub checkpoint: Option<String>,
    #[serde(flatten)]
    pub line: LineFit,
}

/// Per method (in order of appearance): one fit per checkpoint, then the
/// pooled fit when the method has more than one checkpoint.
pub fn fits(records: &[Record]) -> Vec<Fit> {
    let mut out = Vec::new();
    for method in first_seen(records.iter().map(|r| r.method.as_str())) {
        let of_method: Vec<&Record> = records.iter().filter(|r| r.method == method).collect();
        let checkpoints = first_seen(of_method.iter().map(|r| r.checkpoint.as_str()));
        let points = |ckpt: Option<&str>| -> Vec<(f64, f64)> {
            of_method
                .iter()
                .filter(|r| ckpt.is_none_or(|c| r.checkpoint == c))
                .map(|r| (r.delta_d, r.delta_m))
                .collect()
        };
        for c in &checkpoints {
            out.push(Fit {
                method: method.into(),
                checkpoint: Some(c.to_string()),
                line: fit_line(&points(Some(c))),
            });
        }
        if checkpoints.len() > 1 {
            out.push(Fit {
                method: method.into(),
                checkpoint: None,
                line: fit_line(&points(None)),
            });
        }
    }
    out
}

fn first_seen<'a>(items: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen: Vec<&str> = Vec::new();
    for s in items {
        if !seen.contains(&s) {
            seen.push(s);
        }
    }
    seen
}

/// Colours of the fitted lines, one per method (dark, to stand apart from
/// the checkpoints' palette colours).
const FIT_COLORS: [Rgb; 3] = [[0x22, 0x22, 0x22], [0x80, 0x80, 0x80], [0x8b, 0x00, 0x00]];

/// The paper-style scatter: ΔD on x, ΔM on y, one marker per module, one
/// colour per checkpoint, one marker shape per method, and per method the
/// least-squares line with its slope and Pearson r in the legend.
pub fn decomposition_chart(records: &[Record]) -> Chart {
    let mut chart = Chart::new(
        "Weight decomposition: magnitude vs direction change",
        "ΔD = mean over rows of 1 - cos(W_t, W_0)",
        "ΔM = mean over rows of |m_t - m_0|  (m: row norm)",
    );
    let methods = first_seen(records.iter().map(|r| r.method.as_str()));
    let mut groups: Vec<(&str, &str)> = Vec::new();
    for r in records {
        if !groups.contains(&(r.checkpoint.as_str(), r.method.as_str())) {
            groups.push((&r.checkpoint, &r.method));
        }
    }
    for (k, (ckpt, method)) in groups.iter().enumerate() {
        let points = records
            .iter()
            .filter(|r| r.checkpoint == *ckpt && r.method == *method)
            .map(|r| (r.delta_d, r.delta_m))
            .collect();
        let shape = methods.iter().position(|m| m == method).unwrap_or(0);
        chart.series.push(
            Series::markers(format!("{ckpt} ({method})"), points)
                .with_marker(Marker::ALL[shape % Marker::ALL.len()])
                .with_color(PALETTE[k % PALETTE.len()]),
        );
    }
    for (j, method) in methods.iter().enumerate() {
        let points: Vec<(f64, f64)> = records
            .iter()
            .filter(|r| r.method == *method)
            .map(|r| (r.delta_d, r.delta_m))
            .collect();
        let fit = fit_line(&points);
        let (label, line) = match (fit.slope, fit.intercept) {
            (Some(b), Some(a)) => {
                let (lo, hi) = points
                    .iter()
                    .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
                        (lo.min(p.0), hi.max(p.0))
                    });
                let r = fit
                    .pearson
                    .map_or("undefined".into(), |r| format!("{r:.3}"));
                (
                    format!("{method} fit: slope {}, r = {r}", short(b)),
                    vec![(lo, a + b * lo), (hi, a + b * hi)],
                )
            }
            _ => (
                format!("{method}: no fit ({} points)", fit.points),
                Vec::new(),
            ),
        };
        chart
            .series
            .push(Series::line(label, line).with_color(FIT_COLORS[j % FIT_COLORS.len()]));
    }
    chart
}

/// Three significant digits, in plain or scientific notation by size.
fn short(v: f64) -> String {
    if v == 0.0 || (1e-2..1e4).contains(&v.abs()) {
        format!("{v:.3}")
    } else {
        format!("{v:.2e}")
    }
}

/// The records as CSV: `module,checkpoint,method,delta_m,delta_d`.
pub fn to_csv(records: &[Record]) -> String {
    let field = |s: &str| {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    };
    let mut out = String::from("module,checkpoint,method,delta_m,delta_d\n");
    for r in records {
        let _ = writeln!(
            out,
            "{},{},{},{:e},{:e}",
            field(&r.module),
            field(&r.checkpoint),
            field(&r.method),
            r.delta_m,
            r.delta_d
        );
    }
    out
}

/// The records as a JSON array of objects with the fields of [`Record`].
pub fn to_json(records: &[Record]) -> String {
    // Strings and numbers only: serializing cannot fail (a NaN becomes null).
    serde_json::to_string_pretty(records).unwrap_or_default() + "\n"
}

/// Writes [`to_csv`] to `path` atomically.
pub fn write_csv(path: &Path, records: &[Record]) -> Result<()> {
    write_atomically(path, to_csv(records).as_bytes())
}

/// Writes [`to_json`] to `path` atomically.
pub fn write_json(path: &Path, records: &[Record]) -> Result<()> {
    write_atomically(path, to_json(records).as_bytes())
}

/// A plain-text table of the records and the fits, for the terminal.
pub fn format_report(records: &[Record], fits: &[Fit]) -> String {
    let w_mod = records
        .iter()
        .map(|r| r.module.len())
        .chain([6])
        .max()
        .unwrap_or(6);
    let w_ck = records
        .iter()
        .map(|r| r.checkpoint.chars().count())
        .chain(
            fits.iter()
                .filter_map(|f| f.checkpoint.as_ref().map(|c| c.chars().count())),
        )
        .chain([10])
        .max()
        .unwrap_or(10);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<w_mod$}  {:<w_ck$}  {:<6}  {:>11}  {:>11}",
        "module", "checkpoint", "method", "ΔM", "ΔD"
    );
    for r in records {
        let _ = writeln!(
            s,
            "{:<w_mod$}  {:<w_ck$}  {:<6}  {:>11.4e}  {:>11.4e}",
            r.module, r.checkpoint, r.method, r.delta_m, r.delta_d
        );
    }
    let _ = writeln!(
        s,
        "\nΔM on ΔD, least squares:\n{:<6}  {:<w_ck$}  {:>6}  {:>11}  {:>9}",
        "method", "checkpoint", "points", "slope", "pearson r"
    );
    let opt = |v: Option<f64>, prec: usize| v.map_or("-".to_string(), |v| format!("{v:.prec$e}"));
    for f in fits {
        let ck = f.checkpoint.as_deref().unwrap_or("(all)");
        let r = f
            .line
            .pearson
            .map_or("-".to_string(), |r| format!("{r:.3}"));
        let _ = writeln!(
            s,
            "{:<6}  {:<w_ck$}  {:>6}  {:>11}  {:>9}",
            f.method,
            ck,
            f.line.points,
            opt(f.line.slope, 3),
            r
        );
    }
    s
}

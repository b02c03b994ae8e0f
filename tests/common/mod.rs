//! Shared test helpers: one GPU context per test binary (a missing adapter is
//! a failure, never a skip), seeded random data, and plain f64 CPU references.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use dora_wgpu::nn::Rng;
use dora_wgpu::{ops, Gpu, GpuOptions, MatmulKernels, Result, Tensor};

/// The context every test in a binary shares. Panics with wgpu's adapter
/// error when there is no GPU: the suite must fail, not skip.
pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| {
        let gpu = Gpu::new().unwrap_or_else(|e| panic!("GPU tests need an adapter: {e}"));
        eprintln!("testing on {} ({:?})", gpu.adapter_name(), gpu.backend());
        gpu
    })
}

/// One context per matmul kernel family on the default adapter, so both
/// families are tested whichever one the adapter would pick.
pub fn gpu_per_matmul_family() -> [&'static Gpu; 2] {
    static TILED: OnceLock<Gpu> = OnceLock::new();
    static BROADCAST: OnceLock<Gpu> = OnceLock::new();
    let open = |kernels| {
        let options = GpuOptions {
            matmul_kernels: kernels,
            ..Default::default()
        };
        Gpu::with_options(&options).unwrap_or_else(|e| panic!("GPU tests need an adapter: {e}"))
    };
    [
        TILED.get_or_init(|| open(MatmulKernels::Tiled)),
        BROADCAST.get_or_init(|| open(MatmulKernels::Broadcast)),
    ]
}

pub fn random(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.uniform_in(-1.0, 1.0)).collect()
}

pub fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Asserts |got - want| <= atol + rtol * |want| elementwise, naming the first miss.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], rtol: f64, atol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0.0f64, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        assert!(
            err <= atol + rtol * w.abs() && g.is_finite(),
            "{what}: element {i}: got {g}, want {w} (|err| {err:e})"
        );
        if err > worst.0 {
            worst = (err, i);
        }
    }
}

/// Largest |got - want| / max(|want|, floor) over all elements.
pub fn max_rel_err(got: &[f32], want: &[f64], floor: f64) -> f64 {
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).abs() / w.abs().max(floor))
        .fold(0.0, f64::max)
}

/// C = op(A)·op(B) in f64 for row-major A and B stored as given.
pub fn matmul_ref(
    a: &[f64],
    b: &[f64],
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0;
            for l in 0..k {
                let av = if ta { a[l * m + i] } else { a[i * k + l] };
                let bv = if tb { b[j * k + l] } else { b[l * n + j] };
                s += av * bv;
            }
            c[i * n + j] = s;
        }
    }
    c
}

pub fn row_norm_ref(w: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    (0..rows)
        .map(|i| {
            w[i * cols..(i + 1) * cols]
                .iter()
                .map(|v| v * v)
                .sum::<f64>()
                .sqrt()
        })
        .collect()
}

pub fn softmax_ref(x: &[f64], cols: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(cols) {
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = row.iter().map(|v| (v - m).exp()).sum();
        out.extend(row.iter().map(|v| (v - m).exp() / s));
    }
    out
}

/// Mean cross-entropy over rows whose target is not ignored.
pub fn cross_entropy_ref(logits: &[f64], targets: &[i32], classes: usize, ignore: i32) -> f64 {
    let (mut total, mut count) = (0.0, 0usize);
    for (row, &t) in logits.chunks(classes).zip(targets) {
        if t == ignore || t < 0 {
            continue;
        }
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        total += lse - row[t as usize];
        count += 1;
    }
    if count == 0 {
        0.0
    } else {
        total / count as f64
    }
}

/// Central finite differences of a scalar f64 function at `x`.
pub fn numeric_grad(f: &dyn Fn(&[f64]) -> f64, x: &[f64], eps: f64) -> Vec<f64> {
    let mut x = x.to_vec();
    (0..x.len())
        .map(|i| {
            let orig = x[i];
            x[i] = orig + eps;
            let up = f(&x);
            x[i] = orig - eps;
            let down = f(&x);
            x[i] = orig;
            (up - down) / (2.0 * eps)
        })
        .collect()
}

/// Rounds through bf16 / f16 as the GPU stores them.
pub fn round_bf16(v: &[f32]) -> Vec<f32> {
    v.iter()
        .map(|&x| half::bf16::from_f32(x).to_f32())
        .collect()
}

pub fn round_f16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
}

pub type Inputs = Vec<(Vec<f32>, Vec<usize>)>;

/// Checks forward values and the gradient of every input against f64.
pub fn check_grads(
    name: &str,
    inputs: Inputs,
    gpu_fn: impl Fn(&[Tensor]) -> Result<Tensor>,
    cpu_fn: impl Fn(&[Vec<f64>]) -> Vec<f64>,
) {
    let gpu = gpu();
    let mut rng = Rng::new(name.len() as u64 * 7919);
    let params: Vec<Tensor> = inputs
        .iter()
        .map(|(d, s)| Tensor::param(gpu, d, s).unwrap())
        .collect();
    let out = gpu_fn(&params).unwrap();
    let r = random(&mut rng, out.numel());
    let loss =
        ops::sum_all(&ops::mul(&out, &Tensor::from_f32(gpu, &r, out.shape()).unwrap()).unwrap())
            .unwrap();
    loss.backward().unwrap();

    let x64: Vec<Vec<f64>> = inputs.iter().map(|(d, _)| to_f64(d)).collect();
    let want_out = cpu_fn(&x64);
    assert_close(
        &format!("{name} forward"),
        &out.to_vec_f32().unwrap(),
        &want_out,
        1e-4,
        1e-5,
    );
    for (i, p) in params.iter().enumerate() {
        let f = |xi: &[f64]| {
            let mut xs = x64.clone();
            xs[i] = xi.to_vec();
            cpu_fn(&xs)
                .iter()
                .zip(&r)
                .map(|(o, r)| o * *r as f64)
                .sum::<f64>()
        };
        let want = numeric_grad(&f, &x64[i], 1e-6);
        let got = p
            .grad()
            .unwrap_or_else(|| panic!("{name}: input {i} got no gradient"))
            .to_vec_f32()
            .unwrap();
        assert_close(&format!("{name} d/dinput{i}"), &got, &want, 2e-3, 2e-4);
    }
}

pub fn rand_input(rng: &mut Rng, shape: &[usize]) -> (Vec<f32>, Vec<usize>) {
    (random(rng, shape.iter().product()), shape.to_vec())
}

pub fn positive_input(rng: &mut Rng, shape: &[usize]) -> (Vec<f32>, Vec<usize>) {
    let n = shape.iter().product();
    (
        (0..n).map(|_| rng.uniform_in(0.5, 2.0)).collect(),
        shape.to_vec(),
    )
}

/// max |got − want| / max |want|: the error relative to the tensor's scale.
pub fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want
        .iter()
        .fold(0.0f64, |m, &w| m.max((w as f64).abs()))
        .max(1e-30);
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w as f64).abs())
        .fold(0.0, f64::max)
        / scale
}

/// A file or folder under tests/fixtures.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A fresh empty folder under the system temp dir, unique to this test process.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dora-wgpu-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the `dora-wgpu` binary; returns (success, stdout, stderr).
pub fn run_cli<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (bool, String, String) {
    run_cli_in(Path::new("."), args)
}

/// [`run_cli`] from the working directory `dir`.
pub fn run_cli_in<S: AsRef<std::ffi::OsStr>>(dir: &Path, args: &[S]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dora-wgpu"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Asserts the binary fails with one `error:` line that mentions every needle.
pub fn cli_fails_with<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S], needles: &[&str]) {
    let (ok, _, err) = run_cli(args);
    assert!(!ok, "{args:?} should fail");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected, got {err:?}");
    assert!(lines[0].starts_with("error: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "{err:?} should mention {n:?}");
    }
}

/// Asserts `r` is an error of one line that mentions every needle.
pub fn one_line_error<T>(r: dora_wgpu::Result<T>, needles: &[&str]) {
    let Err(e) = r else {
        panic!("expected an error mentioning {needles:?}, got Ok")
    };
    let msg = e.to_string();
    assert_eq!(msg.lines().count(), 1, "{msg}");
    for n in needles {
        assert!(msg.contains(n), "{msg:?} should mention {n:?}");
    }
}

/// Copies the files of `src` (recursively) into a new directory `dst`.
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), to).unwrap();
        }
    }
}

/// Every file under `dir` with its bytes, to prove a command left them alone.
pub fn snapshot(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// A data directory `root/data` whose `train.jsonl` holds `lines`.
pub fn data_dir_with(root: &Path, lines: &str) -> PathBuf {
    let data = root.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("train.jsonl"), lines).unwrap();
    data
}

/// PyTorch's `gelu(approximate="tanh")` in f64.
#[allow(dead_code)]
pub fn gelu_tanh_ref(x: f64) -> f64 {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
}

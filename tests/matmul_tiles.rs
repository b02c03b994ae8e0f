//! The workgroup-tiled matmul family (src/kernels/matmul/matmul_tiled.wgsl), each tile
//! forced through `GpuOptions::matmul_tile`: every tile x transpose x B type
//! (f32, bf16, f16, Q8_0 blocks) x epilogue against f64, on sizes that are
//! not multiples of any tile (partial tiles), with K, M or N not multiples of
//! 4 (the scalar load path) and multiples of 4 (the vec4 path), batched; all
//! tiles bit-identical. And the tile tuning's cache file.

mod common;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use common::*;
use dora_wgpu::nn::Rng;
use dora_wgpu::ops::{self, Transpose};
use dora_wgpu::{
    DType, Gpu, GpuOptions, MatmulAutotune, MatmulKernels, MatmulTile, MatmulTileCache, Quant,
    Tensor,
};

/// One context per tile, the tile forced and tuning off.
fn tile_gpus() -> &'static [(MatmulTile, Gpu)] {
    static GPUS: OnceLock<Vec<(MatmulTile, Gpu)>> = OnceLock::new();
    GPUS.get_or_init(|| {
        MatmulTile::ALL
            .into_iter()
            .map(|tile| {
                let options = GpuOptions {
                    matmul_kernels: MatmulKernels::Tiled,
                    matmul_tile: Some(tile),
                    matmul_autotune: MatmulAutotune::Off,
                    ..Default::default()
                };
                let gpu = Gpu::with_options(&options)
                    .unwrap_or_else(|e| panic!("GPU tests need an adapter: {e}"));
                assert_eq!(gpu.matmul_kernels(), MatmulKernels::Tiled);
                assert_eq!(gpu.matmul_tile(), Some(tile));
                assert!(!gpu.tunes_matmul_tiles());
                (tile, gpu)
            })
            .collect()
    })
}

/// B as a weight of `dtype`: its stored bytes' values as f32 (what the
/// kernel must multiply by) and the tensor on `gpu`.
enum Weight {
    F32,
    Half(DType),
    Q8_0,
}

impl Weight {
    fn name(&self) -> String {
        match self {
            Weight::F32 => "f32".into(),
            Weight::Half(d) => d.name().into(),
            Weight::Q8_0 => "q8_0".into(),
        }
    }

    /// Values of a [rows, cols] B (a batch of them for f32) and the bytes the GPU gets.
    fn values(&self, rng: &mut Rng, shape: &[usize]) -> (Vec<f32>, Vec<u8>) {
        let n: usize = shape.iter().product();
        match self {
            Weight::F32 => {
                let v = random(rng, n);
                let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                (v, bytes)
            }
            Weight::Half(d) => {
                let v = random(rng, n);
                let r = if *d == DType::BF16 {
                    round_bf16(&v)
                } else {
                    round_f16(&v)
                };
                (r, Vec::new())
            }
            Weight::Q8_0 => {
                // Blocks of a 16-bit scale and 32 signed bytes along each row.
                let mut values = Vec::with_capacity(n);
                let mut bytes = Vec::new();
                for _ in 0..n / 32 {
                    let d = half::f16::from_f32(rng.uniform_in(0.002, 0.01));
                    bytes.extend(d.to_le_bytes());
                    for _ in 0..32 {
                        let q = (rng.uniform_in(-127.0, 127.0)).round() as i8;
                        bytes.push(q as u8);
                        values.push(d.to_f32() * q as f32);
                    }
                }
                (values, bytes)
            }
        }
    }

    fn tensor(&self, gpu: &Gpu, values: &[f32], bytes: &[u8], shape: &[usize]) -> Tensor {
        match self {
            Weight::F32 => Tensor::from_f32(gpu, values, shape).unwrap(),
            Weight::Half(d) => Tensor::from_f32_as(gpu, values, shape, *d).unwrap(),
            Weight::Q8_0 => {
                Tensor::from_le_bytes(gpu, bytes, shape, DType::Quant(Quant::Q8_0)).unwrap()
            }
        }
    }
}

/// Nothing a multiple of 4 (scalar loads), or everything (vec4 loads) with
/// partial 128-wide tiles, as (batch, m, k, n).
type Sizes = (usize, usize, usize, usize);
const SCALAR: Sizes = (1, 45, 37, 70);
const VEC4: Sizes = (1, 132, 64, 136);

/// The cases: every tile runs each of them. f32 B on every layout, scalar
/// without an epilogue and vec4 with one, plus rank-sized M and N and a
/// batch; 16-bit and Q8_0 B on the weight layouts (x·Wᵀ, dy·W), each on both
/// load paths with the epilogue on one. Kept to what covers each axis: every
/// case is a pipeline to compile per tile, which a software device pays seconds for.
fn cases() -> Vec<(Weight, Transpose, Sizes, bool)> {
    use Transpose::*;
    let mut v = Vec::new();
    for t in [NN, NT, TN, TT] {
        v.push((Weight::F32, t, SCALAR, false));
        v.push((Weight::F32, t, VEC4, true));
    }
    v.extend([
        (Weight::F32, TN, (1, 20, 36, 260), true), // a rank-sized M: dA = (h·B)ᵀ·x
        (Weight::F32, NT, (1, 200, 37, 12), false), // a rank-sized N: x·Aᵀ
        (Weight::F32, NN, (3, 33, 40, 20), true),  // batched, vec4
        (Weight::F32, TN, (3, 33, 40, 20), false), // batched, scalar
        (Weight::Half(DType::BF16), NT, VEC4, true),
        (Weight::Half(DType::BF16), NN, SCALAR, false),
        (Weight::Half(DType::F16), NT, SCALAR, false),
        (Weight::Half(DType::F16), NN, VEC4, true),
        // Blocks run along B's rows: K for x·Wᵀ, N for dy·W.
        (Weight::Q8_0, NT, (1, 45, 64, 70), true),
        (Weight::Q8_0, NN, (1, 45, 37, 64), false),
    ]);
    v
}

#[test]
fn every_tile_matches_f64_and_every_other_tile_bit_for_bit() {
    let mut rng = Rng::new(19);
    let cases = cases();
    for (w, t, (batch, m, k, n), epilogue) in &cases {
        let (batch, m, k, n, epilogue) = (*batch, *m, *k, *n, *epilogue);
        let (t, ta, tb) = match t {
            Transpose::NN => (*t, false, false),
            Transpose::NT => (*t, false, true),
            Transpose::TN => (*t, true, false),
            Transpose::TT => (*t, true, true),
        };
        let a = random(&mut rng, batch * m * k);
        let a_shape = if ta { vec![k, m] } else { vec![m, k] };
        let b_2d = if tb { vec![n, k] } else { vec![k, n] };
        let (a_shape, b_shape) = if batch > 1 {
            (
                [vec![batch], a_shape].concat(),
                [vec![batch], b_2d].concat(),
            )
        } else {
            (a_shape, b_2d)
        };
        let (b, b_bytes) = w.values(&mut rng, &b_shape);
        let c0 = random(&mut rng, batch * m * n);
        let scale = random(&mut rng, n);
        let bias = random(&mut rng, n);
        let (alpha, beta) = if epilogue { (0.5, 0.75) } else { (1.0, 0.0) };
        let mut want = Vec::new();
        for i in 0..batch {
            let prod = matmul_ref(
                &to_f64(&a[i * m * k..(i + 1) * m * k]),
                &to_f64(&b[i * k * n..(i + 1) * k * n]),
                m,
                k,
                n,
                ta,
                tb,
            );
            want.extend(prod.iter().enumerate().map(|(j, &p)| {
                if epilogue {
                    let col = j % n;
                    let c = c0[i * m * n + j] as f64;
                    scale[col] as f64 * (alpha * p + beta * c) + bias[col] as f64
                } else {
                    p
                }
            }));
        }
        let what = format!("{} {t:?} {batch}x{m}x{k}x{n} epilogue={epilogue}", w.name());
        let mut first: Option<(MatmulTile, Vec<u32>)> = None;
        for (tile, gpu) in tile_gpus() {
            let ga = Tensor::from_f32(gpu, &a, &a_shape).unwrap();
            let gb = w.tensor(gpu, &b, &b_bytes, &b_shape);
            let out_shape = if batch > 1 {
                vec![batch, m, n]
            } else {
                vec![m, n]
            };
            let c = if epilogue {
                let out = Tensor::from_f32(gpu, &c0, &out_shape).unwrap();
                let s = Tensor::from_f32(gpu, &scale, &[n]).unwrap();
                let bi = Tensor::from_f32(gpu, &bias, &[n]).unwrap();
                ops::matmul_fused(
                    &ga,
                    &gb,
                    t,
                    alpha as f32,
                    beta as f32,
                    Some(&out),
                    Some(&s),
                    Some(&bi),
                )
                .unwrap()
            } else {
                ops::matmul_fused(&ga, &gb, t, 1.0, 0.0, None, None, None).unwrap()
            };
            assert_eq!(c.shape(), out_shape.as_slice());
            let got = c.to_vec_f32().unwrap();
            assert_close(&format!("{} {what}", tile.name()), &got, &want, 1e-5, 1e-5);
            let bits: Vec<u32> = got.iter().map(|x| x.to_bits()).collect();
            match &first {
                None => first = Some((*tile, bits)),
                Some((t0, b0)) => assert!(
                    *b0 == bits,
                    "{what}: tiles {} and {} differ in some bit",
                    t0.name(),
                    tile.name()
                ),
            }
        }
    }
    assert_eq!(cases.len(), 18);
}

#[test]
fn a_bias_without_a_column_scale_is_refused_in_one_line() {
    let gpu = &tile_gpus()[0].1;
    let a = Tensor::from_f32(gpu, &[1.0; 6], &[2, 3]).unwrap();
    let b = Tensor::from_f32(gpu, &[1.0; 6], &[3, 2]).unwrap();
    let bias = Tensor::from_f32(gpu, &[1.0; 2], &[2]).unwrap();
    one_line_error(
        ops::matmul_fused(&a, &b, Transpose::NN, 1.0, 0.0, None, None, Some(&bias)),
        &["bias needs a column scale"],
    );
}

#[test]
fn tiles_follow_the_device_limits_and_the_shape() {
    let webgpu = wgpu::Limits::default();
    assert_eq!(webgpu.max_compute_workgroup_storage_size, 16 << 10);
    assert_eq!(MatmulTile::candidates(&webgpu), MatmulTile::ALL.to_vec());
    // wgpu's downlevel limits (16352 bytes, for GL) leave out 128 x 128's 16 KiB.
    assert_eq!(
        MatmulTile::candidates(&wgpu::Limits::downlevel_defaults()),
        vec![MatmulTile::M64N64, MatmulTile::M32N128, MatmulTile::M128N32]
    );
    let small = wgpu::Limits {
        max_compute_workgroup_storage_size: 8 << 10,
        ..webgpu.clone()
    };
    assert_eq!(MatmulTile::candidates(&small), vec![MatmulTile::M64N64]);
    let few = wgpu::Limits {
        max_compute_invocations_per_workgroup: 128,
        ..webgpu.clone()
    };
    assert_eq!(
        MatmulTile::candidates(&few),
        vec![MatmulTile::M32N128, MatmulTile::M128N32]
    );
    for t in MatmulTile::ALL {
        assert_eq!(MatmulTile::parse(&t.name()), Some(t));
        let (x, y) = t.invocations();
        assert!(x * y <= 256 && t.workgroup_bytes() <= 16 << 10, "{t:?}");
    }
    assert_eq!(MatmulTile::parse("96x96"), None);
    let all = MatmulTile::ALL;
    assert_eq!(
        MatmulTile::default_for(4096, 4096, 1, &all),
        MatmulTile::M128N128
    );
    assert_eq!(
        MatmulTile::default_for(512, 512, 1, &all),
        MatmulTile::M64N64
    );
    assert_eq!(
        MatmulTile::default_for(16, 4096, 1, &all),
        MatmulTile::M32N128
    );
    assert_eq!(
        MatmulTile::default_for(4096, 16, 1, &all),
        MatmulTile::M128N32
    );
    assert_eq!(
        MatmulTile::default_for(16, 4096, 1, &[MatmulTile::M64N64]),
        MatmulTile::M64N64
    );
}

#[test]
fn cpu_adapters_keep_the_broadcast_family_and_never_tune() {
    let gpu = Gpu::with_options(&GpuOptions {
        matmul_autotune: MatmulAutotune::Auto,
        ..Default::default()
    })
    .unwrap();
    if gpu.adapter_info().device_type == wgpu::DeviceType::Cpu {
        if std::env::var("DORA_MATMUL_KERNELS").is_err() {
            assert_eq!(gpu.matmul_kernels(), MatmulKernels::Broadcast);
        }
        assert!(!gpu.tunes_matmul_tiles());
        let tiled = Gpu::with_options(&GpuOptions {
            matmul_kernels: MatmulKernels::Tiled,
            matmul_autotune: MatmulAutotune::Auto,
            ..Default::default()
        })
        .unwrap();
        assert!(!tiled.tunes_matmul_tiles());
    } else {
        assert!(gpu.matmul_kernels() != MatmulKernels::Tiled || gpu.tunes_matmul_tiles());
    }
}

#[test]
fn the_tile_cache_is_written_read_back_kept_per_adapter_and_survives_bad_files() {
    let dir = temp_dir("matmul-tile-cache");
    let path = dir.join("sub").join("matmul-tiles.json");
    let info = gpu().adapter_info().clone();
    let key_a = MatmulTileCache::adapter_key(&info);
    let other = wgpu::AdapterInfo {
        device: info.device.wrapping_add(1),
        ..info.clone()
    };
    let key_b = MatmulTileCache::adapter_key(&other);
    let newer_driver = wgpu::AdapterInfo {
        driver_info: format!("{} + 1", info.driver_info),
        ..info.clone()
    };
    assert_ne!(key_a, key_b);
    assert_ne!(key_a, MatmulTileCache::adapter_key(&newer_driver));
    assert!(key_a.contains(&info.name));

    let class = "NT f32 epilogue=true vec4=true batch=1 m=512 k=4096 n=4096";
    let mut a = MatmulTileCache::open(Some(path.clone()), &key_a);
    assert_eq!(a.get(class), None);
    a.insert(class, MatmulTile::M128N128).unwrap();
    assert!(path.exists(), "written, directories created");
    assert_eq!(
        MatmulTileCache::open(Some(path.clone()), &key_a).get(class),
        Some(MatmulTile::M128N128)
    );
    // Another adapter sees nothing of the first one's, and keeps its own beside it.
    let mut b = MatmulTileCache::open(Some(path.clone()), &key_b);
    assert_eq!(b.get(class), None);
    b.insert(class, MatmulTile::M32N128).unwrap();
    assert_eq!(
        MatmulTileCache::open(Some(path.clone()), &key_a).get(class),
        Some(MatmulTile::M128N128)
    );
    assert_eq!(
        MatmulTileCache::open(Some(path.clone()), &key_b).get(class),
        Some(MatmulTile::M32N128)
    );
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(json["adapters"][&key_a][class], "128x128");
    // No temporary is left behind.
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("matmul-tiles.json")]);

    // Corrupt, foreign, or holding unknown tiles: ignored, never a panic, then replaced.
    let bad_files: BTreeMap<&str, String> = [
        ("not json", "{\"format\": \"dora-wgpu matmul ti".to_string()),
        ("binary", String::from_utf8_lossy(&[0xff, 0x00, 0x13]).into_owned()),
        (
            "foreign",
            r#"{"format": "someone else's", "version": 1, "adapters": {}}"#.to_string(),
        ),
        (
            "newer version",
            format!(
                r#"{{"format": "dora-wgpu matmul tiles", "version": 99, "adapters": {{"{}": {{"{class}": "128x128"}}}}}}"#,
                key_a.replace('"', "\\\"")
            ),
        ),
    ]
    .into();
    for (what, text) in &bad_files {
        std::fs::write(&path, text).unwrap();
        let mut c = MatmulTileCache::open(Some(path.clone()), &key_a);
        assert_eq!(c.get(class), None, "{what}");
        c.insert(class, MatmulTile::M64N64).unwrap();
        assert_eq!(
            MatmulTileCache::open(Some(path.clone()), &key_a).get(class),
            Some(MatmulTile::M64N64),
            "{what}: rewritten"
        );
    }
    let unknown = serde_json::json!({
        "format": "dora-wgpu matmul tiles",
        "version": 1,
        "adapters": { key_a.clone(): { class: "96x96", "other": "32x128" } },
    });
    std::fs::write(&path, unknown.to_string()).unwrap();
    let c = MatmulTileCache::open(Some(path.clone()), &key_a);
    assert_eq!(c.get(class), None, "an unknown tile name");
    assert_eq!(c.get("other"), Some(MatmulTile::M32N128));
    // In memory only: nothing written anywhere.
    let mut mem = MatmulTileCache::open(None, &key_a);
    mem.insert(class, MatmulTile::M128N32).unwrap();
    assert_eq!(mem.get(class), Some(MatmulTile::M128N32));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tuning_times_the_tiles_once_per_shape_class_and_remembers_the_winner() {
    let dir = temp_dir("matmul-tuning");
    let path = dir.join("tiles.json");
    let options = GpuOptions {
        matmul_kernels: MatmulKernels::Tiled,
        // On this CPU adapter too: the timings mean nothing here, the path does.
        matmul_autotune: MatmulAutotune::Always,
        matmul_tile_cache: Some(path.clone()),
        ..Default::default()
    };
    let gpu = Gpu::with_options(&options).unwrap();
    assert!(gpu.tunes_matmul_tiles());
    let mut rng = Rng::new(7);
    // Two shape classes, the first one twice (a different size of the same class).
    for (m, k, n) in [(40, 24, 36), (200, 33, 20), (36, 20, 40)] {
        let a = random(&mut rng, m * k);
        let b = random(&mut rng, k * n);
        let c = ops::matmul(
            &Tensor::from_f32(&gpu, &a, &[m, k]).unwrap(),
            &Tensor::from_f32(&gpu, &b, &[k, n]).unwrap(),
        )
        .unwrap();
        let want = matmul_ref(&to_f64(&a), &to_f64(&b), m, k, n, false, false);
        assert_close(
            &format!("tuned {m}x{k}x{n}"),
            &c.to_vec_f32().unwrap(),
            &want,
            1e-5,
            1e-5,
        );
    }
    let key = MatmulTileCache::adapter_key(gpu.adapter_info());
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let classes = json["adapters"][&key].as_object().unwrap();
    assert_eq!(classes.len(), 2, "{classes:?}");
    let reopened = MatmulTileCache::open(Some(path.clone()), &key);
    for (class, tile) in classes {
        let tile = MatmulTile::parse(tile.as_str().unwrap()).unwrap();
        assert_eq!(reopened.get(class), Some(tile));
    }
    // Forcing a tile turns tuning off.
    let forced = Gpu::with_options(&GpuOptions {
        matmul_tile: Some(MatmulTile::M64N64),
        ..options
    })
    .unwrap();
    assert!(!forced.tunes_matmul_tiles());
    std::fs::remove_dir_all(&dir).unwrap();
}

//! How a context picks the tiled matmul's tile: forced (`DORA_MATMUL_TILE`,
//! [`GpuOptions::matmul_tile`](super::GpuOptions::matmul_tile)), tuned per
//! shape class on a real GPU and remembered per adapter on disk
//! ([`MatmulTileCache`]), or a default from the product's shape; and the
//! tiles themselves ([`MatmulTile`]): their sizes and which ones a device's
//! limits allow. The kernels' side (headers, tuning runs) is in
//! `kernels::matmul`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::files::write_atomically;

/// Depth of the K-slices every tile stages (`BK` in kernels/matmul/matmul_tiled.wgsl).
const BK: u32 = 16;

/// One tile of the tiled matmul: `rows x cols` outputs per workgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MatmulTile {
    /// 16 x 16 invocations of 8 x 8 outputs: large products.
    M128N128,
    /// 16 x 16 invocations of 4 x 4 outputs: products too small to fill a
    /// GPU with 128 x 128 tiles.
    M64N64,
    /// 16 x 8 invocations of 4 x 8 outputs: few rows, e.g. a rank-r M (the
    /// DoRA backward's dA = (h·B)ᵀ·x).
    M32N128,
    /// 8 x 16 invocations of 8 x 4 outputs: few columns, e.g. a rank-r N
    /// (x·Aᵀ, dB).
    M128N32,
}

impl MatmulTile {
    pub const ALL: [MatmulTile; 4] = [
        MatmulTile::M128N128,
        MatmulTile::M64N64,
        MatmulTile::M32N128,
        MatmulTile::M128N32,
    ];

    /// Outputs per workgroup, (rows, columns).
    pub fn size(self) -> (u32, u32) {
        match self {
            MatmulTile::M128N128 => (128, 128),
            MatmulTile::M64N64 => (64, 64),
            MatmulTile::M32N128 => (32, 128),
            MatmulTile::M128N32 => (128, 32),
        }
    }

    /// Blocks of 4 x 4 outputs per invocation, (rows, columns): 1 or 2 each.
    pub(crate) fn blocks(self) -> (u32, u32) {
        match self {
            MatmulTile::M128N128 => (2, 2),
            MatmulTile::M64N64 => (1, 1),
            MatmulTile::M32N128 => (1, 2),
            MatmulTile::M128N32 => (2, 1),
        }
    }

    /// Invocations per workgroup, (x along columns, y along rows).
    pub fn invocations(self) -> (u32, u32) {
        let ((bm, bn), (rm, rn)) = (self.size(), self.blocks());
        (bn / (4 * rn), bm / (4 * rm))
    }

    /// Bytes of workgroup memory: one K-slice of each operand.
    pub fn workgroup_bytes(self) -> u32 {
        let (bm, bn) = self.size();
        4 * BK * (bm + bn)
    }

    /// Whether a device with `limits` can run this tile.
    pub fn fits(self, limits: &wgpu::Limits) -> bool {
        let (x, y) = self.invocations();
        self.workgroup_bytes() <= limits.max_compute_workgroup_storage_size
            && x * y <= limits.max_compute_invocations_per_workgroup
            && x <= limits.max_compute_workgroup_size_x
            && y <= limits.max_compute_workgroup_size_y
    }

    /// The tiles a device with `limits` can run (64 x 64 fits WebGPU's minimums).
    pub fn candidates(limits: &wgpu::Limits) -> Vec<MatmulTile> {
        MatmulTile::ALL
            .into_iter()
            .filter(|t| t.fits(limits))
            .collect()
    }

    /// The tile for an M x N output (`batch` of them) without tuning: a
    /// narrow tile for rank-sized rows or columns, 128 x 128 where its
    /// workgroups still fill a large GPU, else 64 x 64. Only tiles in
    /// `allowed` are returned (64 x 64 when none of the others is).
    pub fn default_for(m: usize, n: usize, batch: usize, allowed: &[MatmulTile]) -> MatmulTile {
        let groups =
            |(bm, bn): (u32, u32)| m.div_ceil(bm as usize) * n.div_ceil(bn as usize) * batch;
        let preferred = if m <= 32 && n >= 128 {
            MatmulTile::M32N128
        } else if n <= 32 && m >= 128 {
            MatmulTile::M128N32
        } else if groups(MatmulTile::M128N128.size()) >= 128 {
            MatmulTile::M128N128
        } else {
            MatmulTile::M64N64
        };
        if allowed.contains(&preferred) {
            preferred
        } else {
            MatmulTile::M64N64
        }
    }

    /// "128x128" and so on: the name `DORA_MATMUL_TILE` and the tuning cache use.
    pub fn name(self) -> String {
        let (m, n) = self.size();
        format!("{m}x{n}")
    }

    /// The tile named `name` ("128x128", "64x64", "32x128", "128x32").
    pub fn parse(name: &str) -> Option<MatmulTile> {
        MatmulTile::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// The tile choice of one context.
pub(crate) struct TileChoice {
    /// A tile every tiled product uses.
    pub forced: Option<MatmulTile>,
    /// The tiles the device's limits allow.
    pub candidates: Vec<MatmulTile>,
    /// The tuning results, where tuning is on (a real GPU, no forced tile,
    /// `DORA_MATMUL_AUTOTUNE` not 0).
    pub tuned: Option<Mutex<MatmulTileCache>>,
}

/// When a context tunes the tiled matmul's tile.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MatmulAutotune {
    /// On real GPUs (not CPU adapters), unless a tile is forced.
    #[default]
    Auto,
    /// Never: the tile follows the product's shape.
    Off,
    /// On CPU adapters too (for tests: a software device's timings tune nothing).
    Always,
}

impl MatmulAutotune {
    /// `DORA_MATMUL_AUTOTUNE`: unset, 1 or auto; 0 or off; always.
    pub(crate) fn from_env() -> Result<MatmulAutotune> {
        match std::env::var("DORA_MATMUL_AUTOTUNE").as_deref() {
            Err(_) | Ok("") | Ok("1") | Ok("auto") => Ok(MatmulAutotune::Auto),
            Ok("0") | Ok("off") => Ok(MatmulAutotune::Off),
            Ok("always") => Ok(MatmulAutotune::Always),
            Ok(other) => Err(Error::InvalidArgument(format!(
                "DORA_MATMUL_AUTOTUNE={other:?}: expected auto, 0 (off) or always"
            ))),
        }
    }
}

impl TileChoice {
    /// `cache`: the tuning cache file (None: [`MatmulTileCache::default_path`]).
    pub fn new(
        forced: Option<MatmulTile>,
        autotune: MatmulAutotune,
        cache: Option<PathBuf>,
        info: &wgpu::AdapterInfo,
        limits: &wgpu::Limits,
    ) -> Result<TileChoice> {
        let candidates = MatmulTile::candidates(limits);
        if let Some(t) = forced.filter(|t| !candidates.contains(t)) {
            return Err(Error::InvalidArgument(format!(
                "matmul tile {}: {} allows {} bytes of workgroup memory and {} invocations per \
                 workgroup; the tile needs {} and {}",
                t.name(),
                info.name,
                limits.max_compute_workgroup_storage_size,
                limits.max_compute_invocations_per_workgroup,
                t.workgroup_bytes(),
                t.invocations().0 * t.invocations().1,
            )));
        }
        let tune = forced.is_none()
            && match autotune {
                MatmulAutotune::Auto => info.device_type != wgpu::DeviceType::Cpu,
                MatmulAutotune::Off => false,
                MatmulAutotune::Always => true,
            };
        let tuned = tune.then(|| {
            Mutex::new(MatmulTileCache::open(
                cache.or_else(MatmulTileCache::default_path),
                &MatmulTileCache::adapter_key(info),
            ))
        });
        Ok(TileChoice {
            forced,
            candidates,
            tuned,
        })
    }
}

/// `DORA_MATMUL_TILE`: a tile name ("128x128", "64x64", "32x128", "128x32"), or unset.
pub(crate) fn tile_from_env() -> Result<Option<MatmulTile>> {
    match std::env::var("DORA_MATMUL_TILE").as_deref() {
        Err(_) | Ok("") | Ok("auto") => Ok(None),
        Ok(name) => MatmulTile::parse(name).map(Some).ok_or_else(|| {
            let names: Vec<String> = MatmulTile::ALL.iter().map(|t| t.name()).collect();
            Error::InvalidArgument(format!(
                "DORA_MATMUL_TILE={name:?}: expected auto or one of {}",
                names.join(", ")
            ))
        }),
    }
}

/// What marks the cache file as this library's.
const FORMAT: &str = "dora-wgpu matmul tiles";
const VERSION: u64 = 1;

/// The tuned tile of each shape class on one adapter, kept in a JSON file
/// shared by every adapter of the machine (`{"format", "version",
/// "adapters": {adapter key: {shape class: tile name}}}`). A file that cannot
/// be read, is not JSON, or is not this format is ignored with one log line
/// (and replaced at the next write); writes go through a unique temporary
/// file renamed into place, so a reader never sees half a file.
#[derive(Debug)]
pub struct MatmulTileCache {
    path: Option<PathBuf>,
    adapter: String,
    entries: BTreeMap<String, MatmulTile>,
}

impl MatmulTileCache {
    /// The cache for adapter `adapter` in the file at `path` (None: in
    /// memory only), with what the file already holds for that adapter.
    pub fn open(path: Option<PathBuf>, adapter: &str) -> MatmulTileCache {
        let entries = path
            .as_deref()
            .and_then(read_file)
            .and_then(|mut all| all.remove(adapter))
            .map(|classes| {
                classes
                    .into_iter()
                    .filter_map(|(class, name)| Some((class, MatmulTile::parse(&name)?)))
                    .collect()
            })
            .unwrap_or_default();
        MatmulTileCache {
            path,
            adapter: adapter.to_string(),
            entries,
        }
    }

    /// `$DORA_CACHE_DIR/matmul-tiles.json`, else the platform's cache
    /// directory (`$XDG_CACHE_HOME` or `~/.cache` on Linux, `~/Library/Caches`
    /// on macOS, `%LOCALAPPDATA%` on Windows) under `dora-wgpu`.
    pub fn default_path() -> Option<PathBuf> {
        let var = |name| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let dir = if let Some(d) = var("DORA_CACHE_DIR") {
            d
        } else if cfg!(windows) {
            var("LOCALAPPDATA")?.join("dora-wgpu")
        } else if cfg!(target_os = "macos") {
            var("HOME")?.join("Library/Caches/dora-wgpu")
        } else {
            var("XDG_CACHE_HOME")
                .or_else(|| Some(var("HOME")?.join(".cache")))?
                .join("dora-wgpu")
        };
        Some(dir.join("matmul-tiles.json"))
    }

    /// The key of an adapter: name, vendor, device id, driver and backend.
    pub fn adapter_key(info: &wgpu::AdapterInfo) -> String {
        format!(
            "{} | vendor {:#x} | device {:#x} | {} {} | {:?}",
            info.name, info.vendor, info.device, info.driver, info.driver_info, info.backend
        )
    }

    /// The tuned tile of a shape class, if any.
    pub fn get(&self, class: &str) -> Option<MatmulTile> {
        self.entries.get(class).copied()
    }

    /// Remembers a class's tile and writes the file (other adapters' entries
    /// as the file now holds them, this adapter's as this cache holds them).
    pub fn insert(&mut self, class: &str, tile: MatmulTile) -> Result<()> {
        self.entries.insert(class.to_string(), tile);
        let Some(path) = &self.path else {
            return Ok(());
        };
        let mut all = read_file(path).unwrap_or_default();
        all.insert(
            self.adapter.clone(),
            self.entries
                .iter()
                .map(|(c, t)| (c.clone(), t.name()))
                .collect(),
        );
        let json = serde_json::json!({ "format": FORMAT, "version": VERSION, "adapters": all });
        // The cache directory is ours to make (a fresh machine has none).
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                path: dir.display().to_string(),
                source,
            })?;
        }
        write_atomically(
            path,
            &serde_json::to_vec_pretty(&json).expect("JSON of strings"),
        )
    }
}

type Adapters = BTreeMap<String, BTreeMap<String, String>>;

/// Every adapter's entries in the file; None (with one log line) when the
/// file is unreadable or not ours, silently when it does not exist.
fn read_file(path: &Path) -> Option<Adapters> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            log::warn!("ignoring the matmul tile cache {}: {e}", path.display());
            return None;
        }
    };
    #[derive(serde::Deserialize)]
    struct File {
        format: String,
        version: u64,
        adapters: Adapters,
    }
    match serde_json::from_slice::<File>(&bytes) {
        Ok(f) if f.format == FORMAT && f.version == VERSION => Some(f.adapters),
        Ok(f) => {
            log::warn!(
                "ignoring the matmul tile cache {}: format {:?} version {}, expected {FORMAT:?} version {VERSION}",
                path.display(),
                f.format,
                f.version
            );
            None
        }
        Err(e) => {
            log::warn!("ignoring the matmul tile cache {}: {e}", path.display());
            None
        }
    }
}

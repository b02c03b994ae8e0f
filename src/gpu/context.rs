//! The GPU context: one wgpu device and queue, plus the per-context caches
//! (pipelines, buffer pool, pending command batch). No global state: two
//! contexts can live side by side, and a context can wrap an application's
//! own device.

use std::sync::{Arc, Mutex};

use super::batch::Batch;
use super::cooperative::{self, CooperativeState};
use super::matmul_tiles::{tile_from_env, MatmulAutotune, MatmulTile, TileChoice};
use super::pipeline::PipelineCache;
use super::pool::{BufferPool, MemoryStats, PoolLimits};
use crate::error::{Error, Result};

/// Options for picking an adapter. `Default` honours wgpu's own environment
/// variables: `WGPU_BACKEND` (vulkan, metal, dx12, gl), `WGPU_ADAPTER_NAME`
/// (a case-insensitive substring of the adapter's name) and `WGPU_POWER_PREF`
/// (low, high); without them the high-performance adapter is preferred.
/// `DORA_MATMUL_KERNELS` (auto, tiled, broadcast) forces a matmul kernel family,
/// `DORA_MATMUL_TILE` (e.g. 128x128) the tiled family's tile and
/// `DORA_MATMUL_AUTOTUNE=0` turns its tuning off,
/// `DORA_ATTENTION` (auto, fused, matmul) an attention path,
/// `DORA_COOPERATIVE_MATRIX=1` turns on the cooperative-matrix matmul.
#[derive(Clone, Debug)]
pub struct GpuOptions {
    pub backends: wgpu::Backends,
    pub adapter_name: Option<String>,
    pub power_preference: wgpu::PowerPreference,
    pub matmul_kernels: MatmulKernels,
    /// The tiled family's tile for every product (`None`: tuned on a real
    /// GPU, else chosen from the shape; `DORA_MATMUL_TILE` when unset here).
    /// A tile the device's limits do not allow is an error.
    pub matmul_tile: Option<MatmulTile>,
    /// Whether to time the tiled family's candidate tiles on the first
    /// product of each shape class and remember the fastest per adapter
    /// (default: on real GPUs, not CPU adapters; `DORA_MATMUL_AUTOTUNE`
    /// when left at `Auto`: 0 turns it off).
    pub matmul_autotune: MatmulAutotune,
    /// The tuning cache file; None: `$DORA_CACHE_DIR/matmul-tiles.json`,
    /// else the platform's cache directory (see [`super::MatmulTileCache::default_path`]).
    pub matmul_tile_cache: Option<std::path::PathBuf>,
    /// Invocations per broadcast-matmul group: `None` takes the adapter's
    /// SIMD width when the driver states one (lavapipe: 8), else 16; `Some(8)` or
    /// `Some(16)` forces one, e.g. to test the 16-lane kernels on a device
    /// that would get 8.
    pub broadcast_lanes: Option<u32>,
    /// How causal attention is computed (see [`AttentionKernels`]).
    pub attention: AttentionKernels,
    /// Row reductions (norms, softmax, cross-entropy) through subgroup
    /// operations where the adapter has `Features::SUBGROUP` (default), or
    /// always through workgroup memory. `DORA_SUBGROUPS=0` turns them off.
    pub subgroups: bool,
    /// Products on cooperative matrices (tensor cores; Vulkan's
    /// `VK_KHR_cooperative_matrix`, Metal's simdgroup matrices) where the
    /// adapter offers f16 × f16 → f32 tiles our kernel fits. Off by default:
    /// operands are rounded to f16 (about 3 significant digits, magnitudes
    /// clamped to 65504), as PyTorch's autocast does; accumulation stays f32.
    /// Used only after a self-test against the f32 kernels on the device.
    /// `DORA_COOPERATIVE_MATRIX=1` turns it on.
    pub cooperative_matrix: bool,
    /// How much memory the buffer pool may keep idle, and a hard cap on all of it.
    pub memory: PoolLimits,
}

/// Which family of matrix-product kernels a context launches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MatmulKernels {
    /// `Broadcast` on CPU adapters (lavapipe, llvmpipe, WARP, SwiftShader), `Tiled` elsewhere.
    #[default]
    Auto,
    /// Workgroup-memory tiles shared by the invocations of a group: for real GPUs.
    Tiled,
    /// Register tiles with A values broadcast across a group and no workgroup
    /// memory: for software devices, where barriers are dear and loads cost more than FMAs.
    Broadcast,
}

impl MatmulKernels {
    fn from_env() -> Result<MatmulKernels> {
        match std::env::var("DORA_MATMUL_KERNELS").as_deref() {
            Err(_) | Ok("auto") | Ok("") => Ok(MatmulKernels::Auto),
            Ok("tiled") => Ok(MatmulKernels::Tiled),
            Ok("broadcast") => Ok(MatmulKernels::Broadcast),
            Ok(other) => Err(Error::InvalidArgument(format!(
                "DORA_MATMUL_KERNELS={other:?}: expected auto, tiled or broadcast"
            ))),
        }
    }

    /// The family `Auto` stands for on this adapter.
    fn resolve(self, info: &wgpu::AdapterInfo) -> MatmulKernels {
        match self {
            MatmulKernels::Auto if info.device_type == wgpu::DeviceType::Cpu => {
                MatmulKernels::Broadcast
            }
            MatmulKernels::Auto => MatmulKernels::Tiled,
            chosen => chosen,
        }
    }
}

/// How a context computes causal attention.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionKernels {
    /// `Fused` where the score matrices would be large (long sequences),
    /// `Matmul` for short ones, where the batched matmuls are faster.
    #[default]
    Auto,
    /// The fused flash-style kernels: no [queries, keys] matrix is ever held,
    /// forward or backward (memory O(T·d) per head instead of O(T²)).
    Fused,
    /// Batched matmuls around a causal softmax, keeping the probabilities for backward.
    Matmul,
}

impl AttentionKernels {
    fn from_env() -> Result<AttentionKernels> {
        match std::env::var("DORA_ATTENTION").as_deref() {
            Err(_) | Ok("auto") | Ok("") => Ok(AttentionKernels::Auto),
            Ok("fused") => Ok(AttentionKernels::Fused),
            Ok("matmul") => Ok(AttentionKernels::Matmul),
            Ok(other) => Err(Error::InvalidArgument(format!(
                "DORA_ATTENTION={other:?}: expected auto, fused or matmul"
            ))),
        }
    }
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            backends: wgpu::Backends::all().with_env(),
            adapter_name: std::env::var("WGPU_ADAPTER_NAME").ok(),
            power_preference: wgpu::PowerPreference::from_env()
                .unwrap_or(wgpu::PowerPreference::HighPerformance),
            matmul_kernels: MatmulKernels::Auto,
            matmul_tile: None,
            matmul_autotune: MatmulAutotune::Auto,
            matmul_tile_cache: None,
            broadcast_lanes: None,
            attention: AttentionKernels::Auto,
            subgroups: std::env::var("DORA_SUBGROUPS").map_or(true, |v| v != "0"),
            cooperative_matrix: std::env::var("DORA_COOPERATIVE_MATRIX").is_ok_and(|v| v == "1"),
            memory: PoolLimits::default(),
        }
    }
}

/// What to tell a user who has no adapter at all.
const NO_ADAPTER_HELP: &str = "install a GPU driver; on a machine without a GPU, \
Mesa's software Vulkan driver works (Debian/Ubuntu: `apt-get install mesa-vulkan-drivers`, \
or run scripts/install-mesa.sh), or try `WGPU_BACKEND=gl` with Mesa's llvmpipe";

/// A handle to a GPU context. Cheap to clone; all clones share one device.
#[derive(Clone)]
pub struct Gpu {
    pub(crate) inner: Arc<GpuInner>,
}

pub(crate) struct GpuInner {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub pipelines: PipelineCache,
    pub pool: Mutex<BufferPool>,
    pub batch: Mutex<Batch>,
    /// `Tiled` or `Broadcast`, never `Auto`.
    pub matmul_kernels: MatmulKernels,
    /// Invocations per broadcast-matmul group ([`broadcast_lanes_for`]).
    pub broadcast_lanes: u32,
    /// How the tiled matmul's tile is picked.
    pub matmul_tiles: TileChoice,
    /// The attention path (`Auto` decides per call, by size).
    pub attention: AttentionKernels,
    /// Row reductions use subgroup operations (the device has `SUBGROUP` and
    /// they were not turned off).
    pub subgroups: bool,
    /// The cooperative-matrix matmul's state ([`GpuOptions::cooperative_matrix`]).
    pub cooperative: Mutex<CooperativeState>,
    /// What the adapter offers, where this context opened it itself.
    pub report: Option<AdapterReport>,
    /// The first uncaptured device error, reported at the next synchronisation.
    pub device_error: Arc<Mutex<Option<String>>>,
    /// Per-kernel times while profiling is on (see [`Gpu::start_profiling`]).
    pub profile: Mutex<Option<std::collections::BTreeMap<String, KernelTime>>>,
    /// Times a dispatch on the GPU itself, where the device has timestamp queries.
    pub pass_timer: Option<PassTimer>,
}

/// GPU-side timing of one dispatch at a time: a compute pass writes its
/// start and end ticks into a two-entry query set, which is resolved into a
/// buffer and read back.
pub(crate) struct PassTimer {
    pub query_set: wgpu::QuerySet,
    pub resolved: wgpu::Buffer,
    pub readback: wgpu::Buffer,
    /// Nanoseconds per tick.
    pub period_ns: f64,
}

impl PassTimer {
    fn new(device: &wgpu::Device, queue: &wgpu::Queue) -> Option<PassTimer> {
        if !device.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
            return None;
        }
        let buffer = |label, usage| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: 2 * 8,
                usage,
                mapped_at_creation: false,
            })
        };
        Some(PassTimer {
            query_set: device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("pass timer"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            }),
            resolved: buffer(
                "pass timer ticks",
                wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            ),
            readback: buffer(
                "pass timer readback",
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            ),
            period_ns: queue.get_timestamp_period() as f64,
        })
    }
}

/// Time spent in one kernel while profiling. Each dispatch is submitted alone
/// and waited for; its time is read from GPU timestamps where the device has
/// them ([`Gpu::profiles_with_timestamps`]), else it is the wall-clock time
/// of that submission, overhead included.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct KernelTime {
    pub kernel: String,
    pub calls: u64,
    pub seconds: f64,
}

impl Gpu {
    /// Picks an adapter as [`GpuOptions::default`] does and opens a device on it.
    pub fn new() -> Result<Gpu> {
        Gpu::with_options(&GpuOptions::default())
    }

    /// Picks an adapter according to `options` and opens a device on it with the
    /// adapter's own buffer-size limits (wgpu's defaults are too small for LLM weights).
    pub fn with_options(options: &GpuOptions) -> Result<Gpu> {
        let kernels = match options.matmul_kernels {
            MatmulKernels::Auto => MatmulKernels::from_env()?,
            chosen => chosen,
        };
        let attention = match options.attention {
            AttentionKernels::Auto => AttentionKernels::from_env()?,
            chosen => chosen,
        };
        let tile = match options.matmul_tile {
            None => tile_from_env()?,
            chosen => chosen,
        };
        let autotune = match options.matmul_autotune {
            MatmulAutotune::Auto => MatmulAutotune::from_env()?,
            chosen => chosen,
        };
        if let Some(lanes) = options
            .broadcast_lanes
            .filter(|l| !BROADCAST_LANES.contains(l))
        {
            return Err(Error::InvalidArgument(format!(
                "GpuOptions::broadcast_lanes {lanes}: expected 8 or 16"
            )));
        }
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: options.backends,
            ..wgpu::InstanceDescriptor::new_without_display_handle_from_env()
        });
        let adapter = pick_adapter(&instance, options)?;
        let info = adapter.get_info();
        let report = AdapterReport::of(&adapter);
        // The adapter's own limits: wgpu's defaults (128 MiB bindings, 256 MiB
        // buffers) are too small for the embedding and LM-head weights of real models.
        let limits = adapter.limits();
        let cooperative = if options.cooperative_matrix {
            match cooperative::choose_shape(
                adapter.features(),
                &adapter.cooperative_matrix_properties(),
                (info.subgroup_min_size, info.subgroup_max_size),
            ) {
                Ok(shape) => CooperativeState::Untested(shape),
                Err(why) => {
                    log::warn!(
                        "cooperative matrices asked for, but {} ({:?}) has none usable: {why}; \
                         products stay on the f32 kernels",
                        info.name,
                        info.backend
                    );
                    CooperativeState::Off
                }
            }
        } else {
            CooperativeState::Off
        };
        let experimental = matches!(cooperative, CooperativeState::Untested(_));
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("dora-wgpu"),
            // Timestamps only serve `--profile`; asked for wherever offered,
            // as are subgroups (row reductions) unless turned off.
            required_features: adapter.features()
                & (wgpu::Features::TIMESTAMP_QUERY
                    | if options.subgroups {
                        wgpu::Features::SUBGROUP
                    } else {
                        wgpu::Features::empty()
                    }
                    | if experimental {
                        cooperative::features()
                    } else {
                        wgpu::Features::empty()
                    }),
            required_limits: limits,
            experimental_features: if experimental {
                // SAFETY: wgpu's experimental features may have bugs of their
                // own; the cooperative kernel is used only after it matches
                // the f32 kernels on this device (kernels::matmul's self-test).
                unsafe { wgpu::ExperimentalFeatures::enabled() }
            } else {
                wgpu::ExperimentalFeatures::disabled()
            },
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| Error::NoAdapter(format!("{} ({:?}): {e}", info.name, info.backend)))?;
        let gpu = Gpu::with_device(
            device,
            queue,
            info,
            kernels,
            options.broadcast_lanes,
            (tile, autotune, options.matmul_tile_cache.clone()),
            attention,
            Some(report),
        )?;
        *gpu.inner.cooperative.lock().unwrap() = cooperative;
        gpu.set_memory_limits(options.memory);
        // Our own device: route uncaptured errors to the next sync instead of panicking.
        let slot = gpu.inner.device_error.clone();
        gpu.inner
            .device
            .on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
                if slot.is_none() {
                    // One line: wgpu's message spans several.
                    let text = e.to_string();
                    let parts: Vec<&str> = text
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .collect();
                    *slot = Some(parts.join("; "));
                }
            }));
        Ok(gpu)
    }

    /// Wraps a device and queue the application already owns (e.g. a desktop
    /// app's renderer) so training shares that device. `info` is the adapter's
    /// info, used for reporting only. The device must allow storage buffers
    /// in compute shaders (any WebGPU or downlevel-compute device does).
    pub fn from_device(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: wgpu::AdapterInfo,
    ) -> Result<Gpu> {
        Gpu::with_device(
            device,
            queue,
            info,
            MatmulKernels::Auto,
            None,
            (tile_from_env()?, MatmulAutotune::from_env()?, None),
            AttentionKernels::Auto,
            None,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn with_device(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: wgpu::AdapterInfo,
        matmul_kernels: MatmulKernels,
        broadcast_lanes: Option<u32>,
        (tile, autotune, cache): (
            Option<MatmulTile>,
            MatmulAutotune,
            Option<std::path::PathBuf>,
        ),
        attention: AttentionKernels,
        report: Option<AdapterReport>,
    ) -> Result<Gpu> {
        let limits = device.limits();
        // The most storage buffers any kernel binds (WebGPU guarantees 8).
        let needed = MAX_STORAGE_BINDINGS;
        if limits.max_storage_buffers_per_shader_stage < needed {
            return Err(Error::NoAdapter(format!(
                "{} allows {} storage buffers per shader stage; dora-wgpu needs {needed}",
                info.name, limits.max_storage_buffers_per_shader_stage
            )));
        }
        let batch = Batch::new(&device, limits.min_uniform_buffer_offset_alignment);
        let matmul_kernels = matmul_kernels.resolve(&info);
        let broadcast_lanes = broadcast_lanes.unwrap_or_else(|| broadcast_lanes_for(&info));
        let matmul_tiles = TileChoice::new(tile, autotune, cache, &info, &limits)?;
        let pass_timer = PassTimer::new(&device, &queue);
        let subgroups = device.features().contains(wgpu::Features::SUBGROUP);
        Ok(Gpu {
            inner: Arc::new(GpuInner {
                device,
                queue,
                info,
                limits,
                pipelines: PipelineCache::default(),
                pool: Mutex::new(BufferPool::default()),
                batch: Mutex::new(batch),
                matmul_kernels,
                broadcast_lanes,
                matmul_tiles,
                attention,
                report,
                subgroups,
                cooperative: Mutex::new(CooperativeState::Off),
                device_error: Arc::new(Mutex::new(None)),
                profile: Mutex::new(None),
                pass_timer,
            }),
        })
    }

    /// The adapter's name, e.g. "llvmpipe (LLVM 19.1.7, 256 bits)".
    pub fn adapter_name(&self) -> &str {
        &self.inner.info.name
    }

    /// The backend in use: Vulkan, Metal, Dx12 or Gl.
    pub fn backend(&self) -> wgpu::Backend {
        self.inner.info.backend
    }

    /// What the adapter offers the kernels, where this context opened the
    /// device itself (`None` for [`Gpu::from_device`]).
    pub fn adapter_report(&self) -> Option<&AdapterReport> {
        self.inner.report.as_ref()
    }

    /// Whether row reductions run on subgroup operations ([`GpuOptions::subgroups`]).
    pub fn uses_subgroups(&self) -> bool {
        self.inner.subgroups
    }

    /// The cooperative-matrix matmul's state on this context.
    pub(crate) fn cooperative_state(&self) -> CooperativeState {
        self.inner.cooperative.lock().unwrap().clone()
    }

    /// Moves the cooperative state from `from` to `to`; false (and nothing
    /// changes) when another thread moved it first.
    pub(crate) fn move_cooperative_state(
        &self,
        from: &CooperativeState,
        to: CooperativeState,
    ) -> bool {
        let mut state = self.inner.cooperative.lock().unwrap();
        if *state != *from {
            return false;
        }
        *state = to;
        true
    }

    /// Whether products run on cooperative matrices: `None` where they were
    /// not asked for or the adapter has none usable, `Some(false)` before the
    /// self-test has run or after it failed, `Some(true)` once it passed.
    pub fn uses_cooperative_matrix(&self) -> Option<bool> {
        match self.cooperative_state() {
            CooperativeState::Off => None,
            CooperativeState::Verified(_) => Some(true),
            _ => Some(false),
        }
    }

    /// How this context computes attention ([`GpuOptions::attention`]).
    pub fn attention_kernels(&self) -> AttentionKernels {
        self.inner.attention
    }

    /// The matmul kernel family this context launches (`Tiled` or `Broadcast`).
    pub fn matmul_kernels(&self) -> MatmulKernels {
        self.inner.matmul_kernels
    }

    /// The tiled matmul's forced tile, if any ([`GpuOptions::matmul_tile`]).
    pub fn matmul_tile(&self) -> Option<MatmulTile> {
        self.inner.matmul_tiles.forced
    }

    /// Whether this context tunes the tiled matmul's tile ([`GpuOptions::matmul_autotune`]:
    /// no tile forced, and a real GPU unless `Always`).
    pub fn tunes_matmul_tiles(&self) -> bool {
        self.inner.matmul_tiles.tuned.is_some()
    }

    /// Invocations per broadcast-matmul group on this context (8 or 16; see
    /// [`GpuOptions::broadcast_lanes`]).
    pub fn broadcast_lanes(&self) -> u32 {
        self.inner.broadcast_lanes
    }

    /// Full adapter info as wgpu reports it.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.inner.info
    }

    /// The limits the device was opened with.
    pub fn limits(&self) -> &wgpu::Limits {
        &self.inner.limits
    }

    pub fn device(&self) -> &wgpu::Device {
        &self.inner.device
    }

    pub fn queue(&self) -> &wgpu::Queue {
        &self.inner.queue
    }

    /// Live and peak bytes of GPU buffers owned by this context.
    pub fn memory_stats(&self) -> MemoryStats {
        self.inner.pool.lock().unwrap().stats()
    }

    /// Starts a new peak measurement at the current live size.
    pub fn reset_peak_memory(&self) {
        self.inner.pool.lock().unwrap().reset_peak();
    }

    /// Frees pooled buffers that no tensor is using.
    pub fn release_unused_memory(&self) {
        self.inner.pool.lock().unwrap().release_free();
    }

    /// Lets go of every idle pooled buffer and restarts the working set the
    /// pool's budget is measured against: call it where the sizes a program
    /// needs change (before an evaluation, after a checkpoint).
    pub fn trim_memory(&self) {
        self.inner.pool.lock().unwrap().trim();
    }

    /// Replaces the buffer pool's limits (for a device the application owns,
    /// or to change them between phases).
    pub fn set_memory_limits(&self, limits: PoolLimits) {
        self.inner.pool.lock().unwrap().set_limits(limits);
    }

    /// The buffer pool's limits.
    pub fn memory_limits(&self) -> PoolLimits {
        self.inner.pool.lock().unwrap().limits()
    }

    /// Number of compute pipelines compiled so far (each variant once).
    pub fn pipelines_compiled(&self) -> usize {
        self.inner.pipelines.len()
    }

    /// How many command buffers this context has submitted: work is batched,
    /// so this grows once per flush, not once per op.
    pub fn submit_count(&self) -> u64 {
        self.inner.batch.lock().unwrap().submits
    }

    /// Submits all recorded work and waits until the GPU has finished it.
    pub fn synchronize(&self) -> Result<()> {
        self.flush();
        self.wait()
    }

    /// Starts timing every kernel: from now on each dispatch is submitted on
    /// its own and waited for (slow; for finding where time goes).
    pub fn start_profiling(&self) -> Result<()> {
        self.synchronize()?;
        *self.inner.profile.lock().unwrap() = Some(Default::default());
        Ok(())
    }

    /// Stops profiling and returns the kernels by total time, largest first.
    pub fn take_profile(&self) -> Vec<KernelTime> {
        let map = self
            .inner
            .profile
            .lock()
            .unwrap()
            .take()
            .unwrap_or_default();
        let mut v: Vec<KernelTime> = map.into_values().collect();
        v.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        v
    }

    /// Whether profiles time each dispatch with GPU timestamp queries (else
    /// with the wall clock around its submission).
    pub fn profiles_with_timestamps(&self) -> bool {
        self.inner.pass_timer.is_some()
    }

    pub(crate) fn is_profiling(&self) -> bool {
        self.inner.profile.lock().unwrap().is_some()
    }

    pub(crate) fn record_kernel_time(&self, kernel: &str, seconds: f64) {
        if let Some(map) = self.inner.profile.lock().unwrap().as_mut() {
            let e = map.entry(kernel.to_string()).or_insert_with(|| KernelTime {
                kernel: kernel.to_string(),
                ..Default::default()
            });
            e.calls += 1;
            e.seconds += seconds;
        }
    }

    /// Submits recorded work without waiting for it.
    pub fn flush(&self) {
        let mut batch = self.inner.batch.lock().unwrap();
        batch.submit(&self.inner.queue);
        // Buffers freed while that batch was recorded are now safe for host writes.
        self.inner.pool.lock().unwrap().batch_submitted();
    }

    /// Waits for all submitted work and reports any device error raised meanwhile.
    pub(crate) fn wait(&self) -> Result<()> {
        self.inner
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Device(e.to_string()))?;
        self.check_device_error()
    }

    pub(crate) fn check_device_error(&self) -> Result<()> {
        let mut slot = self.inner.device_error.lock().unwrap();
        match slot.take() {
            Some(msg) => Err(Error::Device(msg)),
            None => Ok(()),
        }
    }
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu({} / {:?})", self.adapter_name(), self.backend())
    }
}

/// Every adapter wgpu can see on the given backends.
fn enumerate_adapters(backends: wgpu::Backends) -> Vec<wgpu::Adapter> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends,
        ..wgpu::InstanceDescriptor::new_without_display_handle_from_env()
    });
    pollster::block_on(instance.enumerate_adapters(backends))
}

/// Lists every adapter wgpu can see on the given backends.
pub fn list_adapters(backends: wgpu::Backends) -> Vec<wgpu::AdapterInfo> {
    enumerate_adapters(backends)
        .iter()
        .map(|a| a.get_info())
        .collect()
}

/// What an adapter offers the kernels: the features and limits tile sizes and
/// kernel paths are chosen from (`dora-wgpu devices` prints them; the
/// benchmark's JSON carries the one it ran on).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct AdapterReport {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    /// Subgroup operations (`Features::SUBGROUP`), with the sizes a subgroup may have.
    pub subgroups: bool,
    pub subgroup_sizes: (u32, u32),
    pub shader_f16: bool,
    pub timestamp_query: bool,
    /// `Features::EXPERIMENTAL_COOPERATIVE_MATRIX`, and the configurations
    /// the adapter reports, as "M×N×K A/B type → C type".
    pub cooperative_matrix: bool,
    pub cooperative_matrix_configs: Vec<String>,
    /// What the cooperative-matrix matmul would run on here
    /// (`GpuOptions::cooperative_matrix`), or why it cannot.
    pub cooperative_matmul: String,
    pub max_compute_workgroup_storage_size: u32,
    pub max_compute_invocations_per_workgroup: u32,
    pub max_storage_buffer_binding_size: u64,
    pub max_buffer_size: u64,
}

impl AdapterReport {
    fn of(adapter: &wgpu::Adapter) -> AdapterReport {
        let info = adapter.get_info();
        let features = adapter.features();
        let limits = adapter.limits();
        let configs = if features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX) {
            adapter
                .cooperative_matrix_properties()
                .iter()
                .map(|c| {
                    format!(
                        "{}×{}×{} {:?} → {:?}{}",
                        c.m_size,
                        c.n_size,
                        c.k_size,
                        c.ab_type,
                        c.cr_type,
                        if c.saturating_accumulation {
                            " (saturating)"
                        } else {
                            ""
                        }
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        AdapterReport {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            subgroup_sizes: (info.subgroup_min_size, info.subgroup_max_size),
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            timestamp_query: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            cooperative_matrix: features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX),
            cooperative_matrix_configs: configs,
            cooperative_matmul: match cooperative::choose_shape(
                features,
                &adapter.cooperative_matrix_properties(),
                (info.subgroup_min_size, info.subgroup_max_size),
            ) {
                Ok(shape) => format!(
                    "{0}×{0} f16 tiles on {1} lanes (opt-in: DORA_COOPERATIVE_MATRIX=1)",
                    shape.tile, shape.lanes
                ),
                Err(why) => format!("unavailable: {why}"),
            },
            max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
            max_compute_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
            max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
            max_buffer_size: limits.max_buffer_size,
        }
    }
}

/// Every adapter wgpu finds on `backends`, with what each offers the kernels.
pub fn describe_adapters(backends: wgpu::Backends) -> Vec<AdapterReport> {
    enumerate_adapters(backends)
        .iter()
        .map(AdapterReport::of)
        .collect()
}

fn pick_adapter(instance: &wgpu::Instance, options: &GpuOptions) -> Result<wgpu::Adapter> {
    let adapters = pollster::block_on(instance.enumerate_adapters(options.backends));
    let compute_capable = |a: &wgpu::Adapter| {
        a.get_downlevel_capabilities()
            .flags
            .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
    };
    if let Some(wanted) = &options.adapter_name {
        let wanted_lc = wanted.to_lowercase();
        let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
        return adapters
            .into_iter()
            .find(|a| a.get_info().name.to_lowercase().contains(&wanted_lc))
            .ok_or_else(|| {
                Error::NoAdapter(format!(
                    "WGPU_ADAPTER_NAME={wanted:?} matches none of the adapters found: {names:?}"
                ))
            });
    }
    // Prefer what wgpu itself picks for the requested power preference, then
    // any compute-capable adapter (discrete > integrated > others).
    let preferred = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: options.power_preference,
        ..Default::default()
    }));
    if let Ok(a) = preferred {
        if compute_capable(&a) {
            return Ok(a);
        }
    }
    let rank = |a: &wgpu::Adapter| match a.get_info().device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    };
    adapters
        .into_iter()
        .filter(compute_capable)
        .min_by_key(rank)
        .ok_or_else(|| {
            Error::NoAdapter(format!(
                "none found on backends {:?}; {NO_ADAPTER_HELP}",
                options.backends
            ))
        })
}

/// The broadcast matmul's group sizes a context takes (the kernels compile
/// a variant for each).
pub(crate) const BROADCAST_LANES: [u32; 2] = [8, 16];

/// The most storage buffers any kernel binds (`kernels::Kernel::all` is
/// checked against it by a unit test there).
pub(crate) const MAX_STORAGE_BINDINGS: u32 = 8;

/// The broadcast matmul's group size on an adapter: its SIMD width when the
/// driver states one (lavapipe: 8), within 8..=16, else 16. A group of one
/// SIMD batch wastes the least on widths that are not a multiple of its
/// columns (576 = 9 x 64 with 8 lanes, 4.5 x 128 with 16); a group narrower
/// than the SIMD width would leave lanes idle.
pub(crate) fn broadcast_lanes_for(info: &wgpu::AdapterInfo) -> u32 {
    if info.subgroup_min_size == info.subgroup_max_size {
        info.subgroup_max_size.clamp(8, 16).next_power_of_two()
    } else {
        16
    }
}

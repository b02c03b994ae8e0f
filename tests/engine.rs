//! The GPU context and dispatcher: adapter choice, shared devices, two
//! contexts side by side, the pipeline cache, the buffer pool, memory
//! statistics and command batching.

mod common;

use common::*;
use dora_wgpu::nn::Rng;
use dora_wgpu::{ops, DType, Gpu, GpuOptions, PoolLimits, Tensor};

#[test]
fn context_reports_adapter_and_backend() {
    let gpu = gpu();
    assert!(!gpu.adapter_name().is_empty());
    if let Ok(wanted) = std::env::var("WGPU_BACKEND") {
        let backend = format!("{:?}", gpu.backend()).to_lowercase();
        assert!(
            wanted.to_lowercase().contains(&backend),
            "WGPU_BACKEND={wanted} but got {backend}"
        );
    }
    assert!(gpu.limits().max_storage_buffer_binding_size >= 128 << 20);
    let listed = dora_wgpu::list_adapters(wgpu::Backends::all());
    assert!(listed.iter().any(|a| a.name == gpu.adapter_name()));
}

#[test]
fn unknown_adapter_name_is_a_clear_error() {
    let options = GpuOptions {
        adapter_name: Some("no-such-gpu-xyz".into()),
        ..Default::default()
    };
    let err = Gpu::with_options(&options).unwrap_err().to_string();
    assert!(
        err.contains("no-such-gpu-xyz") && err.contains("matches none"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);
}

#[test]
fn no_backend_at_all_says_how_to_get_one() {
    let options = GpuOptions {
        backends: wgpu::Backends::empty(),
        adapter_name: None,
        ..Default::default()
    };
    let err = Gpu::with_options(&options).unwrap_err().to_string();
    assert!(
        err.contains("no GPU adapter") && err.contains("mesa-vulkan-drivers"),
        "{err}"
    );
}

#[test]
fn two_contexts_live_side_by_side() {
    let a = Gpu::new().unwrap();
    let b = Gpu::new().unwrap();
    let ta = Tensor::from_f32(&a, &[1.0, 2.0], &[2]).unwrap();
    let tb = Tensor::from_f32(&b, &[10.0, 20.0], &[2]).unwrap();
    assert_eq!(
        ops::scale(&ta, 2.0).unwrap().to_vec_f32().unwrap(),
        vec![2.0, 4.0]
    );
    assert_eq!(
        ops::scale(&tb, 0.5).unwrap().to_vec_f32().unwrap(),
        vec![5.0, 10.0]
    );
    // Mixing them is an error, not a crash.
    let err = ops::add(&ta, &tb).unwrap_err().to_string();
    assert!(err.contains("different GPU contexts"), "{err}");
}

#[test]
fn profiling_times_each_kernel_with_gpu_timestamps_where_offered() {
    // Its own context: profiling makes every dispatch on a context synchronous.
    let gpu = Gpu::new().unwrap();
    let offered = gpu
        .device()
        .features()
        .contains(dora_wgpu::wgpu::Features::TIMESTAMP_QUERY);
    assert_eq!(gpu.profiles_with_timestamps(), offered);
    let mut rng = dora_wgpu::nn::Rng::new(4);
    let n = 384;
    let x = Tensor::from_f32(&gpu, &random(&mut rng, n * n), &[n, n]).unwrap();
    let v = Tensor::from_f32(&gpu, &random(&mut rng, n), &[n]).unwrap();
    ops::matmul(&x, &x).unwrap();
    ops::add(&v, &v).unwrap();
    gpu.synchronize().unwrap(); // pipelines compiled before timing

    gpu.start_profiling().unwrap();
    let started = std::time::Instant::now();
    for _ in 0..3 {
        ops::add(&v, &v).unwrap();
    }
    ops::matmul(&x, &x).unwrap();
    let wall = started.elapsed().as_secs_f64();
    let profile = gpu.take_profile();
    let find = |name: &str| {
        profile
            .iter()
            .find(|k| k.kernel.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in {profile:?}"))
    };
    let (add, matmul) = (find("Binary(Add"), find("Matmul"));
    assert_eq!(
        (add.calls, matmul.calls, profile.len()),
        (3, 1, 2),
        "{profile:?}"
    );
    assert!(add.seconds > 0.0, "{profile:?}");
    assert!(
        add.seconds + matmul.seconds <= wall,
        "{profile:?} within {wall} s"
    );
    // 113 MFLOP against three additions of 384 numbers.
    assert!(matmul.seconds > add.seconds, "{profile:?}");
    // Profiling stopped: dispatches are batched again and nothing is recorded.
    ops::add(&v, &v).unwrap();
    assert!(gpu.take_profile().is_empty());
}

#[test]
fn context_wraps_an_applications_own_device() {
    // An application that already owns a device (say, a renderer) shares it.
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&Default::default())).unwrap();
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_limits: adapter.limits(),
        ..Default::default()
    }))
    .unwrap();
    let gpu = Gpu::from_device(device.clone(), queue.clone(), adapter.get_info()).unwrap();
    let x = Tensor::from_f32(&gpu, &[1.0, 2.0, 3.0, 4.0], &[2, 2]).unwrap();
    let y = ops::matmul(&x, &x).unwrap();
    assert_eq!(y.to_vec_f32().unwrap(), vec![7.0, 10.0, 15.0, 22.0]);
    // The application's own handle still works alongside.
    let buf = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 16,
        usage: wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    queue.write_buffer(&buf, 0, &[0u8; 16]);
    queue.submit([]);
}

#[test]
fn pipelines_are_compiled_once_per_variant() {
    let gpu = Gpu::new().unwrap();
    let x = Tensor::from_f32(&gpu, &[1.0; 6], &[2, 3]).unwrap();
    let _ = ops::scale(&x, 2.0).unwrap().to_vec_f32().unwrap();
    let after_one = gpu.pipelines_compiled();
    for _ in 0..10 {
        let _ = ops::scale(&x, 3.0).unwrap();
    }
    gpu.synchronize().unwrap();
    assert_eq!(gpu.pipelines_compiled(), after_one);
    let _ = ops::silu(&x).unwrap();
    assert_eq!(gpu.pipelines_compiled(), after_one + 1);
}

#[test]
fn dispatches_are_batched_and_submitted_only_when_needed() {
    let gpu = Gpu::new().unwrap();
    let mut x = Tensor::from_f32(&gpu, &[1.0; 1000], &[10, 100]).unwrap();
    gpu.synchronize().unwrap();
    let before = gpu.submit_count();
    for _ in 0..200 {
        x = ops::scale(&x, 1.01).unwrap();
    }
    assert_eq!(gpu.submit_count(), before, "recording must not submit");
    let v = x.to_vec_f32().unwrap();
    assert_eq!(gpu.submit_count(), before + 1, "one readback, one submit");
    let want = 1.01f64.powi(200);
    assert_close("chained", &v[..1], &[want], 1e-5, 0.0);
}

#[test]
fn buffers_are_reused_and_memory_is_counted() {
    let gpu = Gpu::new().unwrap();
    let n = 1 << 16;
    let bytes = 4 * n as u64;
    let stats0 = gpu.memory_stats();
    assert_eq!(stats0.live_bytes, 0);
    let a = Tensor::zeros(&gpu, &[n], DType::F32).unwrap();
    let b = Tensor::zeros(&gpu, &[n], DType::F32).unwrap();
    let s = gpu.memory_stats();
    assert_eq!(s.live_bytes, 2 * bytes);
    assert_eq!(s.peak_live_bytes, 2 * bytes);
    drop(a);
    drop(b);
    let s = gpu.memory_stats();
    assert_eq!(s.live_bytes, 0);
    assert_eq!(s.pooled_bytes, 2 * bytes, "freed buffers stay pooled");
    assert_eq!(s.peak_live_bytes, 2 * bytes);
    // New tensors of the same size class come from the pool: nothing new is allocated.
    let c = ops::scale(&Tensor::zeros(&gpu, &[n], DType::F32).unwrap(), 2.0).unwrap();
    let s = gpu.memory_stats();
    assert_eq!(s.allocated_bytes, 2 * bytes);
    assert_eq!(s.live_bytes, bytes);
    assert!(c.to_vec_f32().unwrap().iter().all(|&v| v == 0.0));
    // Pooled buffers are released on request; the peak can be reset.
    drop(c);
    gpu.synchronize().unwrap();
    gpu.flush();
    gpu.release_unused_memory();
    assert_eq!(gpu.memory_stats().allocated_bytes, 0);
    gpu.reset_peak_memory();
    assert_eq!(gpu.memory_stats().peak_live_bytes, 0);
    // 16-bit tensors take half the memory of f32 ones.
    let h = Tensor::from_f32_as(&gpu, &vec![1.0; n], &[n], DType::BF16).unwrap();
    assert_eq!(gpu.memory_stats().live_bytes, bytes / 2);
    drop(h);
}

#[test]
fn a_reused_buffer_never_changes_data_still_pending_in_the_batch() {
    // Upload, compute, free and re-upload inside one batch: each op must see
    // its own input, though the pool recycles buffers along the way.
    let gpu = Gpu::new().unwrap();
    let mut results = Vec::new();
    for i in 0..20 {
        let x = Tensor::from_f32(&gpu, &[i as f32; 64], &[64]).unwrap();
        results.push(ops::scale(&x, 2.0).unwrap());
    }
    for (i, r) in results.iter().enumerate() {
        assert!(
            r.to_vec_f32().unwrap().iter().all(|&v| v == 2.0 * i as f32),
            "result {i}"
        );
    }
}

#[test]
fn tensors_round_trip_every_dtype() {
    let gpu = gpu();
    let v = [1.5f32, -2.0, 0.25, 3.0, 7.0];
    assert_eq!(
        Tensor::from_f32(gpu, &v, &[5])
            .unwrap()
            .to_vec_f32()
            .unwrap(),
        v.to_vec()
    );
    for dtype in [DType::BF16, DType::F16] {
        let t = Tensor::from_f32_as(gpu, &v, &[5], dtype).unwrap();
        assert_eq!(t.dtype(), dtype);
        assert_eq!(
            t.to_vec_f32().unwrap(),
            v.to_vec(),
            "{dtype:?} holds these exactly"
        );
    }
    let ids = Tensor::from_i32(gpu, &[3, -100, 7], &[3]).unwrap();
    assert_eq!(ids.to_vec_i32().unwrap(), vec![3, -100, 7]);
    assert_eq!(
        Tensor::zeros(gpu, &[3, 3], DType::F32)
            .unwrap()
            .to_vec_f32()
            .unwrap(),
        vec![0.0; 9]
    );
}

#[test]
fn chunked_lm_head_loss_never_holds_all_logits() {
    // [512, 8192] f32 logits would be 16 MiB; in chunks of 32 rows, 1 MiB each.
    let gpu = Gpu::new().unwrap();
    let (rows, dim, vocab, chunk) = (512, 16, 8192, 32);
    let hidden = Tensor::param(&gpu, &vec![0.01; rows * dim], &[rows, dim]).unwrap();
    let head =
        Tensor::from_f32_as(&gpu, &vec![0.02; vocab * dim], &[vocab, dim], DType::BF16).unwrap();
    let targets: Vec<i32> = (0..rows as i32).map(|i| i * 7 % vocab as i32).collect();
    gpu.synchronize().unwrap();
    gpu.reset_peak_memory();
    let before = gpu.memory_stats().live_bytes;
    let head = ops::VocabMatrix::from(head);
    let loss = ops::lm_head_cross_entropy(&hidden, &head, &targets, chunk, None).unwrap();
    loss.backward().unwrap();
    // Uniform logits: the loss is ln(vocab).
    assert!((loss.item().unwrap() - (vocab as f32).ln()).abs() < 1e-3);
    let peak = gpu.memory_stats().peak_live_bytes - before;
    let all_logits = (rows * vocab * 4) as u64;
    assert!(
        peak < all_logits / 4,
        "peak {peak} bytes vs {all_logits} for all logits"
    );
}

/// A pool with the default limits on its own context.
fn pooled_gpu(limits: PoolLimits) -> Gpu {
    Gpu::with_options(&GpuOptions {
        memory: limits,
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn the_pool_holds_what_a_step_needs_not_every_size_it_has_seen() {
    let gpu = pooled_gpu(PoolLimits::default());
    let mut rng = Rng::new(3);
    let mut previous_peak = 0u64;
    let (mut most_live, mut most_allocated) = (0u64, 0u64);
    for step in 0..120 {
        gpu.reset_peak_memory();
        // A "step" of four activations whose sizes follow a random sequence length.
        let len = 16 + rng.next_u64() as usize % 1000;
        let acts: Vec<Tensor> = (1..=4)
            .map(|k| Tensor::zeros(&gpu, &[len * 64 * k], DType::F32).unwrap())
            .collect();
        drop(acts);
        gpu.flush();
        let s = gpu.memory_stats();
        let budget = 1.25 * previous_peak.max(s.peak_live_bytes) as f64;
        assert!(
            s.peak_allocated_bytes as f64 <= budget + 256.0,
            "step {step}: {} bytes held for a working set of {}",
            s.peak_allocated_bytes,
            previous_peak.max(s.peak_live_bytes)
        );
        previous_peak = s.peak_live_bytes;
        most_live = most_live.max(s.peak_live_bytes);
        most_allocated = most_allocated.max(s.peak_allocated_bytes);
    }
    assert!(most_allocated as f64 <= 1.25 * most_live as f64 + 256.0);
    // Trimming lets every idle buffer go.
    gpu.trim_memory();
    let s = gpu.memory_stats();
    assert_eq!((s.pooled_bytes, s.allocated_bytes), (0, s.live_bytes));
}

#[test]
fn a_pooled_buffer_serves_a_slightly_smaller_request() {
    let gpu = pooled_gpu(PoolLimits::default());
    let n = 100_000;
    drop(Tensor::zeros(&gpu, &[n * 11 / 10], DType::F32).unwrap());
    gpu.flush();
    let held = gpu.memory_stats().allocated_bytes;
    // Another size class, within a quarter of the free buffer: reused, nothing created.
    let t = Tensor::zeros(&gpu, &[n], DType::F32).unwrap();
    let s = gpu.memory_stats();
    assert_eq!(s.allocated_bytes, held, "{s:?}");
    assert!(t.to_vec_f32().unwrap().iter().all(|&v| v == 0.0));
}

#[test]
fn a_memory_limit_is_a_clear_error_and_idle_buffers_give_way() {
    let limit = 1 << 20;
    let gpu = pooled_gpu(PoolLimits {
        max_bytes: Some(limit),
        ..Default::default()
    });
    let n = 150_000; // 600 kB
    let a = Tensor::zeros(&gpu, &[n], DType::F32).unwrap();
    let err = Tensor::zeros(&gpu, &[n], DType::F32)
        .unwrap_err()
        .to_string();
    assert!(err.contains("GPU memory limit of 1.0 MB"), "{err}");
    assert_eq!(err.lines().count(), 1);
    // Once the first is freed its buffer is reused or let go: the limit holds.
    drop(a);
    gpu.flush();
    let b = Tensor::zeros(&gpu, &[n / 2], DType::F32).unwrap();
    let c = Tensor::zeros(&gpu, &[n], DType::F32).unwrap();
    assert!(gpu.memory_stats().allocated_bytes <= limit);
    drop((b, c));
}

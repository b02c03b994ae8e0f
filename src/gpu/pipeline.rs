//! The pipeline cache: each kernel variant is compiled once per context.
//! Every kernel takes its parameters as a uniform at binding 0 (dynamic
//! offset into the batch's parameter buffer) and its tensors as storage
//! buffers at bindings 1.. in the order its `bindings()` lists them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// How a kernel declares a storage binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    ReadWrite,
}

/// What the dispatcher needs of a kernel to compile and bind it. The kernels
/// (`crate::kernels::Kernel`) implement it; this layer knows no kernel by name.
pub(crate) trait Program {
    /// A unique name for the variant: the pipeline cache key.
    fn label(&self) -> String;
    fn entry(&self) -> &'static str;
    /// The storage bindings, as (binding, access) in the order a dispatch
    /// passes its buffers. Binding 0 is always the parameters.
    fn bindings(&self) -> &'static [(u32, Access)];
    /// The full WGSL source, for a device with or without subgroup operations.
    fn source_for(&self, subgroups: bool) -> String;
}

pub(crate) struct Pipeline {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

#[derive(Default)]
pub(crate) struct PipelineCache {
    map: Mutex<HashMap<String, Arc<Pipeline>>>,
}

impl PipelineCache {
    pub fn len(&self) -> usize {
        self.map.lock().unwrap().len()
    }

    /// The pipeline of `kernel`, compiled on first use; `subgroups` is fixed
    /// per context (whether its device has subgroup operations).
    pub fn get(
        &self,
        device: &wgpu::Device,
        kernel: &dyn Program,
        subgroups: bool,
    ) -> Arc<Pipeline> {
        let key = kernel.label();
        if let Some(p) = self.map.lock().unwrap().get(&key) {
            return p.clone();
        }
        // Compile outside the lock: it can take a while and other threads may record meanwhile.
        let pipeline = Arc::new(build(device, kernel, &key, subgroups));
        self.map
            .lock()
            .unwrap()
            .entry(key)
            .or_insert(pipeline)
            .clone()
    }
}

fn build(device: &wgpu::Device, kernel: &dyn Program, label: &str, subgroups: bool) -> Pipeline {
    let source = kernel.source_for(subgroups);
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(label),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    });
    let mut entries = vec![wgpu::BindGroupLayoutEntry {
        binding: 0,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: true,
            min_binding_size: None,
        },
        count: None,
    }];
    for &(binding, access) in kernel.bindings() {
        entries.push(wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage {
                    read_only: access == Access::Read,
                },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        });
    }
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(label),
        entries: &entries,
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(label),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(label),
        layout: Some(&pipeline_layout),
        module: &module,
        entry_point: Some(kernel.entry()),
        compilation_options: wgpu::PipelineCompilationOptions {
            // Every kernel writes its workgroup memory before reading it. The
            // zero-fill wgpu would add costs each dispatch, and Mesa's GL
            // compiler takes tens of seconds over it for the matmul tiles.
            zero_initialize_workgroup_memory: false,
            ..Default::default()
        },
        cache: None,
    });
    Pipeline { pipeline, layout }
}

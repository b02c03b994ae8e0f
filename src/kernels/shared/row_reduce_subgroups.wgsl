// Reductions across the ROW_LANES invocations of a row's workgroup with
// subgroup operations (a device with Features::SUBGROUP): each subgroup
// reduces in registers, its first invocation leaves the result in workgroup
// memory at the subgroup's index, and every invocation combines those few
// partial results in subgroup order (the same order on every run). Two
// barriers instead of log2(ROW_LANES) + 2.

struct RowLane {
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_id) subgroup: u32,
    @builtin(num_subgroups) subgroups: u32,
    @builtin(subgroup_invocation_id) in_subgroup: u32,
}

// Sum of `v` over the ROW_LANES invocations; every invocation gets the result.
fn workgroup_sum(v: f32, lane: RowLane) -> f32 {
    let part = subgroupAdd(v);
    if (lane.in_subgroup == 0u) {
        scratch[lane.subgroup] = part;
    }
    workgroupBarrier();
    var total = scratch[0];
    for (var i = 1u; i < lane.subgroups; i++) {
        total = total + scratch[i];
    }
    workgroupBarrier();
    return total;
}

// Maximum of `v` over the ROW_LANES invocations; every invocation gets the result.
fn workgroup_max(v: f32, lane: RowLane) -> f32 {
    let part = subgroupMax(v);
    if (lane.in_subgroup == 0u) {
        scratch[lane.subgroup] = part;
    }
    workgroupBarrier();
    var total = scratch[0];
    for (var i = 1u; i < lane.subgroups; i++) {
        total = max(total, scratch[i]);
    }
    workgroupBarrier();
    return total;
}

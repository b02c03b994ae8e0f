// Reductions across the ROW_LANES invocations of a row's workgroup, for
// devices without subgroup operations: a tree in workgroup memory
// (log2(ROW_LANES) barrier rounds). Entry points that reduce take a `RowLane`
// (their invocation's builtins) and pass it on.

struct RowLane {
    @builtin(local_invocation_index) lid: u32,
}

// Sum of `v` over the ROW_LANES invocations; every invocation gets the result.
fn workgroup_sum(v: f32, lane: RowLane) -> f32 {
    let lid = lane.lid;
    scratch[lid] = v;
    workgroupBarrier();
    for (var s = ROW_LANES / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            scratch[lid] = scratch[lid] + scratch[lid + s];
        }
        workgroupBarrier();
    }
    let total = scratch[0];
    workgroupBarrier();
    return total;
}

// Maximum of `v` over the ROW_LANES invocations; every invocation gets the result.
fn workgroup_max(v: f32, lane: RowLane) -> f32 {
    let lid = lane.lid;
    scratch[lid] = v;
    workgroupBarrier();
    for (var s = ROW_LANES / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            scratch[lid] = max(scratch[lid], scratch[lid + s]);
        }
        workgroupBarrier();
    }
    let total = scratch[0];
    workgroupBarrier();
    return total;
}

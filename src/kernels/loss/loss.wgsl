// Mean cross-entropy over the rows of [rows, classes] logits with i32 targets.
// Rows whose target is `ignore_index` (or negative) count for nothing.
//   ce_rows:     per row: lse = logsumexp(logits), loss = lse - logits[target]
//   ce_mean:     one workgroup: stats = [sum(loss) / count, count]
//   ce_backward: dlogits = g * (softmax(logits) - onehot(target)) / count
// With `softcap` c > 0 (Gemma's final_logit_softcapping) every logit x is
// read as c * tanh(x / c), and backward multiplies by its derivative.

// `Params` is generated from its one declaration in Rust (this folder's mod.rs).
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> targets: array<i32>;
@group(0) @binding(3) var<storage, read_write> row_loss: array<f32>;
@group(0) @binding(4) var<storage, read_write> lse: array<f32>;
@group(0) @binding(5) var<storage, read_write> stats: array<f32>;
@group(0) @binding(6) var<storage, read> grad_out: array<f32>;
@group(0) @binding(7) var<storage, read_write> dlogits: array<f32>;

// Logit i as the loss reads it: soft-capped when `softcap` is set.
fn logit(i: u32) -> f32 {
    let x = logits[i];
    if (p.softcap <= 0.0) {
        return x;
    }
    return p.softcap * tanh_clamped(x / p.softcap);
}

fn is_counted(t: i32) -> bool {
    return t != p.ignore_index && t >= 0;
}

@compute @workgroup_size(ROW_LANES)
fn ce_rows(
    lane: RowLane,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let lid = lane.lid;
    let row = group_index(wid, nwg);
    if (row >= p.rows) {
        return;
    }
    let base = row * p.classes;
    var m = -3.4028235e38;
    for (var j = lid; j < p.classes; j += ROW_LANES) {
        m = max(m, logit(base + j));
    }
    let row_max = workgroup_max(m, lane);
    var s = 0.0;
    for (var j = lid; j < p.classes; j += ROW_LANES) {
        s = s + exp(logit(base + j) - row_max);
    }
    let l = row_max + log(workgroup_sum(s, lane));
    if (lid == 0u) {
        lse[row] = l;
        let t = targets[row];
        if (is_counted(t) && u32(t) < p.classes) {
            row_loss[row] = l - logit(base + u32(t));
        } else {
            row_loss[row] = 0.0;
        }
    }
}

@compute @workgroup_size(ROW_LANES)
fn ce_mean(lane: RowLane) {
    let lid = lane.lid;
    var s = 0.0;
    var n = 0.0;
    for (var i = lid; i < p.rows; i += ROW_LANES) {
        s = s + row_loss[i];
        if (is_counted(targets[i])) {
            n = n + 1.0;
        }
    }
    let total = workgroup_sum(s, lane);
    let count = workgroup_sum(n, lane);
    if (lid == 0u) {
        stats[0] = total / max(count, 1.0);
        stats[1] = count;
    }
}

@compute @workgroup_size(256)
fn ce_backward(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = group_index(wid, nwg) * 256u + lid;
    if (i >= p.rows * p.classes) {
        return;
    }
    let row = i / p.classes;
    let t = targets[row];
    if (!is_counted(t)) {
        dlogits[i] = 0.0;
        return;
    }
    var onehot = 0.0;
    if (u32(t) == i % p.classes) {
        onehot = 1.0;
    }
    let z = logit(i);
    var scale = grad_out[0] / max(stats[1], 1.0);
    if (p.softcap > 0.0) {
        scale = scale * (1.0 - (z / p.softcap) * (z / p.softcap));
    }
    dlogits[i] = scale * (exp(z - lse[row]) - onehot);
}

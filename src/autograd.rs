//! The autograd tape. Every op that sees an input requiring gradients records
//! a `GradFn` on its output: the inputs and a closure holding what the op's
//! backward rule needs. `Tensor::backward` walks those records from the loss
//! back to the trainable leaves in reverse topological order, frees each
//! record once used (so activations go back to the pool during backward),
//! and accumulates into the leaves' gradient buffers across calls.
//!
//! Frozen tensors carry no node: no gradient is ever computed or stored for them.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use crate::error::{shape_err, Error, Result};
use crate::kernels::elementwise::{add_assign, binary, copy};
use crate::kernels::{BinaryOp, Broadcast};
use crate::tensor::{GradFn, Node, Tensor};

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// While alive, ops on this thread record nothing (evaluation, generation).
pub struct NoGradGuard {
    previous: bool,
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        GRAD_ENABLED.with(|g| g.set(self.previous));
    }
}

/// Turns off recording on this thread until the guard is dropped.
pub fn no_grad() -> NoGradGuard {
    set_grad_enabled(false)
}

/// Sets recording on or off on this thread until the guard is dropped.
fn set_grad_enabled(enabled: bool) -> NoGradGuard {
    let previous = GRAD_ENABLED.with(|g| g.replace(enabled));
    NoGradGuard { previous }
}

pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// Gradient checkpointing: `f(x)` runs without recording, so none of its
/// intermediates stay alive; backward runs `f` again with recording on and
/// back-propagates through that copy. The gradients of the parameters `f`
/// uses accumulate during that inner pass; listing them in `params` makes the
/// node record even when `x` itself needs no gradient (the first layer).
/// `f` must compute the same thing both times (dropout here is seeded).
pub(crate) fn checkpoint(
    x: &Tensor,
    params: &[Tensor],
    f: impl Fn(&Tensor) -> Result<Tensor> + Send + 'static,
) -> Result<Tensor> {
    if !is_grad_enabled() {
        return f(x);
    }
    let out = {
        let _off = no_grad();
        f(x)?
    };
    let mut inputs = vec![x];
    inputs.extend(params);
    let saved = x.detach();
    Ok(record(out, "checkpoint", &inputs, move |g, needs| {
        let input = if needs[0] { saved.into_param()? } else { saved };
        let y = {
            // Backward runs under no_grad: record this copy.
            let _on = set_grad_enabled(true);
            f(&input)?
        };
        y.backward_with(g.clone())?;
        let mut grads = vec![None; needs.len()];
        grads[0] = input.grad();
        Ok(grads)
    }))
}

/// Attaches a backward rule to `out` if grad mode is on and any input needs a gradient.
pub(crate) fn record(
    out: Tensor,
    name: &'static str,
    inputs: &[&Tensor],
    backward: impl FnOnce(&Tensor, &[bool]) -> Result<Vec<Option<Tensor>>> + Send + 'static,
) -> Tensor {
    if !is_grad_enabled() || !inputs.iter().any(|t| t.requires_grad()) {
        return out;
    }
    let grad_fn = GradFn {
        name,
        inputs: inputs.iter().map(|t| (*t).clone()).collect(),
        backward: Box::new(backward),
    };
    Tensor::from_parts(
        out.gpu(),
        out.0.buffer.clone(),
        out.shape(),
        out.dtype(),
        Some(Node::Op {
            grad_fn: Mutex::new(Some(grad_fn)),
        }),
    )
}

impl Tensor {
    /// Back-propagates from a one-element loss: dL/dL = 1.
    pub fn backward(&self) -> Result<()> {
        if self.numel() != 1 {
            shape_err!(
                "backward() needs a one-element loss, got shape {:?}; use backward_with",
                self.shape()
            );
        }
        let seed = Tensor::from_f32(self.gpu(), &[1.0], self.shape())?;
        self.backward_with(seed)
    }

    /// Back-propagates `grad` = dL/d(self) and accumulates into trainable leaves.
    pub fn backward_with(&self, grad: Tensor) -> Result<()> {
        if grad.shape() != self.shape() {
            shape_err!(
                "backward_with: gradient shape {:?} differs from tensor shape {:?}",
                grad.shape(),
                self.shape()
            );
        }
        let _no_grad = no_grad();
        if self.is_param() {
            return accumulate_into_param(self, grad);
        }
        let order = topological_order(self);
        let mut grads: HashMap<usize, Tensor> = HashMap::new();
        grads.insert(self.id(), grad);
        for t in order.iter().rev() {
            let Some(g) = grads.remove(&t.id()) else {
                continue;
            };
            let grad_fn = t
                .grad_fn()
                .and_then(|m| m.lock().unwrap().take())
                .ok_or_else(|| {
                    Error::InvalidArgument(
                        "backward through a graph that was already back-propagated; \
                         run the forward pass again"
                            .into(),
                    )
                })?;
            let needs: Vec<bool> = grad_fn.inputs.iter().map(Tensor::requires_grad).collect();
            let input_grads = (grad_fn.backward)(&g, &needs)?;
            for (input, ig) in grad_fn.inputs.iter().zip(input_grads) {
                let Some(ig) = ig else { continue };
                if ig.shape() != input.shape() {
                    return Err(Error::Shape(format!(
                        "internal: backward of {} gave a gradient of shape {:?} for an input of shape {:?}",
                        grad_fn.name,
                        ig.shape(),
                        input.shape()
                    )));
                }
                if input.is_param() {
                    accumulate_into_param(input, ig)?;
                } else if input.grad_fn().is_some() {
                    let total = match grads.remove(&input.id()) {
                        Some(prev) => binary(&prev, &ig, BinaryOp::Add, Broadcast::None)?,
                        None => ig,
                    };
                    grads.insert(input.id(), total);
                }
            }
        }
        Ok(())
    }
}

/// Adds `g` into a leaf's gradient buffer, allocating it on first use.
fn accumulate_into_param(param: &Tensor, g: Tensor) -> Result<()> {
    let slot = param.param_grad_slot().expect("caller checked is_param");
    let mut slot = slot.lock().unwrap();
    match slot.as_ref() {
        Some(acc) => add_assign(acc, &g, 1.0)?,
        // A gradient can share its buffer with another (e.g. both inputs of an
        // add); the slot is accumulated in place later, so it gets its own copy.
        None if g.shares_buffer() => *slot = Some(copy(&g)?),
        None => *slot = Some(g),
    }
    Ok(())
}

/// Op nodes reachable from `root`, each after all of its inputs.
fn topological_order(root: &Tensor) -> Vec<Tensor> {
    let mut order = Vec::new();
    let mut visited = HashSet::new();
    // Iterative post-order DFS: (tensor, children already pushed?)
    let mut stack = vec![(root.clone(), false)];
    while let Some((t, expanded)) = stack.pop() {
        if expanded {
            order.push(t);
            continue;
        }
        if !visited.insert(t.id()) {
            continue;
        }
        let Some(grad_fn) = t.grad_fn() else { continue };
        let inputs: Vec<Tensor> = match grad_fn.lock().unwrap().as_ref() {
            Some(f) => f.inputs.clone(),
            None => Vec::new(),
        };
        stack.push((t, true));
        for input in inputs {
            if input.grad_fn().is_some() && !visited.contains(&input.id()) {
                stack.push((input, false));
            }
        }
    }
    order
}

//! Reverse-mode autograd: a flat tape of recorded ops, run backwards.
//!
//! * Parameters live outside the tape; [`Tape::watch`] marks the tensors whose gradients are wanted.
//!   Ops record themselves only when one of their inputs is watched or was produced by a recorded op.
//! * A tape is built per step and dropped.
//! * Backward rules are written with the tape's own ops (see `rules.rs`). With
//!   `create_graph = true` the backward pass is itself recorded, so a gradient can be differentiated
//!   again: WGAN-GP's ∂/∂θ (‖∇ₓD(x̂)‖ − 1)² is a second `backward` on the same tape.
//! * Gradients of intermediate tensors are dropped once consumed unless [`Tape::retain_grad`] asked
//!   for them: per-example clipping reads each layer's output gradient δ that way.
mod composite;
mod ops;
mod rules;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use crate::error::{Error, Result};
use crate::tensor::{Tensor, TensorId};

pub use ops::Saved;

/// One recorded op: its output, its inputs (ids, in the order the rule returns gradients) and what
/// its backward rule needs.
struct Node {
    output: TensorId,
    inputs: Vec<TensorId>,
    saved: Saved,
}

#[derive(Default)]
struct TapeState {
    nodes: Vec<Node>,
    /// Tensors that gradients flow to: watched ones and outputs of recorded ops.
    tracked: HashSet<TensorId>,
    /// Tensors whose gradient is kept in the result even though they are intermediate.
    retained: HashSet<TensorId>,
    watched: HashSet<TensorId>,
    /// Off while a first-order backward runs, so that its ops are not recorded.
    recording: bool,
}

pub struct Tape {
    state: RefCell<TapeState>,
}

impl Default for Tape {
    fn default() -> Self {
        Self::new()
    }
}

/// Gradients from one backward pass, keyed by tensor id.
#[derive(Default, Debug)]
pub struct Gradients {
    grads: HashMap<TensorId, Tensor>,
}

impl Gradients {
    pub fn get(&self, t: &Tensor) -> Option<&Tensor> {
        self.grads.get(&t.id())
    }

    /// The gradient of `t`, or an error naming what is missing.
    pub fn of(&self, t: &Tensor) -> Result<&Tensor> {
        self.get(t).ok_or_else(|| Error::Autograd(format!("no gradient for {t:?}: it does not influence the differentiated value")))
    }

    pub fn remove(&mut self, t: &Tensor) -> Option<Tensor> {
        self.grads.remove(&t.id())
    }
}

impl Tape {
    pub fn new() -> Self {
        Tape { state: RefCell::new(TapeState { recording: true, ..Default::default() }) }
    }

    /// Marks `t` (a parameter or an input) as something to differentiate with respect to.
    pub fn watch(&self, t: &Tensor) {
        let mut s = self.state.borrow_mut();
        s.tracked.insert(t.id());
        s.watched.insert(t.id());
    }

    /// Keeps the gradient of the intermediate tensor `t` in the backward result.
    pub fn retain_grad(&self, t: &Tensor) {
        self.state.borrow_mut().retained.insert(t.id());
    }

    /// Whether new ops are recorded now: false inside a first-order backward pass, whose rules may
    /// then compute with fused, non-differentiable kernels.
    fn is_recording(&self) -> bool {
        self.state.borrow().recording
    }

    /// Whether gradients flow to `t`.
    pub fn is_tracked(&self, t: &Tensor) -> bool {
        self.state.borrow().tracked.contains(&t.id())
    }

    /// How many ops are recorded (forward and recorded backward passes).
    pub fn len(&self) -> usize {
        self.state.borrow().nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records `out = op(inputs)` if any input is tracked; returns `out` either way.
    fn record(&self, out: Tensor, inputs: &[&Tensor], saved: impl FnOnce() -> Saved) -> Tensor {
        let mut s = self.state.borrow_mut();
        if s.recording && inputs.iter().any(|t| s.tracked.contains(&t.id())) {
            s.tracked.insert(out.id());
            let node = Node { output: out.id(), inputs: inputs.iter().map(|t| t.id()).collect(), saved: saved() };
            s.nodes.push(node);
        }
        out
    }

    /// Gradients of the scalar `root` with respect to every watched tensor (and retained ones).
    pub fn backward(&self, root: &Tensor) -> Result<Gradients> {
        if root.numel() != 1 {
            return Err(Error::Autograd(format!("backward needs a scalar root, got shape {:?}; use backward_with a seed", root.shape())));
        }
        let seed = root.full_like(root.shape(), 1.0)?;
        self.backward_with(root, seed, false)
    }

    /// Like [`Tape::backward`], but records the backward pass so the returned gradients can be
    /// differentiated again by a later `backward` on this tape.
    pub fn backward_create_graph(&self, root: &Tensor) -> Result<Gradients> {
        let seed = root.full_like(root.shape(), 1.0)?;
        self.backward_with(root, seed, true)
    }

    /// Reverse pass from `root` seeded with `seed` (same shape as `root`).
    pub fn backward_with(&self, root: &Tensor, seed: Tensor, create_graph: bool) -> Result<Gradients> {
        if seed.shape() != root.shape() {
            return Err(Error::Autograd(format!("seed shape {:?} differs from root shape {:?}", seed.shape(), root.shape())));
        }
        if !self.is_tracked(root) {
            return Err(Error::Autograd("the root does not depend on any watched tensor".into()));
        }
        let _range = crate::profile::range("backward");
        let previous = std::mem::replace(&mut self.state.borrow_mut().recording, create_graph);
        let result = self.run_backward(root, seed);
        self.state.borrow_mut().recording = previous;
        result
    }

    /// Gradients of the scalar `root` with respect to `targets` only (first order): the reverse
    /// pass computes no gradient that does not lead to one of them. Per-example clipping asks for
    /// the layers' output gradients this way, without the weight gradients it would discard.
    pub fn backward_to(&self, root: &Tensor, targets: &[&Tensor]) -> Result<Gradients> {
        self.backward_to_with(root, targets, false)
    }

    /// Like [`Tape::backward_to`], but records the backward pass so the returned gradients can be
    /// differentiated again. WGAN-GP's penalty asks for ∇ₓD this way: a full recorded backward
    /// would also record every weight gradient of D, ops that the second backward never reads.
    pub fn backward_to_create_graph(&self, root: &Tensor, targets: &[&Tensor]) -> Result<Gradients> {
        self.backward_to_with(root, targets, true)
    }

    fn backward_to_with(&self, root: &Tensor, targets: &[&Tensor], create_graph: bool) -> Result<Gradients> {
        if root.numel() != 1 {
            return Err(Error::Autograd(format!("backward needs a scalar root, got shape {:?}", root.shape())));
        }
        if !self.is_tracked(root) {
            return Err(Error::Autograd("the root does not depend on any watched tensor".into()));
        }
        let _range = crate::profile::range("backward");
        let seed = root.full_like(root.shape(), 1.0)?;
        let wanted: HashSet<TensorId> = targets.iter().map(|t| t.id()).collect();
        let previous = std::mem::replace(&mut self.state.borrow_mut().recording, create_graph);
        let result = self.run_backward_for(root, seed, &wanted);
        self.state.borrow_mut().recording = previous;
        result.map(|mut g| {
            g.grads.retain(|id, _| wanted.contains(id));
            g
        })
    }

    fn run_backward(&self, root: &Tensor, seed: Tensor) -> Result<Gradients> {
        let wanted: HashSet<TensorId> = {
            let s = self.state.borrow();
            s.watched.union(&s.retained).copied().collect()
        };
        self.run_backward_for(root, seed, &wanted)
    }

    /// The tensors whose gradient leads to a `wanted` one: the wanted themselves and every output
    /// of a recorded op with such an input.
    fn leading_to(&self, wanted: &HashSet<TensorId>) -> HashSet<TensorId> {
        let s = self.state.borrow();
        let mut leads: HashSet<TensorId> = wanted.iter().filter(|id| s.tracked.contains(id)).copied().collect();
        for node in &s.nodes {
            if node.inputs.iter().any(|i| leads.contains(i)) {
                leads.insert(node.output);
            }
        }
        leads
    }

    fn run_backward_for(&self, root: &Tensor, seed: Tensor, wanted: &HashSet<TensorId>) -> Result<Gradients> {
        let leads = self.leading_to(wanted);
        let mut pending: HashMap<TensorId, Tensor> = HashMap::new();
        pending.insert(root.id(), seed);
        let mut kept: HashMap<TensorId, Tensor> = HashMap::new();
        let end = self.len();
        for index in (0..end).rev() {
            let (output, inputs) = {
                let s = self.state.borrow();
                (s.nodes[index].output, s.nodes[index].inputs.clone())
            };
            let Some(dy) = pending.remove(&output) else { continue };
            let needs: Vec<bool> = inputs.iter().map(|id| leads.contains(id)).collect();
            if !needs.contains(&true) {
                Self::keep_if_wanted(output, dy, &mut kept, wanted);
                continue;
            }
            let input_grads = {
                // The rule records new nodes (when creating a graph), so it must not hold a borrow.
                let saved = self.state.borrow().nodes[index].saved.clone();
                rules::backward(self, &saved, &dy, &needs)?
            };
            Self::keep_if_wanted(output, dy, &mut kept, wanted);
            for ((id, grad), needed) in inputs.into_iter().zip(input_grads).zip(needs) {
                let Some(grad) = grad.filter(|_| needed) else { continue };
                let merged = match pending.remove(&id) {
                    Some(acc) => self.add(&acc, &grad)?,
                    None => grad,
                };
                pending.insert(id, merged);
            }
        }
        // What is left pending reached the leaves: watched tensors (and retained ones).
        for (id, g) in pending {
            Self::keep_if_wanted(id, g, &mut kept, wanted);
        }
        Ok(Gradients { grads: kept })
    }

    fn keep_if_wanted(id: TensorId, grad: Tensor, kept: &mut HashMap<TensorId, Tensor>, wanted: &HashSet<TensorId>) {
        if wanted.contains(&id) {
            kept.insert(id, grad);
        }
    }

    /// Runs `f` without recording (for values that need no gradient, like spectral norm's u, v).
    pub fn no_grad<T>(&self, f: impl FnOnce() -> T) -> T {
        let previous = std::mem::replace(&mut self.state.borrow_mut().recording, false);
        let out = f();
        self.state.borrow_mut().recording = previous;
        out
    }
}

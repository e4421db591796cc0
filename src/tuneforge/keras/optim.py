"""Keras' Adam and AdamW update, in torch's fused kernel, on Keras' own slot variables.

Keras' stock torch step makes about a dozen foreach passes over the weights (moments, squares, square roots,
divisions, the update); torch's fused AdamW does it in one. The formulas differ in one place: Keras adds epsilon to
sqrt(v) before the bias correction of v, torch after it:

    Keras:  p -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)
    torch:  p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps')

which are equal with eps' = eps / sqrt(1 - b2^t), so each step passes that epsilon. Keras' decoupled weight decay
(p -= p * wd * lr, before the update) is the fused AdamW's. Clipping follows Keras: clipnorm per tensor,
global_clipnorm over all (applied through the kernel's grad_scale: no pass of its own), clipvalue elementwise.

The moments are Keras' optimizer variables themselves, so `optimizer.variables`, `.keras` files and the stock step
stay interchangeable with this one. What this step does not implement (other optimizers, gradient accumulation,
EMA, loss scaling, variable constraints, subclasses) goes to Keras' own `optimizer.apply`: slower, never different.
"""
from __future__ import annotations

import math

import torch

from ..errors import InputError


def fused_reason(optimizer) -> str | None:
    """Why Keras' optimizer cannot take the fused step (None: it can)."""
    from keras.src.backend.torch.optimizers import torch_adam, torch_adamw
    if type(optimizer) not in (torch_adam.Adam, torch_adamw.AdamW):
        return f"{type(optimizer).__name__} is not Keras' Adam or AdamW"
    for name in ("gradient_accumulation_steps", "use_ema", "loss_scale_factor"):
        if getattr(optimizer, name, None):
            return f"{name} is set"
    return None


class KerasAdamStep:
    """Applies one step of Keras' Adam/AdamW to (grads, variables), like `optimizer.apply`. `rows`: the variable of a
    word embedding whose gradient is sparse (see EmbeddingRows), or None."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.rows: EmbeddingRows | None = None

    def sparse_rows_exact(self, variable) -> bool:
        """Whether updating only the ever-touched rows of `variable` is exactly Keras' dense step: an untouched row
        has zero moments and zero gradient, so its update is zero unless something else moves it."""
        opt = self.optimizer
        decays = opt.weight_decay and opt._use_weight_decay(variable)
        return not (decays or opt.amsgrad or opt.clipnorm or opt.clipvalue or variable.constraint is not None)

    @torch.no_grad()
    def apply(self, grads: list, variables: list) -> None:
        opt = self.optimizer
        if not opt.built:
            import keras
            with keras.name_scope(opt.name, caller=opt):
                opt.build(variables)
            opt.built = True
        opt._check_variables_are_known(variables)
        pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
        if not pairs:
            raise InputError("No gradients provided for any variable.")
        if any(v.constraint is not None for _, v in pairs):  # Keras applies constraints after the update
            opt.apply([g for g, _ in pairs], [v for _, v in pairs])
            return
        grads, variables = [g.coalesce() if g.is_sparse else g for g, _ in pairs], [v for _, v in pairs]
        grad_scale = self._clip(grads)
        lr = float(opt._get_current_learning_rate())  # at `iterations`, before the increment, as Keras reads it
        step = int(opt.iterations) + 1
        beta1, beta2 = _value(opt.beta_1), _value(opt.beta_2)
        eps = _value(opt.epsilon) / math.sqrt(1 - beta2 ** step)
        step_tensor = torch.tensor(float(step))  # the kernel reads it; one for all tensors
        groups: dict[tuple, list] = {}
        for g, v in zip(grads, variables):
            if g.is_sparse:
                if self.rows is None or self.rows.variable is not v:
                    raise RuntimeError(f"a sparse gradient for {v.path}, which is no EmbeddingRows variable")
                if self.rows.step(g, opt, lr, beta1, beta2, eps, grad_scale, step_tensor):
                    continue
                g = g.to_dense()  # the touched rows are past a quarter: the dense step is cheaper from now on
            decay = float(opt.weight_decay) if opt.weight_decay and opt._use_weight_decay(v) else 0.0
            groups.setdefault((g.device, g.dtype, decay), []).append((g, v))
        for (device, _, decay), members in groups.items():
            index = [opt._get_variable_index(v) for _, v in members]
            params = [v.value for _, v in members]
            hats = [opt._velocity_hats[i].value for i in index] if opt.amsgrad else []
            torch._fused_adamw_(params, [g for g, _ in members], [opt._momentums[i].value for i in index],
                                [opt._velocities[i].value for i in index], hats, [step_tensor.to(device)] * len(params),
                                lr=lr, beta1=beta1, beta2=beta2, weight_decay=decay, eps=eps, amsgrad=bool(opt.amsgrad),
                                maximize=False, grad_scale=_on(grad_scale, device), found_inf=None)
        opt._iterations.assign_add(1)

    def _clip(self, grads: list) -> torch.Tensor | None:
        """Keras' clipping, in place on the gradients; global_clipnorm comes back as the kernel's grad_scale (the
        gradients are divided by it)."""
        opt = self.optimizer
        values = [g.values() if g.is_sparse else g for g in grads]
        if opt.clipnorm and opt.clipnorm > 0:
            clip = float(opt.clipnorm)
            norms = torch._foreach_norm(values)  # g * clip / max(|g|, clip), per tensor
            torch._foreach_mul_(values, [clip / n.clamp(min=clip) for n in norms])
        elif opt.global_clipnorm and opt.global_clipnorm > 0:
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(values)))
            return (norm / float(opt.global_clipnorm)).clamp(min=1.0)  # 1 / (clip * min(1/|g|, 1/clip))
        elif opt.clipvalue and opt.clipvalue > 0:
            torch._foreach_clamp_min_(values, -float(opt.clipvalue))
            torch._foreach_clamp_max_(values, float(opt.clipvalue))
        return None


class EmbeddingRows:
    """Keras' Adam on just the rows of a word embedding that have ever had a gradient, from its sparse gradient.

    The training/optim.py EmbeddingRows does this for torch's AdamW, with the moments of the touched rows packed
    in its own buffers; here the moments stay in Keras' dense slot variables (so that they are Keras' state at every
    moment, for callbacks that save it mid-fit), and each step gathers the touched rows, runs the fused kernel on
    them and scatters them back. Once a quarter of the rows have been touched the dense step is cheaper, and takes
    over (step() returns False)."""

    def __init__(self, variable, momentum, velocity):
        self.variable = variable
        # Rows touched before (an earlier fit, a loaded optimizer) are those with nonzero moments.
        self.touched = momentum.value.ne(0).any(1) | velocity.value.ne(0).any(1)  # (V,)
        self.dense = self.past_quarter()

    def past_quarter(self) -> bool:
        return int(self.touched.sum()) > len(self.touched) // 4

    def step(self, grad, opt, lr, beta1, beta2, eps, grad_scale, step_tensor) -> bool:
        ids, values = grad.indices()[0], grad.values()  # coalesced: sorted, unique
        self.touched[ids] = True
        if self.dense or self.past_quarter():
            self.dense = True
            return False
        rows = self.touched.nonzero().squeeze(1)  # (R,) sorted
        i = opt._get_variable_index(self.variable)
        weight, m, v = self.variable.value, opt._momentums[i].value, opt._velocities[i].value
        g = values.new_zeros(len(rows), values.shape[1])
        g[torch.searchsorted(rows, ids)] = values
        p_rows, m_rows, v_rows = weight[rows], m[rows], v[rows]  # (R, H) copies
        torch._fused_adamw_([p_rows], [g], [m_rows], [v_rows], [], [step_tensor], lr=lr, beta1=beta1, beta2=beta2,
                            weight_decay=0.0, eps=eps, amsgrad=False, maximize=False, grad_scale=grad_scale,
                            found_inf=None)
        weight.index_copy_(0, rows, p_rows)
        m.index_copy_(0, rows, m_rows)
        v.index_copy_(0, rows, v_rows)
        return True


def _value(x) -> float:
    return float(x() if callable(x) else x)


def _on(t: torch.Tensor | None, device) -> torch.Tensor | None:
    return None if t is None else t.to(device=device, dtype=torch.float32)

"""AdamW stepped inside the backward pass, one weight at a time, for full-weight runs.

A full-weight step normally holds a gradient for every weight until the
optimizer runs: 513 MiB for the bundled model, the same for the
context-frozen and the ordinary loss, and the largest part of the
context-frozen step's peak. Here each weight gets its own
``torch.optim.AdamW``; a post-accumulate-grad hook (PyTorch >= 2.1) steps it
as soon as that weight's gradient is complete and frees the gradient, so at
most the gradients of the weights still being reached exist at once (the
technique of PyTorch's tutorial "How to save memory by fusing the optimizer
step into the backward pass"). The arithmetic is AdamW's own, weight by weight.

What it rules out, each refused with a message by :func:`check_step_in_backward`:
gradient clipping over all weights (no global norm exists at any moment),
gradient accumulation (every backward is a step), several processes (DDP
reduces gradients after the hooks have used them) and LoRA (its gradients
are small already).

The transformers ``Trainer`` still drives the run: it is handed
:class:`StepInBackward`, whose ``step`` does nothing and whose parameter
groups are the per-weight optimizers' own dicts, so the learning-rate
scheduler sets the rate that the hooks use.
"""

from __future__ import annotations

import os
from typing import Any, Iterable

import torch

from mindloop.trainer.errors import InvalidDataset

__all__ = ["StepInBackward", "check_step_in_backward"]


def check_step_in_backward(*, method: str, grad_accum: int, optimizer: str) -> None:
    """Refuse the settings that stepping inside backward cannot honour."""
    if method != "full":
        raise InvalidDataset("--step-in-backward is for --method full: LoRA's gradients are small already")
    if grad_accum != 1:
        raise InvalidDataset("--step-in-backward steps every weight in each backward pass: grad_accum must be 1")
    if optimizer != "adamw":
        raise InvalidDataset("--step-in-backward runs AdamW; it cannot be combined with --optimizer " + optimizer)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise InvalidDataset("--step-in-backward needs a single process: under DDP the hooks would step on "
                             "gradients that are not yet reduced across processes")


class StepInBackward(torch.optim.Optimizer):
    """The optimizer the ``Trainer`` sees; the real steps run in hooks during ``backward()``.

    ``params`` are the trainable weights; ``lr``, ``betas``, ``eps`` and
    ``weight_decay`` are AdamW's. :meth:`remove` takes the hooks off again.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], *, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        weights = [p for p in dict.fromkeys(params) if p.requires_grad]  # tied weights once
        if not weights:
            raise InvalidDataset("--step-in-backward found no trainable weights")
        # torch's fused kernel (CPU and CUDA) updates in place: no temporaries the size of the weight
        fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in weights)
        self.per_weight = {p: torch.optim.AdamW([p], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                                fused=fused) for p in weights}
        super().__init__(weights, {"lr": lr})
        # the scheduler writes "lr" into these dicts; they are the per-weight optimizers' own
        self.param_groups = [g for opt in self.per_weight.values() for g in opt.param_groups]
        self._hooks = [p.register_post_accumulate_grad_hook(self._step_one) for p in weights]

    def _step_one(self, p: torch.Tensor) -> None:
        opt = self.per_weight[p]
        opt.step()
        opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def step(self, closure=None) -> Any:  # every weight has stepped already, inside backward()
        return closure() if closure is not None else None

    def zero_grad(self, set_to_none: bool = True) -> None:  # the hooks freed every gradient
        for opt in self.per_weight.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"per_weight": [opt.state_dict() for opt in self.per_weight.values()]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        states = state_dict["per_weight"]
        if len(states) != len(self.per_weight):
            raise ValueError(f"optimizer state for {len(states)} weights, this model has {len(self.per_weight)}")
        for opt, state in zip(self.per_weight.values(), states):
            opt.load_state_dict(state)

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

"""AdamW stepped inside backward (trainer.optim): the same update as AdamW, with no gradient left behind."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")

from mindloop.trainer.errors import InvalidDataset  # noqa: E402
from mindloop.trainer.optim import StepInBackward, check_step_in_backward  # noqa: E402


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    emb = torch.nn.Embedding(50, 16)
    head = torch.nn.Linear(16, 50, bias=False)
    head.weight = emb.weight  # tied, as in the bundled model: one weight, two uses
    return torch.nn.Sequential(emb, torch.nn.Linear(16, 16), torch.nn.Tanh(), head)


def _loss(model, step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(step)
    ids = torch.randint(0, 50, (4, 7), generator=g)
    return torch.nn.functional.cross_entropy(model(ids).flatten(0, 1), ids.roll(1, dims=1).flatten())


def test_the_steps_inside_backward_are_adamw_s_own():
    ref = _model()
    ours = copy.deepcopy(ref)
    adamw = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.01)
    sib = StepInBackward(ours.parameters(), lr=1e-2, weight_decay=0.01)
    for step in range(3):
        _loss(ref, step).backward()
        adamw.step()
        adamw.zero_grad(set_to_none=True)
        _loss(ours, step).backward()  # every weight steps here
        assert all(p.grad is None for p in ours.parameters())  # and its gradient is gone
        sib.step()  # what the Trainer calls afterwards: nothing left to do
    for a, b in zip(ref.parameters(), ours.parameters()):
        assert torch.allclose(a, b, atol=1e-6), (a - b).abs().max()
    assert not torch.allclose(ref[1].weight, _model()[1].weight)  # the weights did move


def test_the_scheduler_sets_the_rate_the_hooks_use():
    model = _model()
    sib = StepInBackward(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(sib, lambda step: 0.0)  # rate 0 from the start
    assert all(g["lr"] == 0.0 for opt in sib.per_weight.values() for g in opt.param_groups)
    before = [p.detach().clone() for p in model.parameters()]
    _loss(model, 0).backward()
    sib.step()
    sched.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_removed_hooks_leave_gradients_alone():
    model = _model()
    sib = StepInBackward(model.parameters(), lr=1e-2)
    sib.remove()
    _loss(model, 0).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_its_state_round_trips():
    model = _model()
    sib = StepInBackward(model.parameters(), lr=1e-2)
    _loss(model, 0).backward()
    state = sib.state_dict()
    other = StepInBackward(copy.deepcopy(model).parameters(), lr=1e-2)
    other.load_state_dict(state)
    assert [o.state_dict()["state"][0]["step"] for o in other.per_weight.values()] == [1.0] * 3
    with pytest.raises(ValueError, match="3 weights"):
        StepInBackward(torch.nn.Linear(2, 2, bias=False).parameters(), lr=1e-2).load_state_dict(state)


@pytest.mark.parametrize("kw, message", [
    ({"method": "lora"}, "--method full"),
    ({"grad_accum": 2}, "grad_accum must be 1"),
    ({"optimizer": "apollo"}, "--optimizer apollo"),
])
def test_settings_it_cannot_honour_are_refused(kw, message):
    with pytest.raises(InvalidDataset, match=message):
        check_step_in_backward(**{"method": "full", "grad_accum": 1, "optimizer": "adamw", **kw})


def test_several_processes_are_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(InvalidDataset, match="single process"):
        check_step_in_backward(method="full", grad_accum=1, optimizer="adamw")

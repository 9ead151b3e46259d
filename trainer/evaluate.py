"""Evaluation shared by the trainer, the gate and the observer: probes, perplexity, steering, attention.

A probe is ``{"prompt": [messages], "desired": text, "undesired": text, "kind":
"target"|"pushback"|"capability"}``. Its margin is the mean per-token
log-probability of ``desired`` minus that of ``undesired`` given ``prompt``
(:func:`mindloop.trainer.scoring.response_logprob`). Per kind, the report gives the
mean margin and the share of probes with a positive margin (the win rate).

Built-in probe sets ship in ``trainer/probes/`` (target: do what was
clearly asked instead of offering alternatives; pushback: refuse a wrong or
unsafe direction; capability: arithmetic, short code, facts). Users add
their own files. Also measured:

- perplexity on a text that ships with every Python (the prose of
  ``pydoc_data.topics``), or on any user text;
- a steering-direction readout at a middle layer: the mean difference of
  hidden states between desired and undesired responses of the target
  probes, how consistent the per-probe differences are (mean cosine with the
  mean), and where the probes' prompts sit along it (a run reports how far
  they moved);
- attention mass from the response onto the tokens of the user's last
  message (averaged over layers and heads).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Sequence

from mindloop.trainer.errors import InvalidDataset
from mindloop.trainer.scoring import response_logprobs

__all__ = ["KINDS", "Probe", "builtin_probes", "default_text", "evaluate", "format_comparison", "perplexity",
           "probes_digest",
           "probes_from_examples", "read_probes", "steering_direction"]

KINDS = ("target", "pushback", "capability")


@dataclass
class Probe:
    prompt: list[dict[str, str]]
    desired: str
    undesired: str
    kind: str
    id: str = ""
    heldout: bool = False  # made from a pattern's held-out examples (reported apart as well)


def _probe(data: Any, where: str) -> Probe:
    if not isinstance(data, dict):
        raise InvalidDataset(f"{where}: expected a JSON object")
    prompt = data.get("prompt")
    if not (isinstance(prompt, list) and prompt and all(
            isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
            and isinstance(m.get("content"), str) for m in prompt)):
        raise InvalidDataset(f"{where}: 'prompt' must be a non-empty list of {{'role', 'content'}} messages")
    for key in ("desired", "undesired"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise InvalidDataset(f"{where}: {key!r} must be non-empty text")
    kind = data.get("kind")
    if kind not in KINDS:
        raise InvalidDataset(f"{where}: 'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
    return Probe(prompt=[{"role": m["role"], "content": m["content"]} for m in prompt], desired=data["desired"],
                 undesired=data["undesired"], kind=kind, id=str(data.get("id") or ""))


def read_probes(path: str | Path, lines: Iterable[str] | None = None) -> list[Probe]:
    """Probes from a JSONL file; a bad line raises :class:`InvalidDataset` naming it."""
    if lines is None:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise InvalidDataset(f"{path}: no such file") from None
        except UnicodeDecodeError:
            raise InvalidDataset(f"{path}: not valid UTF-8") from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            raise InvalidDataset(f"{path}: line {n}: not JSON ({e.msg})") from None
        out.append(_probe(data, f"{path}: line {n}"))
    if not out:
        raise InvalidDataset(f"{path}: no probes")
    return out


def builtin_probes(kinds: Sequence[str] = KINDS) -> list[Probe]:
    """The probe sets shipped in ``trainer/probes/``."""
    folder = Path(str(resources.files("mindloop.trainer") / "probes"))
    out: list[Probe] = []
    for kind in kinds:
        out += read_probes(folder / f"{kind}.jsonl")
    return out


def probes_from_examples(examples: Sequence) -> list[Probe]:
    """Held-out examples with a rejected reply as probes: accept examples are ``target``, push-backs ``pushback``."""
    out = []
    for e in examples:
        if e.rejected and e.example_kind in ("accept", "pushback"):
            out.append(Probe(prompt=e.prompt, desired=e.completion, undesired=e.rejected,
                             kind="target" if e.example_kind == "accept" else "pushback", id=e.id, heldout=True))
    return out


def default_text(max_chars: int = 12_000) -> str:
    """English prose that ships with every Python: the help topics of ``pydoc_data.topics``."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k] for k in sorted(topics))
    return text[:max_chars]


def perplexity(model, tokenizer, text: str, *, max_tokens: int = 2048, window: int = 512) -> float:
    """exp(mean next-token loss) over the first ``max_tokens`` tokens of ``text``, in ``window``-token chunks."""
    import torch

    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][:, :max_tokens]
    if ids.shape[1] < 2:
        raise InvalidDataset("the perplexity text is shorter than two tokens")
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, ids.shape[1] - 1, window):
            chunk = ids[:, start: start + window + 1].to(device)
            if chunk.shape[1] < 2:
                break
            logits = model(input_ids=chunk[:, :-1]).logits.float()
            loss = torch.nn.functional.cross_entropy(logits[0], chunk[0, 1:], reduction="sum")
            total += float(loss)
            count += chunk.shape[1] - 1
    return math.exp(total / count)


def _hiddens(model, tokenizer, items: Sequence[tuple[Sequence[dict[str, str]], str]], layer: int, *,
             batch_size: int = 8):
    """For each ``(messages, response)``: the mean hidden state of the response tokens and the last prompt
    token's hidden state at ``layer`` (two [n, hidden] tensors), in left-padded batches."""
    import torch

    from mindloop.trainer.scoring import split_ids, left_padded

    split = [split_ids(tokenizer, m, r) for m, r in items]
    device = next(model.parameters()).device
    means: list = [None] * len(items)
    lasts: list = [None] * len(items)
    order = sorted(range(len(split)), key=lambda i: len(split[i][0]))
    with torch.no_grad():
        for b in range(0, len(order), batch_size):
            idx = order[b: b + batch_size]
            ids, mask, pos = left_padded(tokenizer, [split[i][0] for i in idx], device)
            hs = model(input_ids=ids, attention_mask=mask, position_ids=pos, output_hidden_states=True,
                       logits_to_keep=1).hidden_states[layer].float()
            width = ids.shape[1]
            for j, i in enumerate(idx):
                full, n = split[i]
                at = width - len(full) + n  # the first response token of row j
                means[i] = hs[j, at:].mean(0)
                lasts[i] = hs[j, at - 1]
    return torch.stack(means), torch.stack(lasts)


def _pairs(model, tokenizer, probes: Sequence[Probe], layer: int):
    """Desired and undesired response means, and the prompts' last hidden states, for ``probes``."""
    n = len(probes)
    means, lasts = _hiddens(model, tokenizer, [(p.prompt, p.desired) for p in probes]
                            + [(p.prompt, p.undesired) for p in probes], layer)
    return means[:n], means[n:], lasts[:n]


def middle_layer(model) -> int:
    return max(1, int(model.config.num_hidden_layers) // 2)


def _direction(diffs, layer: int) -> dict[str, Any]:
    import torch

    direction = diffs.mean(0)
    consistency = float(torch.nn.functional.cosine_similarity(diffs, direction[None], dim=1).mean())
    return {"layer": layer, "direction": direction.tolist(), "consistency": round(consistency, 4), "n": len(diffs)}


def steering_direction(model, tokenizer, probes: Sequence[Probe], layer: int | None = None) -> dict[str, Any]:
    """The mean desired-minus-undesired hidden-state difference over ``probes`` and its consistency."""
    layer = layer if layer is not None else middle_layer(model)
    good, bad, _ = _pairs(model, tokenizer, probes, layer)
    return _direction(good - bad, layer)


def _project(lasts, direction: Sequence[float]) -> float:
    import torch

    u = torch.tensor(direction)
    u = u / (u.norm() + 1e-12)
    return float((lasts @ u).mean())


def projection(model, tokenizer, probes: Sequence[Probe], direction: Sequence[float], layer: int) -> float:
    """Mean position of the probes' prompts (last prompt token) along the unit ``direction``."""
    _, lasts = _hiddens(model, tokenizer, [(p.prompt, p.desired) for p in probes], layer)
    return _project(lasts, direction)


def attention_mass(model, tokenizer, probes: Sequence[Probe]) -> float:
    """Mean share of attention from the desired response's tokens onto the user's last message.

    The message's tokens are found through the tokenizer's character offsets
    in the rendered prompt; attention weights need eager attention, which is
    switched on for the measurement and restored after.
    """
    import torch

    previous = getattr(model.config, "_attn_implementation", None)
    switch = hasattr(model, "set_attn_implementation") and previous != "eager"
    if switch:
        model.set_attn_implementation("eager")
    device = next(model.parameters()).device
    shares = []
    try:
        for p in probes:
            prompt = tokenizer.apply_chat_template(p.prompt, add_generation_prompt=True, tokenize=False)
            user = next(m["content"] for m in reversed(p.prompt) if m["role"] == "user")
            lo = prompt.rfind(user)
            hi = lo + len(user)
            enc = tokenizer(prompt + p.desired, add_special_tokens=False, return_offsets_mapping=True)
            n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
            span = [i for i, (a, b) in enumerate(enc["offset_mapping"][:n_prompt]) if b > lo and a < hi]
            if lo < 0 or not span or n_prompt >= len(enc["input_ids"]):
                continue
            ids = torch.tensor([enc["input_ids"]], device=device)
            with torch.no_grad():
                att = model(input_ids=ids, output_attentions=True).attentions  # layers x [1, heads, q, k]
            a = torch.stack([x[0].float() for x in att])[:, :, n_prompt:, :]  # [layers, heads, response, k]
            shares.append(float(a[..., span[0]: span[-1] + 1].sum(-1).mean()))
    finally:
        if switch:
            model.set_attn_implementation(previous)
    return sum(shares) / len(shares) if shares else float("nan")


def _stats(margins: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    return {k: {"mean_margin": round(sum(v) / len(v), 4), "win_rate": round(sum(m > 0 for m in v) / len(v), 4),
                "n": len(v)} for k, v in sorted(margins.items())}


def probes_digest(probes: Sequence[Probe], text: str | None = None) -> str:
    """A fingerprint of a probe set (and the perplexity text): two reports with the same one are comparable."""
    h = hashlib.sha256(json.dumps([asdict(p) for p in probes], sort_keys=True, ensure_ascii=False).encode())
    h.update((text or "").encode())
    return h.hexdigest()[:16]


def evaluate(model, tokenizer, probes: Sequence[Probe], *, text: str | None = None, checkpoint: str | None = None,
             direction: dict[str, Any] | None = None, attention: bool = True) -> dict[str, Any]:
    """The report: per kind mean margin / win rate / n, perplexity, steering readout, attention mass.

    ``direction`` (from :func:`steering_direction` on the model before training) is the fixed axis the
    target probes' prompts are projected on; without it the direction is computed here.
    """

    was_training = model.training
    model.eval()
    try:
        by_kind: dict[str, list[float]] = {}
        scores = response_logprobs(model, tokenizer, [(p.prompt, p.desired) for p in probes]
                                   + [(p.prompt, p.undesired) for p in probes])
        held: dict[str, list[float]] = {}
        for p, (good, _), (bad, _) in zip(probes, scores[:len(probes)], scores[len(probes):]):
            by_kind.setdefault(p.kind, []).append(good - bad)
            if p.heldout:
                held.setdefault(p.kind, []).append(good - bad)
        report: dict[str, Any] = {"kinds": _stats(by_kind), "perplexity": round(perplexity(model, tokenizer,
                                                                                  text or default_text()), 4),
                                  "checkpoint": checkpoint, "probes": probes_digest(probes, text)}
        if held:  # the pattern's own held-out examples: what the gate's target check reads
            report["heldout"] = _stats(held)
        targets = [p for p in probes if p.kind == "target"]
        if targets:
            layer = direction["layer"] if direction else middle_layer(model)
            good, bad, lasts = _pairs(model, tokenizer, targets, layer)  # one pass per response for all three
            here = _direction(good - bad, layer)
            d = direction or here
            report["steering"] = {"layer": layer, "consistency": here["consistency"],
                                  "projection": round(_project(lasts, d["direction"]), 4)}
            if attention:
                report["attention_mass"] = round(attention_mass(model, tokenizer, targets), 4)
        return report
    finally:
        model.train(was_training)


def format_comparison(before: dict | None, after: dict | None) -> str:
    """A before/after table of two :func:`evaluate` reports (either may be None)."""
    if before is None and after is None:
        return "(not evaluated)"
    rows = [("metric", "before", "after")]
    kinds = sorted(set((before or {}).get("kinds", {})) | set((after or {}).get("kinds", {})))
    for k in kinds:
        for m, label in (("mean_margin", "mean margin"), ("win_rate", "win rate")):
            b = (before or {}).get("kinds", {}).get(k, {}).get(m)
            a = (after or {}).get("kinds", {}).get(k, {}).get(m)
            spec = "+.3f" if m == "mean_margin" else ".3f"
            rows.append((f"{k} {label}", "-" if b is None else format(b, spec), "-" if a is None else format(a, spec)))
    for k in sorted(set((before or {}).get("heldout", {})) | set((after or {}).get("heldout", {}))):
        b = (before or {}).get("heldout", {}).get(k, {}).get("mean_margin")
        a = (after or {}).get("heldout", {}).get(k, {}).get("mean_margin")
        rows.append((f"held-out {k} mean margin", "-" if b is None else f"{b:+.3f}", "-" if a is None else f"{a:+.3f}"))
    for key, label in (("perplexity", "perplexity"), ("attention_mass", "attention on instruction")):
        b, a = (before or {}).get(key), (after or {}).get(key)
        rows.append((label, "-" if b is None else f"{b:.3f}", "-" if a is None else f"{a:.3f}"))
    b, a = (before or {}).get("steering", {}), (after or {}).get("steering", {})
    if b or a:
        rows.append((f"steering projection (layer {(b or a).get('layer')})",
                     "-" if not b else f"{b['projection']:+.3f}", "-" if not a else f"{a['projection']:+.3f}"))
        rows.append(("steering consistency", "-" if not b else f"{b['consistency']:.3f}",
                     "-" if not a else f"{a['consistency']:.3f}"))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"  {r[0]:<{width}}  {r[1]:>9}  {r[2]:>9}" for r in rows)


def probe_json(p: Probe) -> dict[str, Any]:
    return asdict(p)

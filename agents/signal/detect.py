"""The correction detector: rules + a classifier over the chat model's reading and sentence embeddings (+ a judge).

A :class:`Pair` is an assistant response, the user turn that follows it and
the conversation before. :class:`Detector` scores it:

1. :func:`mindloop.agents.signal.rules.apply_rules`: phrase and structure cues (and the
   phrases that matched, which become the flag's evidence);
2. a logistic regression over the **reader**'s features (:mod:`mindloop.agents.signal.reader`:
   the bundled SmolLM2 reads the conversation, the reply and the follow-up;
   the follow-up's mean hidden state at a middle layer), the rule features,
   and features from sentence embeddings (the bundled MiniLM): the
   follow-up's closest similarity to each group of :data:`ANCHORS`
   (sentences that stand for "that's wrong", "not what I asked", "thanks",
   "a new request", ...) and its cosine with the reply and the request.
   Without a reader (``signal.reader = "off"``, or to save the model's
   memory) the follow-up's tf-idf word n-grams take the reader's place, at a
   clear cost in accuracy (docs/benchmarks.md). A second logistic regression
   over the same features, trained on the seed's corrections, names the
   flag type. Both are trained on the labelled seed set shipped in
   ``agents/signal/data/seed.jsonl``. The threshold is the lowest whose
   cross-validated precision on the training split reaches 0.92 (false flags
   poison training, so precision comes first);
3. optionally an LLM judge (:mod:`mindloop.agents.signal.judge`), averaged in as a third opinion.

Weights for MiniLM ship in ``agents/signal/data/detector-reader-minilm.npz`` (with the
bundled reader) and ``agents/signal/data/detector-minilm.npz`` (without), rebuilt by
``mindloop detect --train``; for any other embedder or reader the detector
trains itself from the seed set on first use (seconds without a reader, a few
minutes with one on a CPU).

    >>> from mindloop.graph import HashingEmbedder
    >>> d = Detector.load(HashingEmbedder())
    >>> hit = d.detect(Pair(context=[{"role": "user", "content": "Add an index on orders(customer_id)."}],
    ...                     response="You could also partition the table instead.",
    ...                     followup="I said add the index. Don't suggest alternatives."))
    >>> hit.is_correction
    True
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from mindloop.agents.signal.rules import FAMILIES, RULES_SHA256, apply_rules
from mindloop.graph import Embedder, InvalidRecord
from mindloop.graph.records import FlagType

__all__ = ["Detection", "Detector", "Pair", "evaluate", "read_pairs", "seed_path", "seed_pairs", "train"]

log = logging.getLogger(__name__)

FEATURE_VERSION = 3
SHIPPED_EMBEDDER = "all-MiniLM-L6-v2"
TARGET_PRECISION = 0.92  # the threshold is the lowest whose cross-validated precision reaches this


def _data(name: str) -> Path:
    return Path(str(resources.files("mindloop.agents.signal") / "data" / name))


def seed_path() -> Path:
    """The labelled seed set shipped with the package."""
    return _data("seed.jsonl")


@dataclass
class Pair:
    """An assistant response, the user's follow-up, and the conversation before the response."""

    context: list[dict[str, str]]
    response: str
    followup: str
    label: bool | None = None
    type: str | None = None
    id: str | None = None
    split: str | None = None

    @property
    def request(self) -> str:
        """The last user message before the response ('' when there is none)."""
        for m in reversed(self.context):
            if m.get("role") == "user":
                return m.get("content", "")
        return ""


def _check_messages(value: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(value, list):
        raise InvalidRecord(f"{where}: 'context' must be a list of messages, got {type(value).__name__}")
    for i, m in enumerate(value):
        if not (isinstance(m, dict) and m.get("role") in ("user", "assistant", "system")
                and isinstance(m.get("content"), str)):
            raise InvalidRecord(f"{where}: context[{i}] must be {{'role': 'user'|'assistant'|'system', "
                                f"'content': str}}")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def pair_from_json(data: Any, where: str, *, need_label: bool) -> Pair:
    """A :class:`Pair` from one line's object; the error names ``where`` and the bad field."""
    if not isinstance(data, dict):
        raise InvalidRecord(f"{where}: expected a JSON object, got {type(data).__name__}")
    for key in ("response", "followup"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise InvalidRecord(f"{where}: {key!r} must be a non-empty string")
    label = data.get("label")
    if need_label and not isinstance(label, bool):
        raise InvalidRecord(f"{where}: 'label' must be true or false, got {label!r}")
    return Pair(context=_check_messages(data.get("context", []), where), response=data["response"],
                followup=data["followup"], label=label, type=data.get("type"), id=data.get("id"),
                split=data.get("split"))


def _json_problem(e: Exception) -> str:
    return "nested too deeply" if isinstance(e, RecursionError) else str(e).split(":")[0]


def read_pairs(path: str | Path, *, need_label: bool = True, skip_bad: bool = False,
               lines: Iterable[str] | None = None) -> tuple[list[Pair], list[str]]:
    """Read a labelled JSONL file. Returns the pairs and the problems found, each naming its line.

    With ``skip_bad`` the bad lines are reported and skipped; otherwise any bad
    line rejects the whole file with :class:`graph.InvalidRecord`.
    """
    if lines is None:
        raw = Path(path).read_bytes()
        try:
            lines = raw.decode("utf-8").split("\n")  # JSONL lines end at \n only (strings may hold U+2028)
        except UnicodeDecodeError as e:
            line = 1 + raw[: e.start].count(b"\n")
            raise InvalidRecord(f"{path}: line {line}: not valid UTF-8") from None
    pairs: list[Pair] = []
    problems: list[str] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}: line {n}"
        try:
            try:
                data = json.loads(line)
            except json.JSONDecodeError as e:
                raise InvalidRecord(f"{where}: not JSON ({e.msg} at column {e.colno})") from None
            except (ValueError, RecursionError) as e:  # an integer of over 4300 digits; nesting too deep
                raise InvalidRecord(f"{where}: not JSON we can read ({_json_problem(e)})") from None
            pairs.append(pair_from_json(data, where, need_label=need_label))
        except InvalidRecord as e:
            problems.append(str(e))
    if problems and not skip_bad:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise InvalidRecord("; ".join(problems[:5]) + more + " — nothing was evaluated; --skip-bad skips bad lines")
    if not pairs:
        raise InvalidRecord(f"{path}: no pairs to read")
    return pairs, problems


def seed_pairs(split: str | None = None) -> list[Pair]:
    """The shipped seed set, or one split of it ('train' or 'heldout')."""
    pairs, _ = read_pairs(seed_path())
    return [p for p in pairs if split is None or p.split == split]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Detection:
    """The detector's verdict on one pair."""

    is_correction: bool
    confidence: float  # probability that the follow-up corrects the response, in [0, 1]
    type: str  # a FlagType value
    evidence: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"is_correction": self.is_correction, "confidence": round(self.confidence, 4), "type": self.type,
                "evidence": self.evidence}


# Sentences that stand for what follow-ups do; a follow-up's closest similarity to each group is a feature.
ANCHORS: dict[str, tuple[str, ...]] = {
    "wrong": ("That's wrong.", "That is not correct.", "You made a mistake.", "That's not true.",
              "Are you sure? I think that's incorrect."),
    "not_asked": ("That's not what I asked for.", "I asked you to do something else.", "You ignored my instructions.",
                  "I told you to do it my way.", "Please just do what I said."),
    "alternatives": ("Stop suggesting alternatives.", "I don't want other options.",
                     "Don't recommend something else, just do it."),
    "misread": ("You misunderstood me.", "I meant something different.", "Not that one, the other one."),
    "format": ("Too long, make it shorter.", "Wrong format.", "Just give me the code, no explanation."),
    "scope": ("I didn't ask you to change that.", "Why did you change other things?",
              "Only do what I asked, leave the rest alone."),
    "thanks": ("Thanks, that's great.", "Perfect, exactly what I needed.", "Looks good."),
    "new_request": ("Now can you also do another thing?", "Next, please write something else.",
                    "Great, one more task."),
    "refine": ("Actually, I changed my mind, make it different.", "Also add one more thing to it.",
               "Let's make it bigger instead."),
    "question": ("Why did you do it this way?", "What does this part mean?", "How does this work?"),
    "other_party": ("My colleague thinks this is wrong, but I disagree.",
                    "The article I read says otherwise, but I trust this.", "My boss says no but I like it."),
}


@dataclass
class Weights:
    """A trained detector: optional word n-gram vocabulary and idf (the no-reader form), the standardisation
    of the numeric features (reader features, if any, then rules, anchors, cosines), the correction
    classifier and the type classifier (both over the same design matrix)."""

    vocabulary: list[str]
    idf: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    type_coef: np.ndarray
    type_intercept: np.ndarray
    type_classes: list[str]
    meta: dict[str, Any]

    def params(self) -> dict[str, Any]:
        return {"vocabulary": self.vocabulary, "idf": self.idf, "mean": self.mean, "scale": self.scale,
                "dense_weight": self.meta.get("dense_weight", 1.0)}

    def save(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, vocabulary=np.array(self.vocabulary, dtype=str), idf=self.idf, mean=self.mean,
                 scale=self.scale, coef=self.coef, intercept=np.array([self.intercept]), type_coef=self.type_coef,
                 type_intercept=self.type_intercept, type_classes=np.array(self.type_classes),
                 meta=np.array(json.dumps(self.meta)))
        tmp.replace(path)

    @classmethod
    def read(cls, path: str | Path) -> "Weights":
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(vocabulary=[str(v) for v in z["vocabulary"]], idf=z["idf"], mean=z["mean"],
                           scale=z["scale"], coef=z["coef"], intercept=float(z["intercept"][0]),
                           type_coef=z["type_coef"], type_intercept=z["type_intercept"],
                           type_classes=[str(c) for c in z["type_classes"]], meta=json.loads(str(z["meta"])))
        except (OSError, KeyError, ValueError) as e:
            raise InvalidRecord(f"{path}: not a detector weights file ({e}); "
                                "rebuild it with `mindloop detect --train`") from None


def _vectorizer(vocabulary: list[str] | None = None, idf: np.ndarray | None = None):
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, vocabulary=vocabulary)
    if idf is not None:
        vec.idf_ = idf
    return vec


_ANCHOR_CACHE: dict[str, list[np.ndarray]] = {}


def _anchor_vectors(embedder: Embedder) -> list[np.ndarray]:
    if embedder.name not in _ANCHOR_CACHE:
        v = embedder.embed([s for group in ANCHORS.values() for s in group])
        out, i = [], 0
        for group in ANCHORS.values():
            out.append(v[i: i + len(group)])
            i += len(group)
        _ANCHOR_CACHE[embedder.name] = out
    return _ANCHOR_CACHE[embedder.name]


def dense_features(pairs: Sequence[Pair], embedder: Embedder, reader=None) -> tuple[np.ndarray, list]:
    """Per pair: the reader's features (when a reader is given), the rule features, the follow-up's closest
    similarity to each anchor group, and the cosines of the follow-up with the response and with the request.
    Returns them and the rule results."""
    rules = [apply_rules(p.request, p.response, p.followup) for p in pairs]
    n = len(pairs)
    emb = embedder.embed([p.followup for p in pairs] + [p.response for p in pairs] + [p.request or " " for p in pairs])
    f, r, q = emb[:n], emb[n: 2 * n], emb[2 * n:]
    anchors = np.stack([(f @ a.T).max(axis=1) for a in _anchor_vectors(embedder)], axis=1)
    cos = np.stack([np.sum(f * r, axis=1), np.sum(f * q, axis=1)], axis=1)
    rule_x = np.array([res.features for res in rules], dtype=np.float64)
    blocks = [rule_x, anchors, cos]
    if reader is not None:
        blocks.insert(0, reader.features(pairs))
    return np.hstack(blocks).astype(np.float64), rules


def _design(params: dict[str, Any], pairs: Sequence[Pair], dense: np.ndarray) -> np.ndarray:
    numeric = (dense - params["mean"]) / params["scale"] * params["dense_weight"]
    if not len(params["vocabulary"]):
        return numeric
    vec = _vectorizer(params["vocabulary"], params["idf"])
    return np.hstack([vec.transform([p.followup for p in pairs]).toarray(), numeric])


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _fit(pairs: Sequence[Pair], dense: np.ndarray, y: np.ndarray, types: list[str | None], c: float,
         tfidf: bool, dense_weight: float) -> dict:
    from sklearn.linear_model import LogisticRegression

    scale = dense.std(axis=0)
    scale[scale < 1e-6] = 1.0
    params: dict[str, Any] = {"vocabulary": [], "idf": np.zeros(0), "mean": dense.mean(axis=0), "scale": scale,
                              "dense_weight": dense_weight}
    if tfidf:
        vec = _vectorizer().fit([p.followup for p in pairs])
        params["vocabulary"] = [w for w, _ in sorted(vec.vocabulary_.items(), key=lambda kv: kv[1])]
        params["idf"] = vec.idf_
    x = _design(params, pairs, dense)
    clf = LogisticRegression(C=c, max_iter=5000, class_weight="balanced").fit(x, y)
    pos = [i for i, t in enumerate(types) if y[i] and t]
    labels = [types[i] for i in pos]
    classes = sorted(set(labels))
    if len(classes) >= 2:
        tclf = LogisticRegression(C=c, max_iter=5000).fit(x[pos], labels)
        type_coef, type_b, classes = tclf.coef_, tclf.intercept_, [str(k) for k in tclf.classes_]
        if len(classes) == 2:  # sklearn's binary form: one row for the second class
            type_coef, type_b = np.vstack([-type_coef[0], type_coef[0]]), np.array([-type_b[0], type_b[0]])
    else:
        type_coef, type_b, classes = np.zeros((1, x.shape[1])), np.zeros(1), classes or [FlagType.OTHER.value]
    return {**params, "coef": clf.coef_[0], "intercept": float(clf.intercept_[0]), "type_coef": type_coef,
            "type_intercept": type_b, "type_classes": classes}


def _choose_threshold(y: np.ndarray, p: np.ndarray, target: float = TARGET_PRECISION) -> float:
    """The lowest threshold whose precision on (y, p) reaches ``target`` (0.5 if none does)."""
    for t in np.round(np.arange(0.30, 0.951, 0.01), 2):
        pred = p >= t
        if pred.sum() and (y[pred].mean() >= target):
            return float(t)
    return 0.5


def train(pairs: Sequence[Pair], embedder: Embedder, *, reader=None, c: float | None = None, folds: int = 5,
          seed_sha256: str | None = None) -> "Weights":
    """Fit the detector on labelled ``pairs``; the threshold comes from ``folds``-fold cross-validation.

    With a ``reader`` the design is the reader's features plus the rule, anchor and cosine features
    (C 0.03); without one, the follow-up's tf-idf word n-grams take the reader's place (C 1.0).
    """
    labelled = [p for p in pairs if p.label is not None]
    if len({bool(p.label) for p in labelled}) < 2:
        raise InvalidRecord("training the detector needs both corrections and non-corrections")
    tfidf = reader is None
    c = c if c is not None else (1.0 if tfidf else 0.03)
    dense_weight = 0.5 if tfidf else 1.0  # chosen by cross-validation on the train split
    dense, _ = dense_features(labelled, embedder, reader)
    y = np.array([bool(p.label) for p in labelled])
    types = [p.type if p.label else None for p in labelled]
    oof = np.zeros(len(y))
    fold = np.arange(len(y)) % folds
    for k in range(folds):
        tr, te = fold != k, fold == k
        params = _fit([p for p, m in zip(labelled, tr) if m], dense[tr], y[tr], [t for t, m in zip(types, tr) if m],
                      c, tfidf, dense_weight)
        test = [p for p, m in zip(labelled, te) if m]
        oof[te] = _sigmoid(_design(params, test, dense[te]) @ params["coef"] + params["intercept"])
    threshold = _choose_threshold(y, oof)
    params = _fit(labelled, dense, y, types, c, tfidf, dense_weight)
    params.pop("dense_weight")
    meta = {"embedder": embedder.name, "reader": reader.name if reader is not None else None,
            "feature_version": FEATURE_VERSION, "families": list(FAMILIES), "anchors": list(ANCHORS),
            "rules_sha256": RULES_SHA256, "threshold": threshold, "c": c, "dense_weight": dense_weight,
            "n": len(labelled), "seed_sha256": seed_sha256, "target_precision": TARGET_PRECISION,
            "cv_precision": round(float(y[oof >= threshold].mean()), 4) if (oof >= threshold).any() else 0.0,
            "cv_recall": round(float((oof[y] >= threshold).mean()), 4)}
    return Weights(meta=meta, **params)


_TRAINED: dict[tuple[str, str | None], Weights] = {}  # per (embedder, reader), when nothing shipped fits


def shipped_weights_path(reader: bool = True) -> Path:
    """The shipped weights: with the bundled reader (the default), or the no-reader form for MiniLM."""
    return _data("detector-reader-minilm.npz" if reader else "detector-minilm.npz")


class Detector:
    """Scores pairs; see the module docstring. ``threshold`` defaults to the one chosen in training."""

    def __init__(self, embedder: Embedder, weights: Weights, *, reader=None, threshold: float | None = None,
                 judge=None, judge_weight: float = 1 / 3) -> None:
        if weights.meta.get("feature_version") != FEATURE_VERSION or weights.meta.get("families") != list(FAMILIES):
            raise InvalidRecord("the detector weights were built for other features; rebuild them with "
                                "`mindloop detect --train`")
        wanted = weights.meta.get("reader")
        if wanted != (reader.name if reader is not None else None):
            raise InvalidRecord(f"these detector weights need reader {wanted!r}, got "
                                f"{reader.name if reader is not None else None!r}")
        self.embedder = embedder
        self.reader = reader
        self.weights = weights
        self.threshold = float(threshold if threshold is not None else weights.meta["threshold"])
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be between 0 and 1, got {self.threshold}")
        self.judge = judge
        self.judge_weight = judge_weight

    @classmethod
    def load(cls, embedder: Embedder, *, reader=None, threshold: float | None = None, judge=None,
             weights_path: str | Path | None = None) -> "Detector":
        """The shipped weights when they fit ``embedder``, ``reader`` and the shipped seed set and rules;
        else a detector trained from the seed set's train split (cached for the process)."""
        reader_name = reader.name if reader is not None else None
        path = Path(weights_path) if weights_path else shipped_weights_path(reader is not None)
        if path.exists():
            w = Weights.read(path)
            fits = (w.meta.get("embedder") == embedder.name and w.meta.get("reader") == reader_name
                    and w.meta.get("feature_version") == FEATURE_VERSION and w.meta.get("families") == list(FAMILIES))
            if fits or weights_path:
                return cls(embedder, w, reader=reader, threshold=threshold, judge=judge)
        if reader is not None:
            # training with a reader reads every seed pair with the chat model: minutes on a CPU, too slow to
            # do when a chat or a proxy starts. Use the rules + tf-idf form for this embedder instead.
            log.warning("no shipped reader weights fit embedder %s and reader %s; using the detector without a "
                        "reader (`mindloop detect --train` builds reader weights for them)", embedder.name,
                        reader_name)
            return cls.load(embedder, threshold=threshold, judge=judge)
        key = (embedder.name, reader_name)
        if key not in _TRAINED:
            log.info("training the correction detector for %s from the seed set", key)
            _TRAINED[key] = train(seed_pairs("train"), embedder, reader=reader, seed_sha256=_sha256(seed_path()))
        return cls(embedder, _TRAINED[key], reader=reader, threshold=threshold, judge=judge)

    def probabilities(self, pairs: Sequence[Pair]) -> tuple[np.ndarray, np.ndarray, list]:
        """P(correction) per pair, type probabilities per pair, and the rule results."""
        w = self.weights
        dense, rules = dense_features(pairs, self.embedder, self.reader)
        x = _design(w.params(), pairs, dense)
        p = _sigmoid(x @ w.coef + w.intercept)
        logits = x @ w.type_coef.T + w.type_intercept
        logits -= logits.max(axis=1, keepdims=True)
        tp = np.exp(logits)
        tp /= tp.sum(axis=1, keepdims=True)
        return p, tp, rules

    def score(self, pairs: Sequence[Pair]) -> list[Detection]:
        """One :class:`Detection` per pair (embedding in one batch)."""
        if not pairs:
            return []
        p, tp, rules = self.probabilities(pairs)
        out = []
        for i, pair in enumerate(pairs):
            conf = float(p[i])
            evidence = list(rules[i].evidence)
            evidence.append(f"classifier: p={conf:.2f}")
            if self.judge is not None:
                verdict = self.judge(pair)
                if verdict is not None:
                    conf = (1 - self.judge_weight) * conf + self.judge_weight * verdict.probability
                    evidence.append(f"judge: {verdict.answer!r} (p={verdict.probability:.2f})")
            kind = self.weights.type_classes[int(np.argmax(tp[i]))]
            out.append(Detection(is_correction=conf >= self.threshold, confidence=min(1.0, max(0.0, conf)),
                                 type=kind, evidence=evidence))
        return out

    def detect(self, pair: Pair) -> Detection:
        return self.score([pair])[0]


def evaluate(detector: Detector, pairs: Sequence[Pair]) -> dict[str, Any]:
    """Precision, recall, F1 and the confusion matrix of ``detector`` on labelled ``pairs``."""
    found = detector.score(pairs)
    tp = sum(1 for p, d in zip(pairs, found) if p.label and d.is_correction)
    fp = sum(1 for p, d in zip(pairs, found) if not p.label and d.is_correction)
    fn = sum(1 for p, d in zip(pairs, found) if p.label and not d.is_correction)
    tn = len(pairs) - tp - fp - fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    typed = [(p.type, d.type) for p, d in zip(pairs, found) if p.label and d.is_correction and p.type]
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
            "threshold": detector.threshold, "n": len(pairs),
            "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
            "type_accuracy": round(sum(a == b for a, b in typed) / len(typed), 4) if typed else None,
            "embedder": detector.embedder.name, "judge": detector.judge is not None}

"""Typed records of the memory graph: one dataclass per node kind, plus edges.

Every record round-trips through JSON (``to_json`` / :func:`record_from_json`)
and carries its scope; records that become chat input have ``to_messages()``.

    >>> t = Turn(scope="alice", session="s1", role="user", text="rename foo to bar")
    >>> record_from_json(t.to_json()) == t
    True
"""

from __future__ import annotations

import dataclasses
import enum
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar

from mindloop.graph.errors import InvalidRecord, InvalidText, UnknownKind

__all__ = [
    "ROLES",
    "Alert",
    "Checkpoint",
    "Edge",
    "EdgeKind",
    "Eval",
    "Example",
    "Flag",
    "FlagType",
    "Memory",
    "Node",
    "NodeKind",
    "Pattern",
    "Run",
    "Session",
    "Turn",
    "NODE_CLASSES",
    "check_text",
    "edge_from_json",
    "record_from_json",
]

ROLES = ("user", "assistant", "system")


class NodeKind(str, enum.Enum):
    SESSION = "session"
    TURN = "turn"
    MEMORY = "memory"
    FLAG = "flag"
    PATTERN = "pattern"
    EXAMPLE = "example"
    RUN = "run"
    CHECKPOINT = "checkpoint"
    EVAL = "eval"
    ALERT = "alert"


class EdgeKind(str, enum.Enum):
    NEXT = "next"  # turn -> following turn of the same session
    SURFACED = "surfaced"  # memory -> turn it was shown in
    CORRECTS = "corrects"  # user turn -> assistant turn it corrects
    FLAGS = "flags"  # flag -> turn
    MEMBER_OF = "member_of"  # flag -> pattern
    SIMILAR_TO = "similar_to"
    DERIVED_FROM = "derived_from"  # example -> its turns and flags
    TRAINED_ON = "trained_on"  # run -> example
    PRODUCED = "produced"  # run -> checkpoint
    EVALUATED = "evaluated"  # eval -> checkpoint
    ROLLED_BACK = "rolled_back"  # alert -> checkpoint


class FlagType(str, enum.Enum):
    IGNORED_DIRECTION = "ignored_direction"
    UNWANTED_ALTERNATIVES = "unwanted_alternatives"
    FACTUAL_ERROR = "factual_error"
    MISUNDERSTOOD = "misunderstood"
    WRONG_FORMAT = "wrong_format"
    OVERSTEPPED_SCOPE = "overstepped_scope"
    OTHER = "other"


def _enum_value(enum_cls: type[enum.Enum], value: Any, what: str) -> str:
    try:
        return enum_cls(value).value
    except ValueError:
        allowed = ", ".join(m.value for m in enum_cls)
        raise UnknownKind(f"unknown {what} {value!r}; allowed: {allowed}") from None


def check_text(text: Any, *, max_bytes: int | None = None, what: str = "text") -> str:
    """Return ``text`` if it can be stored, else raise :class:`InvalidText`.

    Rejected: non-strings, empty or whitespace-only strings, lone surrogates
    (which cannot be encoded as UTF-8), and strings over ``max_bytes`` of UTF-8.
    """
    from mindloop.graph.errors import TextTooLarge

    if not isinstance(text, str):
        raise InvalidText(f"{what} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise InvalidText(f"{what} is empty or whitespace only")
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidText(
            f"{what} is not valid Unicode: lone surrogate {text[e.start]!r} at offset {e.start}"
        ) from None
    if max_bytes is not None and len(encoded) > max_bytes:
        raise TextTooLarge(f"{what} is {len(encoded)} bytes; the limit is {max_bytes} bytes")
    return text


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass(kw_only=True)
class Node:
    """Fields every node has. Subclasses add their own and set ``KIND``."""

    KIND: ClassVar[NodeKind]

    scope: str = "default"
    id: str = ""
    session: str | None = None
    created: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if not isinstance(self.scope, str) or not self.scope.strip():
            raise InvalidRecord(f"{self.KIND.value}: scope must be a non-empty string, got {self.scope!r}")
        if not self.id:
            self.id = _new_id(self.KIND.value)

    @property
    def kind(self) -> str:
        return self.KIND.value

    def embed_text(self) -> str | None:
        """The text that is indexed (vector and lexical) for this node, or None."""
        return None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.KIND.value}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.value if isinstance(value, enum.Enum) else value
        return out


@dataclass(kw_only=True)
class Session(Node):
    """A conversation. Turns point at it through their ``session`` field."""

    KIND: ClassVar[NodeKind] = NodeKind.SESSION
    title: str = ""


@dataclass(kw_only=True)
class Turn(Node):
    """One message of a conversation."""

    KIND: ClassVar[NodeKind] = NodeKind.TURN
    role: str = "user"
    text: str = ""
    index: int = 0  # position within the session, from 0
    model: str | None = None
    checkpoint: str | None = None
    latency_ms: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.role not in ROLES:
            raise InvalidRecord(f"turn role {self.role!r} is not one of {', '.join(ROLES)}")
        if not self.session:
            raise InvalidRecord("a turn needs a session")

    def embed_text(self) -> str | None:
        return self.text

    def to_messages(self) -> list[dict[str, str]]:
        return [{"role": self.role, "content": self.text}]


@dataclass(kw_only=True)
class Memory(Node):
    """A note that can be surfaced into a conversation (lesson, preference, note)."""

    KIND: ClassVar[NodeKind] = NodeKind.MEMORY
    text: str = ""
    memory_kind: str = "note"  # lesson | preference | note | correction
    source: list[str] = field(default_factory=list)  # ids it was derived from

    def embed_text(self) -> str | None:
        return self.text


@dataclass(kw_only=True)
class Flag(Node):
    """An assistant turn that a user corrected."""

    KIND: ClassVar[NodeKind] = NodeKind.FLAG
    turn: str = ""  # the assistant turn that was corrected
    correction: str | None = None  # the user turn that corrected it
    type: str = FlagType.OTHER.value
    confidence: float = 0.0
    evidence: list[str] = field(default_factory=list)
    status: str = "new"  # new | confirmed | rejected
    reason: str = ""
    better_response: str | None = None

    STATUSES: ClassVar[tuple[str, ...]] = ("new", "confirmed", "rejected")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.type = _enum_value(FlagType, self.type, "flag type")
        if not 0.0 <= float(self.confidence) <= 1.0:
            raise InvalidRecord(f"flag confidence must be in [0, 1], got {self.confidence!r}")
        if self.status not in self.STATUSES:
            raise InvalidRecord(f"flag status {self.status!r} is not one of {', '.join(self.STATUSES)}")

    def embed_text(self) -> str | None:
        return self.reason or None


@dataclass(kw_only=True)
class Pattern(Node):
    """A cluster of flags that are the same failure."""

    KIND: ClassVar[NodeKind] = NodeKind.PATTERN
    name: str = ""
    description: str = ""
    status: str = "open"
    # what the scheduler and the observer decided for this pattern's next run
    # (examples, learning rate, general share, and the history of adjustments)
    meta: dict[str, Any] = field(default_factory=dict)

    def embed_text(self) -> str | None:
        return " — ".join(p for p in (self.name, self.description) if p) or None


@dataclass(kw_only=True)
class Example(Node):
    """A training example composed from the graph."""

    KIND: ClassVar[NodeKind] = NodeKind.EXAMPLE
    pattern: str | None = None
    example_kind: str = "accept"  # accept | pushback | general
    prompt: list[dict[str, str]] = field(default_factory=list)
    completion: str = ""
    rejected: str | None = None  # the flagged response, for preference pairs
    split: str = "train"  # train | heldout
    source: str = ""  # where the completion came from: edited | accepted_reply | generated | scenario | ...

    def to_messages(self) -> list[dict[str, str]]:
        return [*self.prompt, {"role": "assistant", "content": self.completion}]


@dataclass(kw_only=True)
class Run(Node):
    """A training run."""

    KIND: ClassVar[NodeKind] = NodeKind.RUN
    objective: str = "sft"
    method: str = "lora"
    status: str = "started"
    base_model: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    finished: float | None = None


@dataclass(kw_only=True)
class Checkpoint(Node):
    """Adapter or weights written by a run, with its lineage."""

    KIND: ClassVar[NodeKind] = NodeKind.CHECKPOINT
    path: str = ""
    parent: str | None = None
    base_model: str = ""
    status: str = "candidate"  # candidate | promoted | rejected | rolled_back
    manifest: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class Eval(Node):
    """An evaluation of a checkpoint on a probe set."""

    KIND: ClassVar[NodeKind] = NodeKind.EVAL
    checkpoint: str | None = None
    probes: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class Alert(Node):
    """A regression the observer raised."""

    KIND: ClassVar[NodeKind] = NodeKind.ALERT
    checkpoint: str | None = None
    reason: str = ""
    status: str = "open"  # open | resolved
    details: dict[str, Any] = field(default_factory=dict)


NODE_CLASSES: dict[str, type[Node]] = {
    cls.KIND.value: cls
    for cls in (Session, Turn, Memory, Flag, Pattern, Example, Run, Checkpoint, Eval, Alert)
}


@dataclass(kw_only=True)
class Edge:
    """A typed, directed edge between two nodes of the same scope."""

    src: str
    dst: str
    kind: str
    scope: str = "default"
    created: float = field(default_factory=time.time)
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.kind = _enum_value(EdgeKind, self.kind, "edge kind")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def record_from_json(data: dict[str, Any]) -> Node:
    """Build the record a ``Node.to_json()`` dict describes.

    Raises :class:`InvalidRecord` for a dict of the wrong shape and
    :class:`UnknownKind` for a kind we do not define.
    """
    if not isinstance(data, dict):
        raise InvalidRecord(f"a record is a JSON object, got {type(data).__name__}")
    fields = dict(data)
    kind = fields.pop("kind", None)
    if kind not in NODE_CLASSES:
        allowed = ", ".join(NODE_CLASSES)
        raise UnknownKind(f"unknown node kind {kind!r}; allowed: {allowed}")
    cls = NODE_CLASSES[kind]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(fields) - names
    if unknown:
        raise InvalidRecord(f"{kind} record has unknown fields: {', '.join(sorted(unknown))}")
    try:
        return cls(**fields)
    except TypeError as e:
        raise InvalidRecord(f"{kind} record: {e}") from None


def edge_from_json(data: dict[str, Any]) -> Edge:
    if not isinstance(data, dict):
        raise InvalidRecord(f"an edge is a JSON object, got {type(data).__name__}")
    try:
        return Edge(**data)
    except TypeError as e:
        raise InvalidRecord(f"edge record: {e}") from None

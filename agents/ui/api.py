"""The UI's JSON API under ``/api/...``: the same data the pages show, described in the OpenAPI schema.

    GET  /api/flags?pattern=P&status=new&min_confidence=0.5   the review queue
    GET  /api/flags/{id}                                      window, reply, correction, evidence, similar flags
    POST /api/flags/{id}/confirm | /reject | /edit            review (X-CSRF-Token or a bearer token)
    GET  /api/patterns                                        size, readiness, flags over time
    GET  /api/graph/nodes/{id}?hops=1                         a node's neighbourhood
    GET  /api/search?q=...&k=20&kind=turn                     the graph's hybrid search
    GET  /api/runs, /api/runs/{id}                            runs: loss, before/after, examples, lineage
    GET  /api/checkpoints                                     checkpoints, the one in use, promotions and rollbacks
    GET  /api/observer                                        surface-observe's report
    GET  /api/csrf                                            the CSRF token for POSTs

The schema is at ``/openapi.json`` (no ``/docs`` page: Swagger UI would load its scripts from a CDN).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Body, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from mindloop.agents.ui.inspector import Inspector
from mindloop.agents.ui.security import Guard

__all__ = ["build_api"]


class _Open(BaseModel):
    """Extra fields are kept: the records grow, and the observer's report is another module's."""

    model_config = ConfigDict(extra="allow")


class PatternRef(BaseModel):
    id: str
    name: str


class FlagRow(BaseModel):
    id: str
    status: str
    type: str
    confidence: float
    created: float
    session: str | None
    reply: str | None = Field(description="the flagged assistant reply")
    correction: str | None = Field(description="the user turn that corrected it")
    edited: bool = Field(description="a reviewer supplied the response it should have given")
    patterns: list[PatternRef]


class QueueFilters(BaseModel):
    pattern: str | None
    status: str | None
    min_confidence: float | None
    max_confidence: float | None


class FlagQueue(BaseModel):
    flags: list[FlagRow]
    total: int = Field(description="flags that match the filters")
    shown: int = Field(description="flags listed (at most ui.queue_limit)")
    patterns: list[PatternRef] = Field(description="every pattern, for the filter")
    filters: QueueFilters


class FlagRecord(_Open):
    id: str
    scope: str
    session: str | None
    created: float
    turn: str
    correction: str | None
    type: str
    confidence: float
    evidence: list[str]
    status: str
    reason: str
    better_response: str | None


class WindowTurn(BaseModel):
    role: str
    text: str


class SimilarFlag(BaseModel):
    id: str
    type: str
    status: str
    score: float | None
    correction: str
    href: str


class FlagDetail(BaseModel):
    flag: FlagRecord
    patterns: list[PatternRef]
    window: list[WindowTurn] = Field(description="the conversation before the flagged reply")
    flagged: str | None
    correction: str | None
    reply_after_correction: str | None
    similar: list[SimilarFlag] = Field(description="similar past flags (similar_to edges), closest first")


class EditRequest(BaseModel):
    response: str = Field(min_length=1, description="the response the assistant should have given")


class Readiness(BaseModel):
    ready: bool = Field(description="ripe: the scheduler would train it now")
    waiting_for: list[str] = Field(description="what it still waits for (empty when ready)")
    confirmed: int
    needed: int = Field(description="confirmed flags a pattern needs")
    untrained_flags: int | None = Field(description="confirmed flags no kept checkpoint trained on (scheduler)")
    untrained_examples: int = Field(description="composed train-split examples no run used yet")
    last_run: float | None
    cooldown_left_s: float
    open_alerts: int
    plan: dict[str, Any] | None = Field(description="the next run's plan (examples, lr, general share), scheduler")
    source: Literal["scheduler"] = Field(description="mindloop.agents.cycle.service.readiness, the scheduler's rule")


class TimelineBin(BaseModel):
    start: float
    flags: int


class TimelineEvent(BaseModel):
    at: float
    event: Literal["promote", "rollback"]
    checkpoint: str | None
    to: str | None
    reason: str
    this_pattern: bool = Field(description="the checkpoint was trained on this pattern")


class Timeline(BaseModel):
    bins: list[TimelineBin]
    width_s: float | None
    events: list[TimelineEvent]


class PatternInfo(BaseModel):
    id: str
    name: str
    status: str
    flags: int
    by_status: dict[str, int]
    by_type: dict[str, int]
    per_week: list[int] = Field(description="flags per week over the last 8 weeks, oldest first")
    first: float | None
    last: float | None
    description: str
    readiness: Readiness
    timeline: Timeline
    runs: list[str]


class PatternList(BaseModel):
    patterns: list[PatternInfo]
    min_flags: int = Field(description="[scheduler] min_flags: confirmed untrained flags that make a pattern ripe")
    cooldown_s: float = Field(description="[scheduler] cooldown_s: seconds between two runs of one pattern")


class GraphNode(BaseModel):
    id: str
    kind: str
    label: str
    depth: int = Field(description="hops from the centre")
    href: str


class GraphEdge(BaseModel):
    source: str
    target: str
    kind: str


class CentreNode(BaseModel):
    id: str
    kind: str
    label: str
    href: str
    record: dict[str, Any]


class Neighbourhood(BaseModel):
    node: CentreNode
    hops: int
    nodes: list[GraphNode]
    edges: list[GraphEdge]
    truncated: int = Field(description="nodes left out beyond ui.graph_max_nodes")


class SearchHit(BaseModel):
    id: str
    kind: str
    label: str
    score: float
    signals: list[str]
    href: str
    graph_href: str


class SearchResult(BaseModel):
    query: str
    index_note: str | None
    hits: list[SearchHit]


class RunRow(BaseModel):
    id: str
    status: str
    created: float
    objective: str | None
    method: str | None
    pattern: str | None
    pattern_name: str | None
    final_loss: float | None
    checkpoint: str | None
    in_graph: bool = Field(description="recorded in the graph (false: only a folder under runs/, e.g. a killed run)")


class RunList(BaseModel):
    runs: list[RunRow]


class EvalRow(BaseModel):
    metric: str
    before: float | None
    after: float | None
    better: Literal["higher", "lower"]
    change: float | None
    note: str | None = None


class SourceRef(BaseModel):
    id: str
    kind: str
    label: str
    href: str


class ExampleRow(BaseModel):
    id: str
    kind: str
    split: str
    source: str
    pattern: str | None
    prompt: str | None = Field(description="the last user message of the prompt")
    completion: str
    rejected: str | None
    derived_from: list[SourceRef] = Field(description="the turns and flags it came from")


class LineageItem(BaseModel):
    id: str
    parent: str | None
    status: str
    run: str | None
    created: float | None
    relation: Literal["ancestor", "this", "child"]
    in_use: bool


class RunDetail(BaseModel):
    id: str
    status: str
    created: float | None
    finished: float | None
    config: dict[str, Any]
    steps: list[dict[str, float]] = Field(description="steps.jsonl: step, loss, learning_rate, ...")
    has_loss_png: bool
    evaluation: list[EvalRow]
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    examples: list[ExampleRow]
    checkpoint: str | None
    lineage: list[LineageItem]
    in_graph: bool


class CheckpointItem(BaseModel):
    id: str
    parent: str | None
    run: str | None
    kind: str | None
    created: float | None
    error: str | None
    in_use: bool
    status: str


class CheckpointList(BaseModel):
    in_use: str | None
    checkpoints: list[CheckpointItem]
    history: list[dict[str, Any]] = Field(description="checkpoints/history.jsonl: promotions and rollbacks")


class Window(_Open):
    start: float
    end: float | None = None
    turns: int
    flags: dict[str, int] = Field(description="flags per pattern in the window")
    surfaced_corrections: int | None = None
    dependence_mean: float | None = None


class RateTest(_Open):
    what: str
    before_rate: float | None = None
    after_rate: float | None = None
    p_value: float | None = None
    n_before: int | None = None
    n_after: int | None = None
    verdict: str | None = None


class ObservedCheckpoint(_Open):
    id: str
    parent: str | None = None
    promoted_at: float | None = None
    status: str | None = None
    windows: list[Window] = Field([], description="the turns this checkpoint served, per window")
    baseline_windows: list[Window] = Field([], description="the parent's turns before the promotion, per window")
    tests: list[RateTest] = []
    verdict: str | None = None


class AlertRow(_Open):
    id: str
    kind: str | None = None
    message: str | None = None
    checkpoint: str | None = None
    open: bool
    created_at: float | None = None


class RollbackRow(_Open):
    checkpoint: str | None
    to: str | None = None
    at: float | None = None
    reason: str | None = None


class ObserverReport(_Open):
    in_use: str | None
    checkpoints: list[ObservedCheckpoint]
    alerts: list[AlertRow]
    rollbacks: list[RollbackRow]
    source: Literal["observer", "fallback"] = Field(
        description="'observer' = mindloop.agents.cycle.watch.report; 'fallback' = checkpoints and alerts only")


class Csrf(BaseModel):
    csrf_token: str = Field(description="send as X-CSRF-Token on POST requests (not needed with a bearer token)")


def build_api(inspector: Inspector, guard: Guard) -> APIRouter:
    """The ``/api`` routes over ``inspector``; review POSTs check ``guard``'s CSRF token."""
    api = APIRouter(prefix="/api")

    def csrf(request: Request) -> None:
        if not guard.check_csrf(request, None):
            raise HTTPException(403, "missing or wrong CSRF token: send the X-CSRF-Token header (GET /api/csrf)")

    @api.get("/csrf", response_model=Csrf, summary="The CSRF token to send with POST requests")
    def get_csrf():
        return {"csrf_token": guard.csrf_token}

    @api.get("/flags", response_model=FlagQueue, summary="The review queue, newest first")
    def flags(pattern: str | None = Query(None, description="pattern id or name"),
              status: Literal["new", "confirmed", "rejected"] | None = None,
              min_confidence: float | None = Query(None, ge=0, le=1),
              max_confidence: float | None = Query(None, ge=0, le=1),
              limit: int | None = Query(None, ge=1, le=10_000)):
        return inspector.flags(pattern=pattern, status=status, min_confidence=min_confidence,
                               max_confidence=max_confidence, limit=limit)

    @api.get("/flags/{flag_id}", response_model=FlagDetail, summary="One flag with everything a reviewer needs")
    def flag(flag_id: str):
        return inspector.flag(flag_id)

    @api.post("/flags/{flag_id}/confirm", response_model=FlagRecord, summary="Confirm: a real correction (it trains)")
    async def confirm(flag_id: str, request: Request):
        csrf(request)
        return await run_in_threadpool(inspector.review, flag_id, "confirm")

    @api.post("/flags/{flag_id}/reject", response_model=FlagRecord, summary="Reject: a false alarm (never trains)")
    async def reject(flag_id: str, request: Request):
        csrf(request)
        return await run_in_threadpool(inspector.review, flag_id, "reject")

    @api.post("/flags/{flag_id}/edit", response_model=FlagRecord,
              summary="Supply the response the assistant should have given (also confirms)")
    async def edit(flag_id: str, request: Request, body: EditRequest = Body(...)):
        csrf(request)
        return await run_in_threadpool(inspector.review, flag_id, "edit", body.response)

    @api.get("/patterns", response_model=PatternList, summary="Patterns: size, readiness, flags over time")
    def patterns():
        return inspector.patterns()

    @api.get("/graph/nodes/{node_id}", response_model=Neighbourhood, summary="A node's neighbourhood")
    def node(node_id: str, hops: int = Query(1, ge=1, le=3)):
        return inspector.node(node_id, hops=hops)

    @api.get("/search", response_model=SearchResult, summary="Hybrid search of the memory graph")
    def search(q: str = Query(..., min_length=1, max_length=2000),
               k: int = Query(20, ge=1, le=100),
               kind: list[Literal["session", "turn", "memory", "flag", "pattern", "example", "run", "checkpoint",
                                  "eval", "alert"]] | None = Query(None, description="only these kinds (repeatable)")):
        return inspector.search(q, k=k, kinds=kind)

    @api.get("/runs", response_model=RunList, summary="Training runs, newest first")
    def runs():
        return inspector.runs()

    @api.get("/runs/{run_id}", response_model=RunDetail, summary="One run: loss, before/after, examples, lineage")
    def run(run_id: str):
        return inspector.run(run_id)

    @api.get("/checkpoints", response_model=CheckpointList, summary="Checkpoints and promotion history")
    def checkpoints():
        return inspector.checkpoint_list()

    @api.get("/observer", response_model=ObserverReport, summary="surface-observe: windows, tests, alerts")
    def observer():
        return inspector.observer()

    return api

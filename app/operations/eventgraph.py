"""The event graph, as data: which task each event is delivered to (the subscription
table of a saga mode), which events each task may emit (for the saga's tasks, as the saga
definition states it), and which tasks a task starts itself (orchestration's canvas).
``python -m app events graph`` prints it as Mermaid; :func:`problems` names every event
type with no consumer and every failure event with no path to a compensation
(``python -m app events check``, run by the test suite).

Extensions (:mod:`app.extensions`) join the graph as consumers that emit nothing: they can
add edges, never take one away.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from app.domain.events import FAILURE_EVENTS, REGISTRY
from app.domain.saga import CHECKOUT, Saga
from app.domain.subscriptions import CHOREOGRAPHY, ORCHESTRATION, UNDO_OWN_PART, subscriptions
from app.extensions import Extension, with_extensions

#: What the tasks that run no step of the saga may emit: the order's own moves and the
#: stock's epilogue on a cancellation. (Every step's, compensation's and reaction's
#: events are the saga definition's: see :func:`emits`.)
OTHER_EMITS: dict[str, tuple[str, ...]] = {
    "order.record": ("OrderCancelled",),
    "order.cancel": ("OrderCancelled",),
    "inventory.release_on_cancel": ("InventoryReleased",),
}


def emits(saga: Saga = CHECKOUT) -> dict[str, tuple[str, ...]]:
    """What each task may emit (through its service's outbox): a saga step's task and its
    choreography reaction emit the step's events; a compensation's task its events; each
    service's undo task the events of its compensations, newest first."""
    table: dict[str, tuple[str, ...]] = {}
    for step in (*saga.steps, *saga.epilogue):
        table[step.task] = step.events
        if step.reaction is not None:
            table[step.reaction] = step.events
    for compensation in saga.compensations:
        table[compensation.task] = compensation.done_events
    for task in UNDO_OWN_PART:
        service = task.split(".", 1)[0]
        table[task] = tuple(e for c in saga.compensations if c.service == service for e in c.done_events)
    return {**table, **OTHER_EMITS}


EMITS = emits(CHECKOUT)


def compensation_tasks(saga: Saga = CHECKOUT) -> frozenset[str]:
    """Tasks that undo a step (the ends a failure event must reach)."""
    return frozenset({c.task for c in saga.compensations} | set(UNDO_OWN_PART) | {"inventory.release_on_cancel"})


COMPENSATIONS = compensation_tasks(CHECKOUT)


def starts(mode: str, saga: Saga = CHECKOUT) -> dict[str, tuple[str, ...]]:
    """Tasks that send other tasks themselves, not through an event: orchestration's
    canvas (order.start sends the steps; a failing step's error callback, order.compensate,
    sends the compensations then order.cancel; order.record sends order.compensate once a
    failure event confirms a reported failure)."""
    if mode == CHOREOGRAPHY:
        return {}
    compensations = tuple(c.task for c in (s.compensation for s in saga.steps) if c is not None)
    edges: dict[str, tuple[str, ...]] = {
        "order.start": tuple(s.task for s in saga.steps),
        saga.compensate_task: (*compensations, saga.cancel_task),
        "order.record": (saga.compensate_task,),
    }
    for step in saga.steps:
        edges[step.task] = (saga.compensate_task,)
    return edges


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    kind: str  # "delivered to", "emits", "starts"


def _emits(extensions: Iterable[Extension], saga: Saga) -> dict[str, tuple[str, ...]]:
    return {**emits(saga), **{ext.task: () for ext in extensions}}


def edges(
    mode: str = ORCHESTRATION,
    table: Mapping[str, Iterable[str]] | None = None,
    extensions: Iterable[Extension] = (),
    saga: Saga = CHECKOUT,
) -> list[Edge]:
    """Every edge of the mode's graph (``table``: a subscription table to use instead), with
    the ``extensions``' subscriptions, for ``saga``."""
    extensions = tuple(extensions)
    emitted = _emits(extensions, saga)
    table = with_extensions(subscriptions(mode) if table is None else table, extensions)
    found = [Edge(event, task, "delivered to") for event, tasks in table.items() for task in tasks]
    started = starts(mode, saga)
    found += [Edge(task, target, "starts") for task, targets in started.items() for target in targets]
    tasks = (
        {e.target for e in found if e.kind == "delivered to"}
        | set(started)
        | {t for ts in started.values() for t in ts}
    )
    found += [Edge(task, event, "emits") for task in sorted(tasks) for event in emitted.get(task, ())]
    return found


def problems(
    mode: str = ORCHESTRATION,
    table: Mapping[str, Iterable[str]] | None = None,
    extensions: Iterable[Extension] = (),
    saga: Saga = CHECKOUT,
) -> list[str]:
    """What is wrong with the graph: an event type nobody consumes, a failure event from
    which no compensation can be reached, a task whose emissions are unknown."""
    extensions = tuple(extensions)
    emitted = _emits(extensions, saga)
    graph = edges(mode, table, extensions, saga)
    found: list[str] = []
    consumed = {e.source for e in graph if e.kind == "delivered to"}
    for event in sorted(REGISTRY):
        if event not in consumed:
            found.append(f"{event}: no consumer ({mode})")
    following: dict[str, list[str]] = {}
    for e in graph:
        following.setdefault(e.source, []).append(e.target)
    for event in sorted(FAILURE_EVENTS):
        if not _reaches(following, event, compensation_tasks(saga)):
            found.append(f"{event}: a failure event with no path to a compensation ({mode})")
    for task in sorted({e.target for e in graph if e.kind in {"delivered to", "starts"}}):
        if task not in emitted and task not in starts(mode, saga):
            found.append(f"{task}: not in the table of what tasks emit ({mode})")
    return found


def _reaches(following: Mapping[str, list[str]], start: str, ends: frozenset[str]) -> bool:
    seen, queue = {start}, deque([start])
    while queue:
        node = queue.popleft()
        if node in ends:
            return True
        for nxt in following.get(node, ()):
            if nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    return False


def mermaid(mode: str = ORCHESTRATION, extensions: Iterable[Extension] = (), saga: Saga = CHECKOUT) -> str:
    """The mode's graph as a Mermaid flowchart: events in rounded boxes, tasks in square
    ones, failure events, compensations and extensions marked."""
    extensions = tuple(extensions)
    graph = edges(mode, extensions=extensions, saga=saga)
    ids: dict[str, str] = {}

    def node(name: str) -> str:
        if name not in ids:
            ids[name] = f"n{len(ids)}"
        return ids[name]

    lines = ["flowchart LR"]
    arrows = {"delivered to": "-->", "emits": "-.->", "starts": "==>"}
    body = [f"    {node(e.source)} {arrows[e.kind]} {node(e.target)}" for e in graph]
    for name, ident in ids.items():
        shape = f'{ident}("{name}")' if name in REGISTRY else f'{ident}["{name}"]'
        lines.append(f"    {shape}")
    lines += body
    failures = [ids[n] for n in sorted(FAILURE_EVENTS) if n in ids]
    undo = [ids[n] for n in sorted(compensation_tasks(saga)) if n in ids]
    lines.append("    classDef failure stroke:#c00,stroke-width:2px")
    lines.append("    classDef compensation stroke:#06c,stroke-dasharray:4")
    added = [ids[ext.task] for ext in extensions if ext.task in ids]
    if added:
        lines.append("    classDef extension fill:#efe,stroke:#393")
        lines.append(f"    class {','.join(added)} extension")
    if failures:
        lines.append(f"    class {','.join(failures)} failure")
    if undo:
        lines.append(f"    class {','.join(undo)} compensation")
    return "\n".join(lines)

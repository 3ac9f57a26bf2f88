"""An order's story, drawn: its events and dead letters as a Mermaid sequence diagram
(``python -m app orders show --mermaid``, ``GET /orders/{id}/timeline?format=mermaid``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from app.domain.states import TERMINAL, OrderStatus

if TYPE_CHECKING:
    from app.persistence.deadletters import DeadLetter
    from app.services.order import OrderView


def took(seconds: float | None) -> str:
    """How long a step took: milliseconds under a second, else seconds."""
    if seconds is None:
        return ""
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.2f}s"


def sequence_diagram(view: OrderView, letters: Sequence[DeadLetter] = ()) -> str:
    """The order's story as a Mermaid sequence diagram: each event from its service, with
    the attempts and time its step took where known; compensations and dead letters marked."""
    lines = ["sequenceDiagram", "    participant order", "    participant inventory", "    participant payment"]
    lines.append("    participant shipping")
    timed: list[tuple[datetime, str]] = []
    for entry in view.events:
        offset = (entry.time - view.created_at).total_seconds()
        facts = [f"+{offset:.3f}s"]
        if entry.attempts is not None:
            facts.append(f"{entry.attempts} attempt{'s' if entry.attempts != 1 else ''}")
        if entry.duration_seconds is not None:
            facts.append(f"took {took(entry.duration_seconds)}")
        kind = ", compensation" if entry.compensation else ""
        label = f"{entry.type}{kind} ({', '.join(facts)})"
        if entry.service == "order":
            if entry.type in {"OrderCompleted", "OrderCancelled"}:
                timed.append((entry.time, f"    order->>inventory: {label}"))
            else:
                timed.append((entry.time, f"    Note over order: {label}"))
        else:
            timed.append((entry.time, f"    {entry.service}-->>order: {label}"))
    for letter in letters:
        offset = (letter.last_failed_at - view.created_at).total_seconds()
        note = (
            f"    Note over {letter.service}: dead letter {letter.task or letter.queue} "
            f"({letter.status.lower()}, {letter.attempts} attempts, +{offset:.3f}s)"
        )
        timed.append((letter.last_failed_at, note))
    timed.sort(key=lambda item: item[0])  # stable: events keep their recorded order
    lines.extend(line for _, line in timed)
    if view.status in TERMINAL:
        lines.append(f"    Note over order: {view.status} {view.reason or ''}".rstrip())
    elif view.attention:
        lines.append(f"    Note over order: {OrderStatus.NEEDS_ATTENTION} {view.attention}")
    return "\n".join(lines)

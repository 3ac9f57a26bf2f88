"""The message contracts, written down and checked: ``python -m app schemas export|check``.

Every message the system sends has a JSON Schema, written by pydantic from its model: each
event type's payload at its version (``events/<type>.v<N>.json``), each task's message body
(``commands/<task>.v1.json``; the tasks that consume events take the envelope), and the
envelope itself (``envelope.v1.json``); ``tasks.json`` says which contract each task's body
is. :func:`export` writes them under ``contracts/``, where they are committed;
:func:`check` compares the code's schemas with the committed ones
(:func:`app.domain.contracts.compare`) and says what a change breaks.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from app.domain.contracts import Change, compare
from app.domain.events import REGISTRY, VERSIONS, Envelope, Event
from app.domain.saga import CHECKOUT
from app.messaging.tasks import task_bodies

#: Where the contracts are committed: ``contracts/`` at the top of the repository.
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "contracts"

#: The version of the envelope's own schema (the wire format).
ENVELOPE_VERSION = 1

#: The file naming which contract each task's message body is.
TASK_INDEX = "tasks.json"

EXPORT = "python -m app schemas export"


@dataclass(frozen=True)
class Contract:
    """One message's schema at one version: ``kind`` is event, command or envelope."""

    kind: str
    name: str
    version: int
    model: type[BaseModel]

    @property
    def path(self) -> str:
        """Its file, relative to the contracts directory."""
        if self.kind == "envelope":
            return f"envelope.v{self.version}.json"
        return f"{self.kind}s/{self.name}.v{self.version}.json"

    @property
    def label(self) -> str:
        if self.kind == "envelope":
            return f"envelope v{self.version}"
        return f"{self.kind} {self.name} v{self.version}"

    def schema(self) -> dict[str, Any]:
        return self.model.model_json_schema(mode="validation")


@dataclass(frozen=True)
class Contracts:
    """The contracts of one version of the code, and which one each task's body is."""

    all: tuple[Contract, ...]
    tasks: Mapping[str, str]  # task name -> the path of its body's contract

    def files(self) -> dict[str, str]:
        """Each file's path and text, as :func:`export` writes them."""
        written = {contract.path: render(contract.schema()) for contract in self.all}
        written[TASK_INDEX] = render(dict(self.tasks))
        return written


def contracts(
    registry: Mapping[str, type[Event]] = REGISTRY,
    bodies: Mapping[str, type[BaseModel]] | None = None,
    envelope: type[BaseModel] = Envelope,
    versions: Mapping[tuple[str, int], type[Event]] = VERSIONS,
) -> Contracts:
    """The code's contracts: the registered events (every version each type is read in:
    ``versions``, then each type's latest in ``registry``), the tasks' bodies (the checkout
    saga's tasks by default) and the envelope. Give a copy of any of them to see what a
    change to it would do."""
    bodies = task_bodies(CHECKOUT) if bodies is None else bodies
    wrapper = Contract("envelope", "Envelope", ENVELOPE_VERSION, envelope)
    models = {key: cls for key, cls in versions.items() if key[0] in registry}
    models.update({(name, cls.VERSION): cls for name, cls in registry.items()})
    events = [Contract("event", name, version, cls) for (name, version), cls in sorted(models.items())]
    commands = [Contract("command", task, 1, model) for task, model in sorted(bodies.items()) if model is not Envelope]
    by_task = {c.name: c.path for c in commands}
    tasks = {task: by_task.get(task, wrapper.path) for task in sorted(bodies)}
    return Contracts((wrapper, *events, *commands), tasks)


def render(document: Mapping[str, Any]) -> str:
    """A schema as its file holds it: pretty, keys sorted, one newline at the end."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def export(directory: Path = DEFAULT_DIR, code: Contracts | None = None) -> list[Path]:
    """Write the code's contracts under ``directory``, and remove the contract files of
    versions the code no longer has; the files written."""
    files = (code or contracts()).files()
    for stale in _committed(directory):
        if stale not in files:
            (directory / stale).unlink()
    written = []
    for relative, text in sorted(files.items()):
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


@dataclass
class Report:
    """What :func:`check` found: breaking changes, compatible ones, contracts the code has
    and ``directory`` lacks (export them), and whether the files differ from an export at all."""

    breaking: list[str] = field(default_factory=list)
    compatible: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    current: bool = True

    @property
    def ok(self) -> bool:
        return not self.breaking and not self.missing


def check(directory: Path = DEFAULT_DIR, code: Contracts | None = None) -> Report:
    """Compare the code's contracts with those committed under ``directory``."""
    code = code or contracts()
    files = code.files()
    report = Report(current=all(_text(directory / p) == text for p, text in files.items()))
    committed = _committed(directory)
    for contract in code.all:
        if contract.path not in committed:
            report.missing.append(f"{contract.label} ({contract.path}): run `{EXPORT}`")
            continue
        old = _load(directory / contract.path)
        for change in compare(old, contract.schema()):
            _note(report, contract.label, change)
    known = {c.path for c in code.all}
    for path in sorted(committed - known - {TASK_INDEX}):
        report.breaking.append(f"{_label_of(path)}: version removed (no model in the code for {path})")
    _check_tasks(report, directory, code.tasks)
    if not report.current and report.ok and not report.compatible:
        report.compatible.append(f"titles or descriptions changed: run `{EXPORT}` to record them")
    return report


def _note(report: Report, label: str, change: Change) -> None:
    (report.breaking if change.breaking else report.compatible).append(f"{label}: {change}")


def _check_tasks(report: Report, directory: Path, tasks: Mapping[str, str]) -> None:
    index = directory / TASK_INDEX
    if not index.is_file():
        report.missing.append(f"the task index ({TASK_INDEX}): run `{EXPORT}`")
        return
    committed: dict[str, str] = _load(index)
    for task, path in sorted(committed.items()):
        if task not in tasks:
            report.breaking.append(f"task {task}: removed (its body was {path})")
        elif tasks[task] != path:
            report.breaking.append(f"task {task}: its body is now {tasks[task]}, was {path}")
    for task in sorted(set(tasks) - set(committed)):
        report.missing.append(f"task {task} ({TASK_INDEX}): run `{EXPORT}`")


def _committed(directory: Path) -> set[str]:
    """The contract files under ``directory``, by relative path."""
    if not directory.is_dir():
        return set()
    return {path.relative_to(directory).as_posix() for path in directory.rglob("*.json")}


def _label_of(path: str) -> str:
    """``events/OrderPlaced.v1.json`` -> ``event OrderPlaced v1``."""
    folder, _, file = path.rpartition("/")
    name, _, version = file.removesuffix(".json").rpartition(".v")
    return f"{folder.removesuffix('s')} {name} v{version}" if folder else f"envelope v{version}"


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a JSON document ({exc})") from None


def _text(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.is_file() else None

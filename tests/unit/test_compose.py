"""docker-compose.yml, .env.example and the Procfile, checked without Docker.

No Docker engine runs where the tests do, so the files are checked for what would make a
deployment fail at start or run wrong: each must parse; every command (and every
healthcheck) must name a worker module whose Celery app exists, queues of the system, a
real ``celery`` option and a real ``python -m app`` subcommand; every CHECKOUT_* variable
set must be a setting, and the values must pass the settings' own validation; every process
must name the same extensions (CHECKOUT_EXTENSIONS), and every queue of the settings the
files give — the services', then each extension's — must have exactly one worker; beat, the
outbox relay, the HTTP API (on every interface of its container, published on the host's
loopback only; on 127.0.0.1 under `make up`) and Flower must be there; every service needs
a healthcheck; every interpolated variable must come from .env.example, and no password may
be written in the files. Failures name the service and the variable or argument at fault.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import json
import os
import re
import secrets
import shlex
import subprocess
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import pytest
import yaml
from celery import Celery
from honcho.environ import parse_procfile
from pydantic import ValidationError

from app.cli import parse_args
from config.settings import SERVICES, Settings, variables

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
#: The same system on a three-node RabbitMQ cluster (docs/deployment.md, A RabbitMQ cluster).
CLUSTER_FILE = ROOT / "docker-compose.cluster.yml"
#: Every check of a compose file runs on both.
FILES = pytest.mark.parametrize("path", [COMPOSE_FILE, CLUSTER_FILE], ids=["compose", "cluster"])
ENV_EXAMPLE = ROOT / ".env.example"
PROCFILE = ROOT / "Procfile"

SETTINGS_VARIABLES = {env for env, _, _ in variables()}
#: The keys of the compose specification this file may use (compose refuses unknown ones).
SERVICE_KEYS = {
    "build", "image", "command", "entrypoint", "environment", "env_file", "healthcheck", "depends_on", "ports",
    "expose", "volumes", "restart", "hostname", "deploy", "networks", "labels", "user", "working_dir", "init",
    "stop_signal", "stop_grace_period", "profiles", "logging", "ulimits", "extra_hosts", "pull_policy", "secrets",
}  # fmt: skip
HEALTHCHECK_KEYS = {"test", "interval", "timeout", "retries", "start_period", "start_interval", "disable"}
SECRET_NAME = re.compile(r"PASS|SECRET|AUTH|TOKEN|COOKIE", re.IGNORECASE)

#: ``$$``, ``${NAME}``, ``${NAME:-default}``, ``${NAME-default}``, ``${NAME:?error}``, ``${NAME?error}``, ``$NAME``
REFERENCE = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


class Unresolved(Exception):
    """A ``${NAME:?...}`` (or plain ``${NAME}``) with NAME unset, as compose would refuse it."""

    def __init__(self, name: str, message: str, where: str = "") -> None:
        super().__init__(f"{where or 'docker-compose.yml'}: ${{{name}}} is not set ({message})")
        self.name = name
        self.message = message


@pytest.fixture(autouse=True)
def scratch_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing a worker module builds its runtime (it connects to nothing): give it default
    settings over a scratch directory, whatever this shell's CHECKOUT_* variables say — but
    for CHECKOUT_EXTENSIONS, which each command is read with as its own process has it."""
    for key in [k for k in os.environ if k.startswith("CHECKOUT_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("CHECKOUT_DATA_DIR", str(tmp_path))


# --- reading the files ---------------------------------------------------------------


class StrictLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys; compose refuses the file. So refuse it too."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise AssertionError(f"docker-compose.yml line {line}: {key!r} again (first on line {seen[key]})")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    data = yaml.load(path.read_text(), Loader=StrictLoader)
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), f"{path.name} has no services"
    return data


def env_example() -> dict[str, str]:
    """KEY=VALUE lines of .env.example (comments and blank lines skipped)."""
    values = {}
    for number, line in enumerate(ENV_EXAMPLE.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key), f".env.example line {number}: {line!r}"
        values[key] = value
    return values


def strings(node: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """(path, text) of every string value in a parsed YAML tree (compose does not
    interpolate mapping keys)."""
    if isinstance(node, str):
        yield where, node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from strings(value, f"{where}[{i}]")


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation of one string."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("name") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        value = env.get(name)
        empty_counts = op is not None and op.startswith(":")
        missing = value is None or (empty_counts and value == "")
        if op in (":-", "-"):
            return arg if missing else str(value)
        if missing and (op in (":?", "?") or op is None):
            raise Unresolved(name, arg or "is not set")
        return str(value or "")

    return REFERENCE.sub(one, text)


def resolve(node: Any, env: Mapping[str, str], where: str = "") -> Any:
    """The tree with every string interpolated; Unresolved names where a variable is missing."""
    if isinstance(node, str):
        try:
            return interpolate(node, env)
        except Unresolved as exc:
            raise Unresolved(exc.name, exc.message, where) from None
    if isinstance(node, dict):
        return {key: resolve(value, env, f"{where}.{key}") for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(value, env, f"{where}[{i}]") for i, value in enumerate(node)]
    return node


def references(node: Any) -> dict[str, set[str]]:
    """Variable name -> the operators it is used with ("" for none) anywhere in the tree."""
    found: dict[str, set[str]] = {}
    for _, text in strings(node):
        for match in REFERENCE.finditer(text):
            name = match.group("name") or match.group("bare")
            if name:
                found.setdefault(name, set()).add(match.group("op") or "")
    return found


def filled_env() -> dict[str, str]:
    """.env.example as someone who followed it would have it: every empty value filled in."""
    return {key: value or secrets.token_hex(16) for key, value in env_example().items()}


def passwords_only() -> dict[str, str]:
    """Only what must be set (the passwords): every other variable takes the file's default."""
    return {key: secrets.token_hex(16) for key, value in env_example().items() if not value}


def rabbitmq_nodes(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run a RabbitMQ node."""
    return {name: svc for name, svc in data["services"].items() if str(svc.get("image", "")).startswith("rabbitmq:")}


def project_services(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services built from this repository (the rest are the servers' images)."""
    return {name: svc for name, svc in data["services"].items() if "build" in svc}


def argv(value: Any) -> list[str]:
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def healthcheck_argv(service: dict[str, Any]) -> tuple[str, list[str]]:
    test = (service.get("healthcheck") or {}).get("test")
    if not test or test == ["NONE"]:
        return "NONE", []
    if isinstance(test, str):
        return "CMD-SHELL", [test]
    return test[0], [str(t) for t in test[1:]]


# --- what a command means --------------------------------------------------------------


def strip_shell(tokens: list[str]) -> tuple[dict[str, str], list[str]]:
    """Leading ``NAME=value`` assignments and an ``exec``, as in a Procfile line."""
    assigned = {}
    while tokens and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", tokens[0]):
        name, _, value = tokens[0].partition("=")
        assigned[name] = value
        tokens = tokens[1:]
    if tokens[:1] == ["exec"]:
        tokens = tokens[1:]
    return assigned, tokens


def celery_command(tokens: list[str], extensions: str = "") -> dict[str, Any]:
    """Parse ``celery -A MODULE SUBCOMMAND ...`` with Celery's own command line (nothing runs):
    the module must import and hold a Celery app, and every option must exist. The module is
    imported with ``CHECKOUT_EXTENSIONS=extensions``, as its process has it: an extension's
    worker module refuses to load unless the extension is named there."""
    from celery.bin.base import CLIContext
    from celery.bin.celery import celery as celery_cli

    if "-A" not in tokens and "--app" not in tokens:
        raise AssertionError("no -A MODULE")
    module_name = tokens[tokens.index("-A" if "-A" in tokens else "--app") + 1]
    try:
        with mock.patch.dict(os.environ, {"CHECKOUT_EXTENSIONS": extensions}):
            module = importlib.import_module(module_name)
    except (ImportError, ValueError, SystemExit) as exc:
        raise AssertionError(f"-A {module_name}: cannot import it ({exc})") from None
    app = getattr(module, "app", None)
    if not isinstance(app, Celery):
        raise AssertionError(f"-A {module_name}: it has no Celery app named `app`")
    obj = CLIContext(app=app, no_color=True, workdir=None, quiet=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # click's protected_args
        try:
            ctx = celery_cli.make_context("celery", list(tokens), obj=obj)
            name, cmd, rest = celery_cli.resolve_command(ctx, ctx.protected_args + ctx.args)
            assert cmd is not None and name is not None
            sub = cmd.make_context(name, rest, parent=ctx, obj=obj)
        except Exception as exc:  # click's usage errors: an unknown option or subcommand
            raise AssertionError(f"celery {' '.join(tokens)}: {exc}") from None
    return {"module": module_name, "app": app, "subcommand": name, "params": sub.params}


def python_command(tokens: list[str]) -> dict[str, Any]:
    """``python -m app ...`` (parsed by the CLI's own parser), ``python -m app.operations.flower`` or ``python -c``."""
    if tokens[:1] == ["-c"]:
        compile(tokens[1], "<healthcheck>", "exec")
        return {"module": None}
    if tokens[:1] != ["-m"] or len(tokens) < 2:
        raise AssertionError(f"python {' '.join(tokens)}: expected python -m MODULE or python -c CODE")
    module_name, rest = tokens[1], tokens[2:]
    if module_name == "app":
        errors = io.StringIO()
        with contextlib.redirect_stderr(errors):
            try:
                args = parse_args(rest)
            except SystemExit:
                raise AssertionError(f"python -m app {' '.join(rest)}: {errors.getvalue().strip()}") from None
        return {"module": "app", "args": args}
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AssertionError(f"python -m {module_name}: cannot import it ({exc})") from None
    if not callable(getattr(module, "main", None)):
        raise AssertionError(f"python -m {module_name}: the module has no main()")
    if rest:
        raise AssertionError(f"python -m {module_name} takes no arguments (it reads the settings), got {rest}")
    return {"module": module_name}


def meaning(tokens: list[str], extensions: str = "") -> dict[str, Any]:
    """What a project command runs, in a process whose CHECKOUT_EXTENSIONS is ``extensions``;
    AssertionError saying what is wrong with it."""
    if not tokens:
        raise AssertionError("empty command")
    program, rest = Path(tokens[0]).name, tokens[1:]
    if program == "celery":
        return {"program": "celery", **celery_command(rest, extensions)}
    if program in {"python", "python3"}:
        return {"program": "python", **python_command(rest)}
    raise AssertionError(f"{tokens[0]}: not celery or python, so not a process of this project")


def role(found: dict[str, Any]) -> str:
    """worker, beat, relay, flower, metrics ... of a parsed command."""
    if found["program"] == "celery":
        return str(found["subcommand"])
    if found["module"] == "app":
        return str(found["args"].command)
    return str(found["module"])


def worker_queues(found: dict[str, Any]) -> list[str]:
    queues: list[str] = []
    for item in found["params"].get("queues") or []:
        queues.extend(q for q in item.split(",") if q)
    return queues


def settings_of(environment: Mapping[str, Any], where: str) -> Settings:
    """The settings a process with ``environment`` reads (AssertionError naming ``where``
    when they refuse it)."""
    fields = {k.removeprefix("CHECKOUT_").lower(): str(v) for k, v in environment.items() if k.startswith("CHECKOUT_")}
    try:
        return Settings(**fields)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise AssertionError(f"{where}: the settings refuse its environment: {exc}") from None


def system_queues(settings: Mapping[str, Settings]) -> list[str]:
    """Every queue the processes' settings name (Settings.queues): the services', then each
    extension's."""
    return list(dict.fromkeys(q for s in settings.values() for q in s.queues))


def extension_problems(settings: Mapping[str, Settings], where: str) -> list[str]:
    """Processes that name other extensions than the rest: each process sends the events it
    commits only to the extensions it knows of, so one without an extension starves it."""
    named = Counter(s.extensions for s in settings.values())
    if len(named) < 2:
        return []
    usual = named.most_common(1)[0][0]
    return [
        f"{where} {name}: CHECKOUT_EXTENSIONS={s.extensions!r}, the others {usual!r} (every process needs the same)"
        for name, s in settings.items()
        if s.extensions != usual
    ]


# --- docker-compose.yml ------------------------------------------------------------------


def service_settings(data: dict[str, Any], given: Mapping[str, str] | None = None) -> dict[str, Settings]:
    """Service -> the settings its process reads, from its environment as compose resolves it
    with ``given`` (.env.example followed, by default); AssertionError naming the service
    they refuse."""
    resolved = resolve(data, filled_env() if given is None else given)
    return {
        name: settings_of(svc.get("environment") or {}, f"service {name}")
        for name, svc in project_services(resolved).items()
    }


def commands(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Service -> what its command runs, for every project service (AssertionError naming
    the service when one does not make sense)."""
    settings = service_settings(data)
    found = {}
    for name, svc in project_services(data).items():
        if "command" not in svc:
            raise AssertionError(f"service {name}: no command (the image's default only prints --help)")
        try:
            found[name] = meaning(argv(svc["command"]), settings[name].extensions)
        except AssertionError as exc:
            raise AssertionError(f"service {name}: command: {exc}") from None
    return found


@FILES
def test_the_compose_file_parses_with_the_services_of_the_design(path: Path) -> None:
    data = compose(path)
    services = data["services"]
    unknown = [key for key in data if key not in {"name", "services", "volumes", "networks"} and key[:2] != "x-"]
    assert not unknown, f"{path.name}: unknown top-level keys {unknown}"
    for name, svc in services.items():
        assert not set(svc) - SERVICE_KEYS, f"service {name}: unknown keys {sorted(set(svc) - SERVICE_KEYS)}"
        extra = set(svc.get("healthcheck") or {}) - HEALTHCHECK_KEYS
        assert not extra, f"service {name}: unknown healthcheck keys {sorted(extra)}"
    assert {"redis", "postgres"} <= set(services), sorted(services)
    rabbits = rabbitmq_nodes(data)
    assert len(rabbits) == (3 if path == CLUSTER_FILE else 1), sorted(rabbits)
    assert all(svc["image"].endswith("-management") for svc in rabbits.values()), "RabbitMQ without its management UI"
    published = [name for name, svc in rabbits.items() if "15672:15672" in " ".join(svc.get("ports", []))]
    assert len(published) == 1, f"RabbitMQ's management UI published by {published} (want one node)"
    for name, svc in project_services(data).items():
        assert svc.get("restart") == "unless-stopped", f"service {name}: restart is {svc.get('restart')!r}"


def command_problems(data: dict[str, Any]) -> list[str]:
    """What is wrong with each service's command and healthcheck; a worker's queues must be
    queues of its own process's settings."""
    settings = service_settings(data)
    problems = []
    for name, svc in project_services(data).items():
        own = settings[name]
        for what, tokens in (("command", argv(svc.get("command", []))), ("healthcheck", healthcheck_argv(svc)[1])):
            if what == "healthcheck" and not tokens:
                continue  # test_every_service_has_a_healthcheck_that_checks_that_service says so
            try:
                found = meaning(tokens, own.extensions)
            except AssertionError as exc:
                problems.append(f"service {name}: {what}: {exc}")
                continue
            if found["program"] == "celery" and found["subcommand"] == "worker":
                wrong = [q for q in worker_queues(found) if q not in own.queues]
                if wrong or not worker_queues(found):
                    problems.append(
                        f"service {name}: -Q {wrong or 'missing'}: its queues are {list(own.queues)} "
                        f"(the services', then those of CHECKOUT_EXTENSIONS={own.extensions!r})"
                    )
    return problems


def worker_problems(data: dict[str, Any]) -> list[str]:
    """Queues of the system without exactly one worker service, and worker services that
    consume more than one queue or are not named after theirs."""
    found = commands(data)
    expected = system_queues(service_settings(data))
    workers = {name: worker_queues(f) for name, f in found.items() if role(f) == "worker"}
    per_queue = Counter(q for queues in workers.values() for q in queues)
    problems = [
        f"queue {q}: {per_queue[q]} worker services (want exactly 1"
        + ("" if q in SERVICES else f": CHECKOUT_EXTENSIONS names the extension {q}")
        + ")"
        for q in expected
        if per_queue[q] != 1
    ]
    for name, queues in workers.items():
        if len(queues) != 1:
            problems.append(f"service {name}: consumes {queues}; one queue per worker service, so each scales alone")
        node = found[name]["params"].get("hostname") or ""
        if queues and not node.startswith(f"{queues[0]}@"):
            problems.append(f"service {name}: -n {node!r} should be {queues[0]}@%h (the healthcheck asks for it)")
    return problems


@FILES
def test_every_command_names_a_real_module_queue_and_subcommand(path: Path) -> None:
    problems = command_problems(compose(path))
    assert not problems, "\n".join(problems)


@FILES
def test_every_service_queue_has_exactly_one_worker_service(path: Path) -> None:
    problems = worker_problems(compose(path))
    assert not problems, "\n".join(problems)


def mismatched_extensions(data: dict[str, Any], given: Mapping[str, str] | None = None) -> list[str]:
    return extension_problems(service_settings(data, given), "service")


@pytest.mark.parametrize("given", ["the .env.example values", "passwords only"])
@FILES
def test_every_service_names_the_same_extensions_sales_analytics_among_them(path: Path, given: str) -> None:
    env = filled_env() if given == "the .env.example values" else passwords_only()
    problems = mismatched_extensions(compose(path), env)
    for name, s in service_settings(compose(path), env).items():
        if "analytics" not in s.extension_targets:
            problems.append(f"service {name}: CHECKOUT_EXTENSIONS={s.extensions!r} does not name analytics")
    assert not problems, "\n".join(problems)


def drop_extensions(data: dict[str, Any]) -> None:
    for svc in project_services(data).values():
        (svc.get("environment") or {}).pop("CHECKOUT_EXTENSIONS", None)


def drop_analytics_worker(data: dict[str, Any]) -> None:
    del data["services"]["analytics"]


def add_worker_for_an_unknown_queue(data: dict[str, Any]) -> None:
    reports = copy.deepcopy(data["services"]["analytics"])
    reports["command"] = [{"analytics": "reports", "analytics@%h": "reports@%h"}.get(a, a) for a in reports["command"]]
    data["services"]["reports"] = reports


def drop_the_relays_extensions(data: dict[str, Any]) -> None:
    data["services"]["relay"]["environment"]["CHECKOUT_EXTENSIONS"] = ""


@pytest.mark.parametrize(
    ("change", "check", "expected"),
    [
        (drop_extensions, command_problems, "service analytics: "),
        (drop_analytics_worker, worker_problems, "queue analytics: 0 worker services"),
        (add_worker_for_an_unknown_queue, command_problems, "service reports: -Q ['reports']"),
        (drop_the_relays_extensions, mismatched_extensions, "service relay: CHECKOUT_EXTENSIONS=''"),
    ],
    ids=["no CHECKOUT_EXTENSIONS", "no analytics worker", "a worker for an unknown queue", "a relay without it"],
)
def test_the_queue_checks_follow_the_extensions_the_environment_names(
    change: Callable[[dict[str, Any]], None], check: Callable[[dict[str, Any]], list[str]], expected: str
) -> None:
    assert not check(compose())
    data = compose()
    change(data)
    problems = check(data)
    assert any(p.startswith(expected) for p in problems), problems


@FILES
def test_beat_the_relay_the_api_flower_and_the_metrics_exporter_run_once_each(path: Path) -> None:
    roles = Counter(role(f) for f in commands(compose(path)).values())
    for wanted in ("beat", "relay", "api", "app.operations.flower", "metrics"):
        assert roles[wanted] == 1, f"{roles[wanted]} services run {wanted} (want 1); roles: {dict(roles)}"


@FILES
def test_the_api_listens_in_its_container_published_on_this_hosts_loopback_only(path: Path) -> None:
    data = compose(path)
    (name,) = [n for n, f in commands(data).items() if role(f) == "api"]
    svc, args = data["services"][name], commands(data)[name]["args"]
    assert args.host == "0.0.0.0", f"service {name}: --host {args.host} (127.0.0.1 is unreachable from the host)"
    assert svc.get("ports") == [f"127.0.0.1:{args.port}:{args.port}"], f"service {name}: ports {svc.get('ports')}"
    kind, tokens = healthcheck_argv(svc)
    assert kind == "CMD" and f"http://127.0.0.1:{args.port}/health" in " ".join(tokens), tokens
    token = svc["environment"].get("CHECKOUT_API_TOKEN", "")
    assert token.startswith("${CHECKOUT_API_TOKEN:?"), f"service {name}: CHECKOUT_API_TOKEN is {token!r}"


@FILES
def test_every_service_has_a_healthcheck_that_checks_that_service(path: Path) -> None:
    data = compose(path)
    found = commands(data)
    problems = []
    for name, svc in data["services"].items():
        test = svc.get("healthcheck", {}).get("test")
        if not test or test == ["NONE"]:
            problems.append(f"service {name}: no healthcheck")
    for name, what in found.items():
        kind, tokens = healthcheck_argv(data["services"][name])
        if kind == "NONE":
            continue
        if kind != "CMD":
            problems.append(f"service {name}: healthcheck should be exec form (CMD), not {kind}")
            continue
        check = meaning(tokens)
        if role(what) == "worker":
            args = getattr(check.get("args"), "__dict__", {})
            if role(check) != "health" or args.get("service") != worker_queues(what) or not args.get("this_host"):
                problems.append(
                    f"service {name}: healthcheck should be python -m app health --service "
                    f"{' '.join(worker_queues(what))} --this-host (its own worker), not {tokens}"
                )
        elif role(what) == "beat":
            node = str(what["params"].get("hostname") or "").replace("%h", str(data["services"][name].get("hostname")))
            if not what["params"].get("remote_control"):
                problems.append(f"service {name}: beat needs --enable-remote-control to answer its healthcheck")
            if role(check) != "inspect" or check["params"].get("destination") != [node]:
                problems.append(f"service {name}: healthcheck should ping {node} (celery inspect ping --destination)")
        elif role(what) == "relay":
            if role(check) != "relay" or not check["args"].check:
                problems.append(f"service {name}: healthcheck should be python -m app relay --check")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("given", ["the .env.example values", "passwords only"])
@FILES
def test_every_checkout_variable_set_is_a_setting_and_valid(
    path: Path, given: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = resolve(compose(path), filled_env() if given == "the .env.example values" else passwords_only())
    for key in [k for k in os.environ if k.startswith("CHECKOUT_")]:
        monkeypatch.delenv(key)
    problems = []
    for name, svc in project_services(data).items():
        env = svc.get("environment") or {}
        assert isinstance(env, dict), f"service {name}: write environment as a mapping"
        unknown = sorted(k for k in env if k.startswith("CHECKOUT_") and k not in SETTINGS_VARIABLES)
        if unknown:
            problems.append(f"service {name}: {', '.join(unknown)} not settings (see `python -m app settings`)")
            continue
        fields = {k.removeprefix("CHECKOUT_").lower(): str(v) for k, v in env.items() if k.startswith("CHECKOUT_")}
        try:
            Settings(**fields)  # type: ignore[arg-type]
        except ValidationError as exc:
            problems.append(f"service {name}: the settings refuse its environment: {exc}")
    assert not problems, "\n".join(problems)


@FILES
def test_the_workers_leave_the_outbox_to_the_relay(path: Path) -> None:
    data = resolve(compose(path), filled_env())
    problems = []
    for name, what in commands(data).items():
        env = data["services"][name].get("environment") or {}
        if role(what) == "worker" and str(env.get("CHECKOUT_WORKER_OUTBOX_SWEEP")).lower() != "false":
            problems.append(f"service {name}: set CHECKOUT_WORKER_OUTBOX_SWEEP=false (the relay sweeps every outbox)")
        if role(what) == "relay" and not env.get("CHECKOUT_RELAY_HEARTBEAT_FILE"):
            problems.append(f"service {name}: set CHECKOUT_RELAY_HEARTBEAT_FILE (its healthcheck reads it)")
    assert not problems, "\n".join(problems)


@FILES
def test_interpolated_variables_come_from_the_env_example(path: Path) -> None:
    data = compose(path)
    used = references(data)
    example = env_example()
    required = sorted(name for name, ops in used.items() if ops & {"", ":?", "?"})
    missing = [name for name in required if name not in example]
    assert not missing, f"{path.name} needs {missing}, which .env.example does not list"
    every = set().union(*(references(compose(f)) for f in (COMPOSE_FILE, CLUSTER_FILE)))
    stale = sorted(set(example) - every)
    assert not stale, f".env.example lists {stale}, which no compose file uses"
    resolve(data, filled_env())  # everything resolves once the passwords are filled in


@FILES
def test_no_password_is_written_in_the_files(path: Path) -> None:
    data = compose(path)
    problems = []
    for where, text in strings(data):
        key = where.rsplit(".", 1)[-1]
        if SECRET_NAME.search(key) and "healthcheck" not in where:
            if not re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*:\?[^}]+\}", text):
                problems.append(f"{where}: set it as ${{VARIABLE:?message}}, not {text!r}")
        for url in re.findall(r"[a-z+]+://[^\s\"']+", text):
            userinfo = url.split("://", 1)[1].rpartition("@")[0]
            password = userinfo.partition(":")[2]
            if userinfo and not re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*:\?[^}]+\}", password):
                problems.append(f"{where}: the password in {url!r} should be ${{VARIABLE:?message}}")
    redis = data["services"]["redis"]
    requirepass = argv(redis["command"])[argv(redis["command"]).index("--requirepass") + 1]
    if not requirepass.startswith("${"):
        problems.append("redis: --requirepass should come from ${REDIS_PASSWORD:?...}")
    secrets_in_example = {k: v for k, v in env_example().items() if SECRET_NAME.search(k) and v}
    if secrets_in_example:
        problems.append(f".env.example gives {sorted(secrets_in_example)} a value: leave them empty, to be filled in")
    assert not problems, "\n".join(problems)


@FILES
def test_the_env_example_as_it_is_is_refused_until_the_passwords_are_set(path: Path) -> None:
    with pytest.raises(Unresolved) as refused:
        resolve(compose(path), env_example())
    assert SECRET_NAME.search(refused.value.name), refused.value


# --- Procfile and make up ----------------------------------------------------------------


def procfile(environment: Mapping[str, str]) -> dict[str, tuple[dict[str, str], dict[str, Any]]]:
    """Process name -> (variables it sets, what it runs), each process started with
    ``environment`` (what `make up` gives honcho: :func:`up_environment`)."""
    found = {}
    for name, line in parse_procfile(PROCFILE.read_text()).processes.items():
        assigned, tokens = strip_shell(shlex.split(interpolate(line, environment)))
        try:
            found[name] = (assigned, meaning(tokens, ({**environment, **assigned}).get("CHECKOUT_EXTENSIONS", "")))
        except AssertionError as exc:
            raise AssertionError(f"Procfile {name}: {exc}") from None
    return found


SERVERS = {"CHECKOUT_BROKER_URL": "redis://127.0.0.1:6379/0", "CHECKOUT_DATABASE_URL": "sqlite:///x.db"}
ANALYTICS = {"CHECKOUT_EXTENSIONS": "analytics"}

#: Stands in for /bin/sh under `make up`: records each recipe line and its environment, runs none.
RECORDING_SHELL = """#!{python}
import json, os, sys
with open(os.environ["UP_RECIPE_LOG"], "a") as log:
    log.write(json.dumps({{"line": sys.argv[-1], "environ": dict(os.environ)}}) + "\\n")
"""


def up_environment(env: dict[str, str], scratch: Path) -> dict[str, str]:
    """The environment `make up` starts honcho with, and so every process of the Procfile
    (honcho reads no .env: --env /dev/null): make runs the recipe through a shell that
    records each line's environment and runs nothing."""
    shell, log = scratch / "recording-sh", scratch / "recipe.jsonl"
    shell.write_text(RECORDING_SHELL.format(python=sys.executable))
    shell.chmod(0o755)
    log.unlink(missing_ok=True)
    done = make("up", env | {"UP_RECIPE_LOG": str(log)}, f"SHELL={shell}")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    (environ,) = [line["environ"] for line in lines if "honcho start" in line["line"]]
    return {k: v for k, v in environ.items() if k != "UP_RECIPE_LOG"}


def up_settings(environment: Mapping[str, str]) -> dict[str, Settings]:
    """Procfile process -> the settings it reads when honcho starts it with ``environment``
    (and the variables its line sets)."""
    settings = {}
    for name, line in parse_procfile(PROCFILE.read_text()).processes.items():
        assigned, _ = strip_shell(shlex.split(line))
        settings[name] = settings_of({**environment, **assigned}, f"Procfile {name}")
    return settings


@pytest.mark.timeout(120)
def test_the_procfile_runs_one_worker_per_queue_beat_the_relay_and_the_api(tmp_path: Path) -> None:
    environment = up_environment(SERVERS | ANALYTICS, tmp_path)
    processes = procfile(environment)
    queues = system_queues(up_settings(environment))
    problems = []
    workers = {n: worker_queues(f) for n, (_, f) in processes.items() if role(f) == "worker"}
    for name, queues_of in workers.items():
        if queues_of != [name]:
            problems.append(f"Procfile {name}: consumes {queues_of}; name each worker after its one queue")
        if processes[name][0].get("CHECKOUT_WORKER_OUTBOX_SWEEP") != "false":
            problems.append(f"Procfile {name}: set CHECKOUT_WORKER_OUTBOX_SWEEP=false (the relay sweeps)")
    if sorted(q for queues_of in workers.values() for q in queues_of) != sorted(queues):
        problems.append(
            f"Procfile workers consume {workers}; want one per queue of {queues} (the services', then those "
            "of the CHECKOUT_EXTENSIONS `make up` gives)"
        )
    roles = Counter(role(f) for _, f in processes.values())
    for wanted in ("beat", "relay", "api", "app.operations.flower", "metrics"):
        if roles[wanted] != 1:
            problems.append(f"Procfile: {roles[wanted]} processes run {wanted} (want 1)")
    api = [f["args"] for _, f in processes.values() if role(f) == "api"]
    if api and (api[0].host, api[0].port) != ("127.0.0.1", 8000):
        problems.append(f"Procfile api: on {api[0].host}:{api[0].port}, not 127.0.0.1:8000 (as `make api`)")
    if api and procfile(environment | {"API_PORT": "8123"})["api"][1]["args"].port != 8123:
        problems.append("Procfile api: --port does not follow API_PORT")
    for name, (assigned, _) in processes.items():
        unknown = sorted(k for k in assigned if k not in SETTINGS_VARIABLES)
        if unknown:
            problems.append(f"Procfile {name}: {unknown} not settings")
    assert not problems, "\n".join(problems)


def make(target: str, env: dict[str, str], *options: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CHECKOUT_", "MAKE")) and k != "METRICS"}
    return subprocess.run(
        ["make", "--no-print-directory", "-o", ".venv/.installed", *options, target],
        cwd=ROOT,
        env=clean | env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def up_processes(env: dict[str, str]) -> list[str]:
    """The Procfile processes `make up` would start with ``env`` (read from `make -n`)."""
    done = make("up", env, "-n")
    assert done.returncode == 0, done.stdout + done.stderr
    (line,) = [line for line in done.stdout.splitlines() if "honcho start" in line]
    return shlex.split(line)[shlex.split(line).index("Procfile") + 1 :]


@pytest.mark.timeout(120)
def test_make_up_starts_the_workers_beat_the_relay_the_api_and_flower_or_metrics_when_asked(tmp_path: Path) -> None:
    servers = SERVERS | ANALYTICS
    environment = up_environment(servers, tmp_path)
    assert set(procfile(environment)) >= {"flower", "metrics"}
    queues = system_queues(up_settings(environment))
    assert "analytics" in queues, f"make up runs the queues {queues}, without sales analytics (CHECKOUT_EXTENSIONS)"
    core = [*queues, "beat", "relay", "api"]
    assert up_processes(servers) == core
    # The analytics worker runs while CHECKOUT_EXTENSIONS names analytics, and only then.
    without_analytics = [*SERVICES, "beat", "relay", "api"]
    assert up_processes(SERVERS) == without_analytics
    assert up_processes(SERVERS | {"CHECKOUT_EXTENSIONS": "notifications=pkg.mod:ext"}) == without_analytics
    assert up_processes(SERVERS | {"CHECKOUT_EXTENSIONS": "notifications=pkg.mod:ext, analytics"}) == core
    flower = {"CHECKOUT_FLOWER_USER": "ops", "CHECKOUT_FLOWER_PASSWORD": secrets.token_hex(8)}
    assert up_processes(servers | flower) == [*core, "flower"]
    assert up_processes(servers | {"CHECKOUT_FLOWER_USER": "ops"}) == core  # no password, no Flower
    assert up_processes(servers | {"METRICS": "1"}) == [*core, "metrics"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("shell", "expected"),
    [
        ({}, ""),
        ({"CHECKOUT_EXTENSIONS": "analytics"}, "analytics"),
        ({"CHECKOUT_EXTENSIONS": "analytics,n=p.m:e"}, "analytics,n=p.m:e"),
    ],
    ids=["by default: none", "analytics", "the shell's"],
)
def test_every_process_of_make_up_sees_the_same_extensions(
    shell: dict[str, str], expected: str, tmp_path: Path
) -> None:
    settings = up_settings(up_environment(SERVERS | shell, tmp_path))
    problems = extension_problems(settings, "Procfile")
    problems += [
        f"Procfile {name}: CHECKOUT_EXTENSIONS={s.extensions!r}, want {expected!r}"
        for name, s in settings.items()
        if s.extensions != expected
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("broker", [None, "memory://localhost/"])
def test_make_up_refuses_the_embedded_broker(broker: str | None) -> None:
    env = {"CHECKOUT_DATABASE_URL": "sqlite:///x.db"} | ({"CHECKOUT_BROKER_URL": broker} if broker else {})
    done = make("up", env)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "make up: set CHECKOUT_BROKER_URL" in done.stderr and "memory://" in done.stderr, done.stderr
    assert "honcho" not in done.stdout


@pytest.mark.timeout(120)
def test_make_up_refuses_without_a_database_url() -> None:
    done = make("up", {"CHECKOUT_BROKER_URL": "redis://127.0.0.1:6379/0"})
    assert done.returncode == 2, done.stdout + done.stderr
    assert "make up: set CHECKOUT_DATABASE_URL" in done.stderr, done.stderr


# --- docker-compose.cluster.yml -------------------------------------------------------------


def test_the_cluster_file_runs_three_rabbitmq_nodes_as_one_cluster_with_quorum_queues() -> None:
    """Three nodes with their own names and data, one cookie, one peer discovery list naming
    them all; every process is given all three as its failover list and quorum queues."""
    data = resolve(compose(CLUSTER_FILE), filled_env())
    raw = compose(CLUSTER_FILE)
    nodes = rabbitmq_nodes(data)
    hostnames = {name: svc.get("hostname") for name, svc in nodes.items()}
    assert hostnames == {name: name for name in nodes} and len(set(hostnames.values())) == 3, hostnames
    assert len({svc["image"] for svc in nodes.values()}) == 1, "every node runs the same RabbitMQ"
    cookies = {str(rabbitmq_nodes(raw)[name]["environment"].get("RABBITMQ_ERLANG_COOKIE")) for name in nodes}
    assert len(cookies) == 1 and next(iter(cookies)).startswith("${RABBITMQ_ERLANG_COOKIE:?"), cookies
    peers: set[str] = set()
    for name, svc in nodes.items():
        volumes = [str(v) for v in svc.get("volumes", [])]
        data_volumes = [v.split(":")[0] for v in volumes if v.endswith(":/var/lib/rabbitmq")]
        assert data_volumes == [f"{name}-data"], f"service {name}: its own data volume, not {volumes}"
        assert data_volumes[0] in data["volumes"], f"volume {data_volumes[0]} is not declared"
        (config,) = [v.split(":")[0] for v in volumes if ":/etc/rabbitmq/conf.d/" in v]
        text = (ROOT / config).read_text()
        assert "cluster_formation.peer_discovery_backend = classic_config" in text, config
        peers |= set(re.findall(r"^cluster_formation\.classic_config\.nodes\.\d+ = (\S+)$", text, re.MULTILINE))
    assert peers == {f"rabbit@{host}" for host in hostnames.values()}, peers

    problems = []
    for name, svc in project_services(data).items():
        env = svc.get("environment") or {}
        settings = settings_of(env, f"service {name}")
        urls = settings.broker_url.split(";")
        hosts = [urlsplit(url).hostname for url in urls]
        if sorted(hosts) != sorted(hostnames.values()):
            problems.append(f"service {name}: CHECKOUT_BROKER_URL names {hosts}, not every node")
        if settings.rabbitmq_queue_type != "quorum":
            problems.append(f"service {name}: CHECKOUT_RABBITMQ_QUEUE_TYPE is {settings.rabbitmq_queue_type}")
        waits = set(svc.get("depends_on") or {})
        if not set(nodes) <= waits and role(meaning(argv(svc["command"]))) != "app.operations.flower":
            problems.append(f"service {name}: starts before every node is healthy ({sorted(waits)})")
    assert not problems, "\n".join(problems)

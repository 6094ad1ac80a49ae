"""Workflow definitions: parsing YAML or JSON, and validating it with errors that name the path.

``parse_definition(document)`` returns a :class:`Definition` or raises :class:`DefinitionError`
listing every problem found as ``(path, message)``, e.g. ``steps.test.needs[0]: unknown step 'biuld'``.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any, get_args

import yaml

from control_plane.approvals import DECIDING_ROLES, Risk
from control_plane.workflows.cron import Cron, CronError, parse_cron
from control_plane.workflows.expressions import ExpressionError, Node, Template, condition, paths, template
from control_plane.workflows.outputs import Selector, SelectorError, compile_selector

RESULTS = ("succeeded", "failed", "skipped", "cancelled")
ON_CONFLICT = ("queue", "cancel_pending", "cancel_running")
MISSED = ("skip", "run_once", "run_all")
APPROVER_ROLES = tuple(sorted(DECIDING_ROLES))
RISKS = get_args(Risk)
INPUT_TYPES = {"string": str, "number": (int, float), "boolean": bool, "object": dict, "list": list}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,62}$")
_WORKFLOW_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_CAPABILITY = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?$")
_ROOTS = ("inputs", "steps", "matrix", "run", "workflow")
_STEP_FIELDS = ("status", "outputs")


class DefinitionError(ValueError):
    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{p}: {m}" for p, m in problems))


@dataclass(frozen=True)
class InputSpec:
    type: str
    default: Any = None
    required: bool = True
    description: str = ""


@dataclass(frozen=True)
class ApprovalSpec:
    roles: tuple[str, ...]
    principals: tuple[str, ...]
    risk: str
    min: int
    prevent_self: bool
    timeout_s: float
    on_expire: str
    subject: str


@dataclass(frozen=True)
class StepSpec:
    name: str
    phase: str
    type: str
    requires: tuple[str, ...]
    input: Any
    needs: dict[str, frozenset[str]]
    condition: Node | None
    matrix: dict[str, list[Any]]
    fail_fast: bool
    max_parallel: int | None
    timeout_s: float | None
    max_attempts: int | None
    backoff: dict[str, float]
    outputs: dict[str, Selector]
    approval: ApprovalSpec | None
    sandbox: dict[str, Any]

    def jobs(self) -> list[tuple[str, dict[str, Any] | None]]:
        """``(job name, matrix values)`` for each job the step expands to."""
        if not self.matrix:
            return [(self.name, None)]
        keys = list(self.matrix)
        combos = itertools.product(*(self.matrix[k] for k in keys))
        out = []
        for values in combos:
            chosen = dict(zip(keys, values, strict=True))
            label = ",".join(f"{k}={_label(v)}" for k, v in chosen.items())
            out.append((f"{self.name}[{label}]", chosen))
        return out


@dataclass(frozen=True)
class Concurrency:
    group: Template
    on_conflict: str


@dataclass(frozen=True)
class Schedule:
    cron_text: str
    cron: Cron
    missed: str
    inputs: dict[str, Any]


@dataclass(frozen=True)
class Definition:
    name: str
    description: str
    inputs: dict[str, InputSpec]
    steps: dict[str, StepSpec]
    finally_steps: dict[str, StepSpec]
    concurrency: Concurrency | None
    schedule: Schedule | None
    document: dict[str, Any] = field(repr=False)

    def all_steps(self) -> dict[str, StepSpec]:
        return {**self.steps, **self.finally_steps}

    def ancestors(self, step: str) -> set[str]:
        seen: set[str] = set()
        pending = list(self.steps[step].needs) if step in self.steps else []
        while pending:
            name = pending.pop()
            if name not in seen:
                seen.add(name)
                pending.extend(self.steps[name].needs)
        return seen


def _label(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def load_document(text: str) -> Any:
    """YAML (JSON is YAML too). YAML 1.1 reads a bare ``on`` key as ``true``: it is taken back as ``on``."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DefinitionError([("body", f"not valid YAML or JSON: {exc}".replace("\n", " "))]) from None
    if isinstance(document, dict) and True in document and "on" not in document:
        document["on"] = document.pop(True)
    return document


def parse_duration(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or text like 90s, 15m, 2h, 1d")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and value and (match := _DURATION.match(value.strip())) and any(match.groups()):
        d, h, m, s = match.groups()
        seconds = int(d or 0) * 86400 + int(h or 0) * 3600 + int(m or 0) * 60 + float(s or 0)
    else:
        raise ValueError(f"cannot read {value!r} as a duration (a number of seconds, or 90s, 15m, 2h, 1d)")
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


@dataclass(frozen=True)
class Limits:
    max_steps: int = 500
    max_matrix_jobs: int = 256
    max_timeout_s: float = 86400.0
    max_attempts: int = 20
    max_approval_timeout_s: float = 30 * 86400.0


class _Checker:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.problems: list[tuple[str, str]] = []

    def fail(self, path: str, message: str) -> None:
        self.problems.append((path, message))

    def mapping(self, value: Any, path: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict | None:
        if not isinstance(value, dict):
            self.fail(path, f"must be a mapping, not {_kind(value)}")
            return None
        for key in value:
            if not isinstance(key, str) or key not in allowed:
                self.fail(f"{path}.{key}" if path else str(key), f"unknown key (allowed: {', '.join(allowed)})")
        for key in required:
            if key not in value:
                self.fail(f"{path}.{key}" if path else key, "is required")
        return value

    def template(self, value: Any, path: str) -> list[Node]:
        """Parse every template in a JSON value; returns the expressions found."""
        nodes: list[Node] = []
        if isinstance(value, str):
            try:
                nodes.extend(template(value).nodes)
            except ExpressionError as exc:
                self.fail(path, f"bad expression: {exc}")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                nodes.extend(self.template(item, f"{path}[{i}]"))
        elif isinstance(value, dict):
            for key, item in value.items():
                nodes.extend(self.template(item, f"{path}.{key}"))
        elif not (value is None or isinstance(value, bool | int | float)):
            self.fail(path, f"must be JSON, not {_kind(value)}")
        return nodes


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), type(value).__name__)


_TOP = ("name", "description", "inputs", "concurrency", "on", "steps", "finally")
_STEP = ("type", "requires", "input", "needs", "if", "matrix", "fail_fast", "max_parallel", "timeout", "retry",
         "outputs", "approval", "sandbox", "description")


def parse_definition(document: Any, limits: Limits | None = None) -> Definition:
    c = _Checker(limits or Limits())
    doc = c.mapping(document, "", _TOP, ("name", "steps"))
    if doc is None:
        raise DefinitionError(c.problems)
    name = doc.get("name")
    if not isinstance(name, str) or not _WORKFLOW_NAME.match(name):
        if "name" in doc:
            c.fail("name", "must be 1-100 letters, digits, '_', '.' or '-', starting with a letter or digit")
    description = doc.get("description", "")
    if not isinstance(description, str):
        c.fail("description", "must be a string")
    inputs = _inputs(c, doc.get("inputs", {}))
    steps_doc = doc.get("steps")
    finally_doc = doc.get("finally", {})
    steps: dict[str, StepSpec] = {}
    finally_steps: dict[str, StepSpec] = {}
    if "steps" in doc and (not isinstance(steps_doc, dict) or not steps_doc):
        c.fail("steps", "must be a non-empty mapping of step names to steps")
        steps_doc = {}
    if not isinstance(finally_doc, dict):
        c.fail("finally", "must be a mapping of step names to steps")
        finally_doc = {}
    total = len(steps_doc or {}) + len(finally_doc)
    if total > c.limits.max_steps:
        c.fail("steps", f"a workflow holds at most {c.limits.max_steps} steps, not {total}")
    for phase, source, target in (("main", steps_doc or {}, steps), ("finally", finally_doc, finally_steps)):
        prefix = "steps" if phase == "main" else "finally"
        for step_name, body in source.items():
            path = f"{prefix}.{step_name}"
            if not isinstance(step_name, str) or not _NAME.match(step_name):
                c.fail(path, "a step name is 1-63 letters, digits, '_' or '-', starting with a letter or '_'")
                continue
            if phase == "finally" and step_name in steps:
                c.fail(path, f"step '{step_name}' is already a main step")
                continue
            spec = _step(c, step_name, body, path, phase)
            if spec is not None:
                target[step_name] = spec
    _check_needs(c, steps, steps_doc or {})
    concurrency = _concurrency(c, doc.get("concurrency"), inputs)
    schedule = _schedule(c, doc.get("on"), inputs)
    definition = Definition(
        name=name if isinstance(name, str) else "", description=description if isinstance(description, str) else "",
        inputs=inputs, steps=steps, finally_steps=finally_steps, concurrency=concurrency, schedule=schedule,
        document=doc,
    )
    if not c.problems:
        _check_references(c, definition)
    if c.problems:
        raise DefinitionError(c.problems)
    return definition


def _inputs(c: _Checker, value: Any) -> dict[str, InputSpec]:
    out: dict[str, InputSpec] = {}
    if not isinstance(value, dict):
        c.fail("inputs", "must be a mapping of input names to {type, default, description}")
        return out
    for key, spec in value.items():
        path = f"inputs.{key}"
        if not isinstance(key, str) or not _NAME.match(key):
            c.fail(path, "an input name is letters, digits, '_' or '-', starting with a letter or '_'")
            continue
        body = c.mapping(spec, path, ("type", "default", "required", "description"), ("type",))
        if body is None or "type" not in body:
            continue
        kind = body["type"]
        if kind not in INPUT_TYPES:
            c.fail(f"{path}.type", f"must be one of {', '.join(INPUT_TYPES)}")
            continue
        if "default" in body and not _is_type(body["default"], kind):
            c.fail(f"{path}.default", f"must be a {kind}")
        required = body.get("required", "default" not in body)
        if not isinstance(required, bool):
            c.fail(f"{path}.required", "must be true or false")
            required = True
        out[key] = InputSpec(kind, body.get("default"), required, str(body.get("description", "")))
    return out


def _is_type(value: Any, kind: str) -> bool:
    if kind == "number" and isinstance(value, bool):
        return False
    return isinstance(value, INPUT_TYPES[kind])


def _step(c: _Checker, name: str, body: Any, path: str, phase: str) -> StepSpec | None:
    doc = c.mapping(body, path, _STEP)
    if doc is None:
        return None
    before = len(c.problems)
    approval = _approval(c, doc.get("approval"), f"{path}.approval") if "approval" in doc else None
    if approval is not None and phase == "finally":
        c.fail(f"{path}.approval", "a finally step cannot wait for an approval")
    if "approval" in doc:
        for key in ("type", "requires", "input", "matrix", "outputs", "retry", "timeout", "sandbox"):
            if key in doc:
                c.fail(f"{path}.{key}", "an approval step runs no task, so it takes no " + key)
    step_type = doc.get("type", "shell")
    if not isinstance(step_type, str) or not _CAPABILITY.match(step_type):
        c.fail(f"{path}.type", "must be a task type (letters, digits, '_', '.', ':', '-')")
    requires = doc.get("requires", [])
    if not isinstance(requires, list) or not all(isinstance(r, str) and _CAPABILITY.match(r) for r in requires):
        c.fail(f"{path}.requires", "must be a list of capability names")
        requires = []
    step_input = doc.get("input", {})
    if not isinstance(step_input, dict):
        c.fail(f"{path}.input", "must be a mapping")
    c.template(step_input, f"{path}.input")
    needs = _needs(c, doc.get("needs", []), f"{path}.needs", phase)
    cond = None
    if "if" in doc:
        if not isinstance(doc["if"], str):
            c.fail(f"{path}.if", "must be an expression (a string)")
        else:
            try:
                cond = condition(doc["if"])
            except ExpressionError as exc:
                c.fail(f"{path}.if", f"bad expression: {exc}")
    matrix = _matrix(c, doc.get("matrix", {}), f"{path}.matrix")
    fail_fast = doc.get("fail_fast", True)
    if not isinstance(fail_fast, bool):
        c.fail(f"{path}.fail_fast", "must be true or false")
    max_parallel = doc.get("max_parallel")
    if max_parallel is not None and (isinstance(max_parallel, bool) or not isinstance(max_parallel, int)
                                     or max_parallel < 1):
        c.fail(f"{path}.max_parallel", "must be a whole number of at least 1")
    timeout_s = None
    if "timeout" in doc:
        try:
            timeout_s = parse_duration(doc["timeout"])
            if timeout_s > c.limits.max_timeout_s:
                c.fail(f"{path}.timeout", f"must be at most {c.limits.max_timeout_s:g}s")
        except ValueError as exc:
            c.fail(f"{path}.timeout", str(exc))
    max_attempts, backoff = _retry(c, doc.get("retry"), f"{path}.retry") if "retry" in doc else (None, {})
    outputs: dict[str, Selector] = {}
    raw_outputs = doc.get("outputs", {})
    if not isinstance(raw_outputs, dict):
        c.fail(f"{path}.outputs", "must be a mapping of output names to selectors like $.artifacts[0]")
        raw_outputs = {}
    for key, selector in raw_outputs.items():
        if not isinstance(key, str) or not _NAME.match(key):
            c.fail(f"{path}.outputs.{key}", "an output name is letters, digits, '_' or '-'")
            continue
        try:
            outputs[key] = compile_selector(selector if isinstance(selector, str) else "")
        except SelectorError as exc:
            c.fail(f"{path}.outputs.{key}", str(exc))
    sandbox = doc.get("sandbox", {})
    if not isinstance(sandbox, dict):
        c.fail(f"{path}.sandbox", "must be a mapping")
        sandbox = {}
    if len(c.problems) > before:
        return None
    return StepSpec(
        name=name, phase=phase, type=step_type, requires=tuple(sorted(set(requires))), input=step_input,
        needs=needs, condition=cond, matrix=matrix, fail_fast=fail_fast, max_parallel=max_parallel,
        timeout_s=timeout_s, max_attempts=max_attempts, backoff=backoff, outputs=outputs, approval=approval,
        sandbox=sandbox,
    )


def _needs(c: _Checker, value: Any, path: str, phase: str) -> dict[str, frozenset[str]]:
    if phase == "finally" and value:
        c.fail(path, "finally steps run after every main step; they take no needs")
        return {}
    if isinstance(value, list):
        out = {}
        for i, item in enumerate(value):
            if not isinstance(item, str):
                c.fail(f"{path}[{i}]", "must be a step name")
            elif item in out:
                c.fail(f"{path}[{i}]", f"step '{item}' is listed twice")
            else:
                out[item] = frozenset({"succeeded"})
        return out
    if isinstance(value, dict):
        out = {}
        for key, allowed in value.items():
            results = allowed.split("|") if isinstance(allowed, str) else allowed
            if not isinstance(results, list) or not results or not all(r in RESULTS for r in results):
                c.fail(f"{path}.{key}", f"must be results joined by '|' from {', '.join(RESULTS)}")
                continue
            out[str(key)] = frozenset(results)
        return out
    c.fail(path, "must be a list of step names or a mapping of step names to allowed results")
    return {}


def _check_needs(c: _Checker, steps: dict[str, StepSpec], source: dict[str, Any]) -> None:
    for name, spec in steps.items():
        listed = source[name].get("needs", []) if isinstance(source.get(name), dict) else []
        for i, dep in enumerate(spec.needs):
            where = f"steps.{name}.needs[{i}]" if isinstance(listed, list) else f"steps.{name}.needs.{dep}"
            if dep == name:
                c.fail(where, "a step cannot need itself")
            elif dep not in steps:
                c.fail(where, f"unknown step '{dep}'")
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for dep in steps[name].needs:
            if dep not in steps or dep == name:
                continue
            if state.get(dep) == 1:
                cycle = trail[trail.index(dep):] + [dep] if dep in trail else [name, dep]
                c.fail(f"steps.{cycle[0]}.needs", "cycle: " + " -> ".join(cycle))
            elif dep not in state:
                visit(dep, trail + [dep])
        state[name] = 2

    for name in steps:
        if name not in state:
            visit(name, [name])


def _matrix(c: _Checker, value: Any, path: str) -> dict[str, list[Any]]:
    if not isinstance(value, dict):
        c.fail(path, "must be a mapping of names to lists of values")
        return {}
    size = 1
    for key, values in value.items():
        if not isinstance(key, str) or not _NAME.match(key):
            c.fail(f"{path}.{key}", "a matrix name is letters, digits, '_' or '-'")
        elif not isinstance(values, list) or not values:
            c.fail(f"{path}.{key}", "must be a non-empty list of values")
        elif not all(isinstance(v, str | int | float | bool) for v in values):
            c.fail(f"{path}.{key}", "values must be strings, numbers or booleans")
        elif len({json.dumps(v) for v in values}) != len(values):
            c.fail(f"{path}.{key}", "values must be distinct")
        else:
            size *= len(values)
    if size > c.limits.max_matrix_jobs:
        c.fail(path, f"expands to {size} jobs, more than the {c.limits.max_matrix_jobs} allowed")
    return value


def _retry(c: _Checker, value: Any, path: str) -> tuple[int | None, dict[str, float]]:
    doc = c.mapping(value, path, ("max_attempts", "backoff"))
    if doc is None:
        return None, {}
    attempts = doc.get("max_attempts")
    if attempts is not None and (isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1
                                 or attempts > c.limits.max_attempts):
        c.fail(f"{path}.max_attempts", f"must be a whole number from 1 to {c.limits.max_attempts}")
    backoff = c.mapping(doc.get("backoff", {}), f"{path}.backoff", ("base_s", "factor", "cap_s", "jitter")) or {}
    for key, item in backoff.items():
        if isinstance(item, bool) or not isinstance(item, int | float) or item < 0:
            c.fail(f"{path}.backoff.{key}", "must be a non-negative number")
    return attempts, {k: float(v) for k, v in backoff.items() if isinstance(v, int | float)}


def _approval(c: _Checker, value: Any, path: str) -> ApprovalSpec | None:
    doc = c.mapping(value, path, ("roles", "principals", "risk", "min", "prevent_self", "timeout", "on_expire",
                                  "subject"))
    if doc is None:
        return None
    roles = doc.get("roles", list(APPROVER_ROLES))
    if not isinstance(roles, list) or not all(isinstance(r, str) and r in APPROVER_ROLES for r in roles):
        c.fail(f"{path}.roles", f"must be a list of roles among {', '.join(APPROVER_ROLES)}")
        roles = []
    principals = doc.get("principals", [])
    if not isinstance(principals, list) or not all(isinstance(p, str) and p for p in principals):
        c.fail(f"{path}.principals", "must be a list of token names")
        principals = []
    if not roles and not principals:
        c.fail(f"{path}.roles", "name approver roles or principals")
    risk = doc.get("risk", "medium")
    if risk not in RISKS:
        c.fail(f"{path}.risk", f"must be one of {', '.join(RISKS)}")
    minimum = doc.get("min", 1)
    if isinstance(minimum, bool) or not isinstance(minimum, int) or not 1 <= minimum <= 10:
        c.fail(f"{path}.min", "must be a whole number from 1 to 10")
    prevent_self = doc.get("prevent_self", True)
    if not isinstance(prevent_self, bool):
        c.fail(f"{path}.prevent_self", "must be true or false")
    timeout_s = 86400.0
    if "timeout" in doc:
        try:
            timeout_s = parse_duration(doc["timeout"])
            if timeout_s > c.limits.max_approval_timeout_s:
                c.fail(f"{path}.timeout", f"must be at most {c.limits.max_approval_timeout_s:g}s")
        except ValueError as exc:
            c.fail(f"{path}.timeout", str(exc))
    on_expire = doc.get("on_expire", "fail")
    if on_expire not in ("fail", "skip"):
        c.fail(f"{path}.on_expire", "must be fail or skip")
    subject = doc.get("subject", "")
    if not isinstance(subject, str):
        c.fail(f"{path}.subject", "must be a string")
        subject = ""
    c.template(subject, f"{path}.subject")
    return ApprovalSpec(tuple(roles), tuple(principals), str(risk), minimum if isinstance(minimum, int) else 1,
                        bool(prevent_self), timeout_s, str(on_expire), subject)


def _concurrency(c: _Checker, value: Any, inputs: dict[str, InputSpec]) -> Concurrency | None:
    if value is None:
        return None
    doc = c.mapping(value, "concurrency", ("group", "on_conflict"), ("group",))
    if doc is None or "group" not in doc:
        return None
    on_conflict = doc.get("on_conflict", "queue")
    if on_conflict not in ON_CONFLICT:
        c.fail("concurrency.on_conflict", f"must be one of {', '.join(ON_CONFLICT)}")
    if not isinstance(doc["group"], str) or not doc["group"]:
        c.fail("concurrency.group", "must be a non-empty string")
        return None
    try:
        group = template(doc["group"])
    except ExpressionError as exc:
        c.fail("concurrency.group", f"bad expression: {exc}")
        return None
    for node in group.nodes:
        for ref in paths(node):
            if ref[0] not in ("inputs", "workflow"):
                c.fail("concurrency.group", f"may only use inputs and workflow, not '{ref[0]}'")
            elif ref[0] == "inputs" and (len(ref) < 2 or ref[1] not in inputs):
                c.fail("concurrency.group", f"unknown input '{ref[1] if len(ref) > 1 else ''}'")
    return Concurrency(group, str(on_conflict))


def _schedule(c: _Checker, value: Any, inputs: dict[str, InputSpec]) -> Schedule | None:
    if value is None:
        return None
    doc = c.mapping(value, "on", ("schedule", "missed", "inputs"), ("schedule",))
    if doc is None or "schedule" not in doc:
        return None
    text = doc["schedule"]
    try:
        cron = parse_cron(text if isinstance(text, str) else "")
    except CronError as exc:
        c.fail("on.schedule", str(exc))
        return None
    missed = doc.get("missed", "skip")
    if missed not in MISSED:
        c.fail("on.missed", f"must be one of {', '.join(MISSED)}")
    scheduled_inputs = doc.get("inputs", {})
    if not isinstance(scheduled_inputs, dict):
        c.fail("on.inputs", "must be a mapping")
        scheduled_inputs = {}
    for problem in check_inputs(inputs, scheduled_inputs):
        c.fail("on." + problem[0], problem[1])
    return Schedule(text, cron, str(missed), scheduled_inputs)


def check_inputs(specs: dict[str, InputSpec], given: dict[str, Any]) -> list[tuple[str, str]]:
    problems = []
    for key, value in given.items():
        if key not in specs:
            problems.append((f"inputs.{key}", "unknown input" + (f" (declared: {', '.join(specs)})" if specs else "")))
        elif not _is_type(value, specs[key].type):
            problems.append((f"inputs.{key}", f"must be a {specs[key].type}"))
    for key, spec in specs.items():
        if spec.required and spec.default is None and key not in given:
            problems.append((f"inputs.{key}", "is required"))
    return problems


def resolve_inputs(specs: dict[str, InputSpec], given: dict[str, Any]) -> dict[str, Any]:
    problems = check_inputs(specs, given)
    if problems:
        raise DefinitionError(problems)
    return {key: given.get(key, spec.default) for key, spec in specs.items()}


def _check_references(c: _Checker, d: Definition) -> None:
    """Every expression reads only what exists: declared inputs, its own matrix, and steps upstream
    of it (any main step, for a finally step)."""
    for spec in d.all_steps().values():
        prefix = "steps" if spec.phase == "main" else "finally"
        base = f"{prefix}.{spec.name}"
        allowed_steps = d.ancestors(spec.name) if spec.phase == "main" else set(d.steps)
        places: list[tuple[str, list[Node]]] = []
        places.append((f"{base}.input", _nodes(spec.input)))
        if spec.condition is not None:
            places.append((f"{base}.if", [spec.condition]))
        if spec.approval is not None:
            places.append((f"{base}.approval.subject", _nodes(spec.approval.subject)))
        for where, nodes in places:
            for node in nodes:
                for ref in paths(node):
                    problem = _reference_problem(ref, d, spec, allowed_steps)
                    if problem:
                        c.fail(where, problem)


def _nodes(value: Any) -> list[Node]:
    if isinstance(value, str):
        return template(value).nodes if "${{" in value else []
    if isinstance(value, list):
        return [n for item in value for n in _nodes(item)]
    if isinstance(value, dict):
        return [n for item in value.values() for n in _nodes(item)]
    return []


def _reference_problem(ref: tuple[str | int, ...], d: Definition, spec: StepSpec, allowed: set[str]) -> str | None:
    root = ref[0]
    if root not in _ROOTS:
        return f"unknown name '{root}' (expressions read {', '.join(_ROOTS)})"
    if root == "inputs" and len(ref) > 1 and ref[1] not in d.inputs:
        return f"unknown input '{ref[1]}'"
    if root == "matrix" and len(ref) > 1 and ref[1] not in spec.matrix:
        return f"step '{spec.name}' has no matrix value '{ref[1]}'"
    if root == "steps":
        if len(ref) < 2:
            return "name a step: steps.<name>.status or steps.<name>.outputs.<output>"
        target = ref[1]
        if target not in d.steps:
            return f"unknown step '{target}'"
        if target not in allowed:
            return f"step '{target}' is not upstream of '{spec.name}' (add it to needs)"
        if len(ref) > 2 and ref[2] not in _STEP_FIELDS:
            return f"a step has {' and '.join(_STEP_FIELDS)}, not '{ref[2]}'"
        if len(ref) > 3 and ref[2] == "outputs" and not d.steps[target].matrix and ref[3] not in d.steps[target].outputs:
            return f"step '{target}' has no output '{ref[3]}'"
    return None

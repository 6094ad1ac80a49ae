"""The remediation policy: a YAML file validated at start, errors naming the line.

Rules are matched in order; the first rule whose ``action``, ``namespaces`` and ``targets`` match a
remediation decides it, and fields it leaves unset come from ``defaults``. Without a file (or with
an empty one) every action is ``suggest``: nothing is ever applied automatically.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

Mode = Literal["off", "suggest", "approve", "auto"]
GitOps = Literal["refuse", "approve", "act_and_warn"]
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


class PolicyError(ValueError):
    """The policy file is invalid; the message names the line and the field."""


def seconds(value: Any) -> float:
    """``30s``, ``10m``, ``1h``, ``2d``, ``500ms`` or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like 30s, 10m, 1h")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration must not be negative")
        return float(value)
    match = _DURATION.match(str(value).strip())
    if match is None:
        raise ValueError(f"{value!r} is not a duration (30s, 10m, 1h, 2d)")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RateLimit(_Strict):
    count: int = Field(ge=1, description="at most this many applies")
    per: float = Field(description="in any window of this long")

    _per = field_validator("per", mode="before")(seconds)


class Verify(_Strict):
    interval: float = Field(default=30.0, description="between two checks of the incident's signal")
    count: int = Field(default=5, ge=1, le=100, description="checks after the rollout is done")
    failure_limit: int = Field(default=1, ge=0, description="failed checks tolerated; one more fails it")
    rollout_timeout: float = Field(default=600.0, description="longest wait for a Kubernetes rollout")

    _durations = field_validator("interval", "rollout_timeout", mode="before")(seconds)


class ApprovalPolicy(_Strict):
    roles: tuple[Literal["supervisor", "admin"], ...] = ("supervisor", "admin")
    principals: tuple[str, ...] = ()
    min_approvals: int = Field(default=1, ge=1, le=10)
    expires: float = Field(default=3600.0, description="how long an approval stays open")
    risk: Literal["low", "medium", "high", "critical"] = "medium"

    _expires = field_validator("expires", mode="before")(seconds)


class Settings(_Strict):
    """What a rule decides; every field optional in a rule, all set in the resolved defaults."""

    mode: Mode | None = None
    min_confidence: float | None = Field(default=None, ge=0, le=1)
    cooldown: float | None = None
    rate_limit: RateLimit | None = None
    max_concurrent_per_target: int | None = Field(default=None, ge=1)
    max_unavailable: int | None = Field(default=None, ge=0, description="evictions: pods of one owner down at once")
    min_healthy: int | None = Field(default=None, ge=0, description="node actions: schedulable ready nodes left")
    min_replicas: int | None = Field(default=None, ge=0)
    max_replicas: int | None = Field(default=None, ge=1)
    gitops: GitOps | None = None
    approval: ApprovalPolicy | None = None
    verify: Verify | None = None

    _cooldown = field_validator("cooldown", mode="before")(lambda v: None if v is None else seconds(v))


class Rule(Settings):
    action: str | tuple[str, ...] = Field(description="action name(s), or '*'")
    namespaces: tuple[str, ...] = Field(default=("*",), description="namespace globs ('' for devart targets)")
    targets: tuple[str, ...] = Field(default=("*",), description="target name globs")

    def matches(self, action: str, namespace: str, target: str) -> bool:
        actions = (self.action,) if isinstance(self.action, str) else self.action
        return (
            any(fnmatch.fnmatchcase(action, a) for a in actions)
            and any(fnmatch.fnmatchcase(namespace, n) for n in self.namespaces)
            and any(fnmatch.fnmatchcase(target, t) for t in self.targets)
        )


_DEFAULTS = Settings(
    mode="suggest", min_confidence=0.9, cooldown=900.0, rate_limit=RateLimit(count=3, per=3600.0),
    max_concurrent_per_target=1, max_unavailable=1, min_healthy=1, min_replicas=1, max_replicas=20,
    gitops="refuse", approval=ApprovalPolicy(), verify=Verify(),
)


class PolicyFile(_Strict):
    version: Literal[1] = 1
    defaults: Settings = Settings()
    global_rate_limit: RateLimit = RateLimit(count=20, per=3600.0)
    namespaces: tuple[str, ...] = Field(
        default=(), description="Kubernetes namespaces remediations may touch; empty = none"
    )
    rules: tuple[Rule, ...] = ()
    escalation: dict[str, tuple[str, ...]] = Field(
        default_factory=dict, description="incident category (or 'default') -> actions to try in order"
    )


@dataclass(frozen=True)
class Decision:
    """The resolved settings for one (action, namespace, target), and the rule that gave them."""

    mode: Mode
    min_confidence: float
    cooldown_s: float
    rate_limit: RateLimit
    max_concurrent_per_target: int
    max_unavailable: int
    min_healthy: int
    min_replicas: int
    max_replicas: int
    gitops: GitOps
    approval: ApprovalPolicy
    verify: Verify
    rule: str


class Policy:
    """A validated policy. ``Policy.load(path)`` raises :class:`PolicyError` naming the line."""

    def __init__(self, spec: PolicyFile | None = None, *, source: str = "built-in default") -> None:
        self.spec = spec or PolicyFile()
        self.source = source

    @classmethod
    def load(cls, path: Path | None) -> Policy:
        if path is None:
            return cls()
        try:
            text = path.read_text()
        except OSError as exc:
            raise PolicyError(f"{path}: cannot read the remediation policy: {exc}") from exc
        return cls.parse(text, source=str(path))

    @classmethod
    def parse(cls, text: str, *, source: str = "<policy>") -> Policy:
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f"line {mark.line + 1}: " if mark is not None else ""
            raise PolicyError(f"{source}: {line}not valid YAML: {getattr(exc, 'problem', exc)}") from exc
        if data is None:
            return cls(source=source)
        try:
            return cls(PolicyFile.model_validate(data), source=source)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = [p for p in first["loc"] if not isinstance(p, str) or p not in _UNION_TAGS]
            path = ".".join(str(p) for p in loc) or "(top level)"
            line = _line_of(node, loc)
            raise PolicyError(f"{source}: line {line}: {path}: {first['msg']}") from exc

    def decide(self, action: str, namespace: str, target: str) -> Decision:
        values = {**_DEFAULTS.model_dump(), **self.spec.defaults.model_dump(exclude_none=True)}
        rule_name = "defaults"
        for index, rule in enumerate(self.spec.rules):
            if rule.matches(action, namespace, target):
                values.update(rule.model_dump(exclude_none=True, include=set(Settings.model_fields)))
                rule_name = f"rules[{index}]"
                break
        resolved = Settings.model_validate(values)
        fields = {k: getattr(resolved, k) for k in Settings.model_fields if k != "cooldown"}
        return Decision(**fields, cooldown_s=resolved.cooldown or 0.0, rule=rule_name)

    def namespace_allowed(self, namespace: str) -> bool:
        return any(fnmatch.fnmatchcase(namespace, n) for n in self.spec.namespaces)

    def ladder(self, category: str | None) -> tuple[str, ...]:
        return self.spec.escalation.get(category or "", self.spec.escalation.get("default", ()))


_UNION_TAGS = {"str", "tuple[str, ...]", "function-after[seconds()]", "function-before[seconds()]"}


def _line_of(node: yaml.Node | None, loc: list[Any]) -> int:
    """The 1-based line of the YAML node at ``loc`` (or of its nearest existing ancestor)."""
    line = node.start_mark.line + 1 if node is not None else 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if k.value == part), None)
            if match is None:
                key = next((k for k, _ in node.value), None)
                return key.start_mark.line + 1 if key is not None else line
            node = match
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            return line
        line = node.start_mark.line + 1
    return line

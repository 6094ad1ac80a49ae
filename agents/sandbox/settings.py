"""How sandboxes are configured, and which parts of a spec a single task may override."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from agents.sandbox.base import Resources

SandboxKind = Literal["local", "kubernetes"]
OverridableField = Literal["image", "resources", "kind"]

_MIB = 1024**2
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/run/systemd/resolve")
_GIB = 1024**3

_CPU = re.compile(r"^(\d+(?:\.\d+)?)(m?)$")
_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_MEMORY_FACTORS = {
    None: 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
}


def parse_cpu(quantity: str) -> float:
    """Cores in a Kubernetes CPU quantity (``"2"``, ``"0.5"``, ``"500m"``); ``ValueError`` if malformed."""
    match = _CPU.match(quantity.strip())
    if match is None:
        raise ValueError(f"{quantity!r} is not a CPU quantity such as '2', '0.5' or '500m'")
    value = float(match.group(1))
    return value / 1000 if match.group(2) else value


def parse_memory(quantity: str) -> int:
    """Bytes in a Kubernetes memory quantity (``"512Mi"``, ``"1G"``, ``"1048576"``); ``ValueError`` if malformed."""
    match = _MEMORY.match(quantity.strip())
    if match is None:
        raise ValueError(f"{quantity!r} is not a memory quantity such as '512Mi', '2Gi' or '1G'")
    return int(float(match.group(1)) * _MEMORY_FACTORS[match.group(2)])


def _default_root() -> Path:
    return Path(os.environ.get("DEVART_HOME") or ".devart") / "sandboxes"


class OverrideNotAllowed(ValueError):
    """A task asked to override a sandbox field the installation does not let tasks change."""


class SandboxOverrides(BaseModel):
    """Per-task changes to the sandbox an attempt runs in (``TaskMessage.sandbox``, shell ``sandbox``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    image: str | None = Field(default=None, min_length=1, description="container image (Kubernetes sandbox)")
    resources: Resources | None = Field(default=None, description="CPU and memory for the attempt")
    kind: SandboxKind | None = Field(
        default=None, description="which sandbox implementation runs the attempt"
    )


class SandboxSettings(BaseSettings):
    """Limits and policy of the sandboxes of one agent process (env prefix ``DEVART_SANDBOX_``)."""

    model_config = SettingsConfigDict(env_prefix="DEVART_SANDBOX_", extra="ignore")

    kind: SandboxKind = Field(
        default="local", description="sandbox implementation used when a task does not override it"
    )
    root: Path = Field(
        default_factory=_default_root,
        description="directory holding one workspace per (task, attempt); default <DEVART_HOME or ./.devart>/sandboxes",
    )
    keep_workspaces: bool = Field(
        default=False, description="leave each workspace on disk after its run (debugging)"
    )
    output_cap_bytes: int = Field(
        default=_MIB,
        ge=1,
        description="bytes of each stream (stdout, stderr) streamed to the log; the rest is only counted",
    )
    tail_bytes: int = Field(
        default=64 * 1024, ge=0, description="bytes of the end of each stream kept in the result"
    )
    cpu_seconds: int | None = Field(
        default=None,
        ge=1,
        description="RLIMIT_CPU per process; unset: the timeout times the requested cores, rounded up, plus one",
    )
    address_space_bytes: int = Field(
        default=4 * _GIB,
        ge=16 * _MIB,
        description="RLIMIT_AS per process; an explicitly requested memory lowers it",
    )
    file_size_bytes: int = Field(
        default=_GIB, ge=1, description="RLIMIT_FSIZE: largest file a process may write"
    )
    open_files: int = Field(
        default=1024, ge=16, description="RLIMIT_NOFILE: open file descriptors per process"
    )
    processes: int = Field(
        default=512,
        ge=1,
        description="pids cgroup limit of an attempt's whole process tree, and RLIMIT_NPROC of the sandbox user",
    )
    network: Literal["none", "host"] = Field(
        default="none",
        description="'none' runs commands in a fresh network namespace (loopback only); 'host' shares it",
    )
    insecure: bool = Field(
        default=False,
        description=(
            "run with whatever isolation the host offers (at worst rlimits and a process group) instead of"
            " refusing to start when namespaces or a writable cgroup are missing"
        ),
    )
    user: int = Field(
        default=65532,
        gt=0,
        description="uid and gid attempts run as when the agent is root (a non-root agent's tasks keep its uid)",
    )
    system_paths: list[Path] = Field(
        default_factory=lambda: [Path(p) for p in _SYSTEM_PATHS],
        description="host paths mounted read-only in the sandbox (missing ones are skipped; symlinks are kept)",
    )
    tmp_bytes: int = Field(
        default=256 * _MIB, ge=_MIB, description="size of the private /tmp (a tmpfs) of an attempt"
    )
    git_local_roots: list[Path] = Field(
        default_factory=list,
        description="directories under which a local path may be cloned (git's file protocol); empty: none",
    )
    git_network: bool = Field(
        default=True,
        description="clone remote repositories with the host network; false: the clone has no network either",
    )
    kill_grace_s: float = Field(
        default=5.0,
        ge=0,
        description="seconds between SIGTERM and SIGKILL of an attempt's processes on deadline or cancel",
    )
    base_env: dict[str, str] = Field(
        default_factory=lambda: {"PATH": _PATH, "LANG": "C.UTF-8"},
        description="fixed variables every command starts with (JSON object); nothing of the agent's own environment is passed",
    )
    secrets_dir: Path | None = Field(
        default=None,
        description="directory of secret files <name>/<key>, read when no DEVART_SECRET_<NAME>_<KEY> variable is set",
    )
    overridable: list[OverridableField] = Field(
        default_factory=lambda: ["image", "resources"],
        description="spec fields a single task may override ('image', 'resources', 'kind')",
    )
    max_cpu: str = Field(default="4", description="largest CPU quantity a task may request")
    max_memory: str = Field(default="8Gi", description="largest memory quantity a task may request")

    @field_validator("max_cpu")
    @classmethod
    def _check_cpu(cls, value: str) -> str:
        parse_cpu(value)
        return value

    @field_validator("max_memory")
    @classmethod
    def _check_memory(cls, value: str) -> str:
        parse_memory(value)
        return value

    def check_overrides(self, overrides: SandboxOverrides) -> None:
        """Raise ``OverrideNotAllowed`` naming the field when ``overrides`` leaves the allow-list or maxima."""
        for name in sorted(overrides.model_fields_set):
            if getattr(overrides, name) is not None and name not in self.overridable:
                allowed = ", ".join(self.overridable) or "none"
                raise OverrideNotAllowed(
                    f"sandbox.{name}: per-task override not allowed (allowed: {allowed})"
                )
        if overrides.resources is None:
            return
        try:
            cpu = parse_cpu(overrides.resources.cpu)
        except ValueError as exc:
            raise OverrideNotAllowed(f"sandbox.resources.cpu: {exc}") from None
        if cpu > parse_cpu(self.max_cpu):
            raise OverrideNotAllowed(
                f"sandbox.resources.cpu: {overrides.resources.cpu} exceeds the maximum {self.max_cpu}"
            )
        try:
            memory = parse_memory(overrides.resources.memory)
        except ValueError as exc:
            raise OverrideNotAllowed(f"sandbox.resources.memory: {exc}") from None
        if memory > parse_memory(self.max_memory):
            raise OverrideNotAllowed(
                f"sandbox.resources.memory: {overrides.resources.memory} exceeds the maximum {self.max_memory}"
            )

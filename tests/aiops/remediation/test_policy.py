"""The remediation policy file: defaults, first matching rule, durations, and errors that name the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiops.remediation.policy import Policy, PolicyError

GOOD = """
namespaces: [shop]
defaults:
  mode: approve
  cooldown: 10m
rules:
  - action: restart
    namespaces: [shop]
    targets: ["api-*"]
    mode: auto
    min_confidence: 0.8
  - action: [scale, restart]
    max_replicas: 4
escalation:
  default: [restart, rollback]
  capacity/traffic: [scale]
"""


def test_default_policy_suggests_everything_and_allows_no_namespace() -> None:
    policy = Policy.load(None)
    for action in ("restart", "rollback", "drain_pool", "notify"):
        assert policy.decide(action, "shop", "x").mode == "suggest"
    assert not policy.namespace_allowed("default")
    assert Policy.parse("").decide("restart", "", "x").mode == "suggest"


def test_first_matching_rule_wins_and_inherits_defaults() -> None:
    policy = Policy.parse(GOOD)
    api = policy.decide("restart", "shop", "api-1")
    assert (api.mode, api.min_confidence, api.cooldown_s, api.rule) == ("auto", 0.8, 600.0, "rules[0]")
    other = policy.decide("restart", "shop", "db")
    assert (other.mode, other.max_replicas, other.rule) == ("approve", 4, "rules[1]")
    assert policy.decide("cordon", "", "node-1").rule == "defaults"
    assert policy.namespace_allowed("shop") and not policy.namespace_allowed("kube-system")
    assert policy.ladder("capacity/traffic") == ("scale",) and policy.ladder("dependency") == ("restart", "rollback")


@pytest.mark.parametrize(("text", "message"), [
    ("rules:\n  - action: restart\n    mode: sometimes\n", "line 3: rules.0.mode: Input should be 'off', 'suggest'"),
    ("defaults:\n  cooldown: 5 minutes\n", "line 2: defaults.cooldown: Value error, '5 minutes' is not a duration"),
    ("rules:\n  - action: x\n\n    colour: red\n", "line 4: rules.0.colour: Extra inputs are not permitted"),
    ("global_rate_limit: {count: 0, per: 1h}\n", "line 1: global_rate_limit.count: Input should be greater than or equal to 1"),
    ("defaults:\n  verify:\n    interval: 30s\n    count: 0\n", "line 4: defaults.verify.count"),
    ("a: [\n", "not valid YAML"),
])
def test_errors_name_the_line_and_the_field(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match="^<policy>: ") as caught:
        Policy.parse(text)
    assert message in str(caught.value)


def test_load_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "remediation.yaml"
    path.write_text("defaults:\n  mode: yes-please\n")
    with pytest.raises(PolicyError, match=f"^{path}: line 2: defaults.mode"):
        Policy.load(path)
    with pytest.raises(PolicyError, match="cannot read"):
        Policy.load(tmp_path / "missing.yaml")

"""examples/workflows/pr-pipeline.yaml on a small git repository, applied and run with the `devart` CLI."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import httpx
import pytest

from agents.sdk import AgentRuntime
from tests.control_plane.workflows.conftest import git, jobs, states

EXAMPLE = Path(__file__).parents[3] / "examples" / "workflows" / "pr-pipeline.yaml"

BUILD = """set -eu
python3 -m py_compile src/calc.py
mkdir -p dist
tar -czf "dist/calc-$(git rev-parse --short HEAD).tar.gz" src
echo "built dist/calc-$(git rev-parse --short HEAD).tar.gz"
"""
TEST = """set -eu
case "$1" in
  unit) python3 -m unittest discover -s tests -v ;;
  lint) ! grep -n 'print(' src/*.py ;;
  *) echo "unknown suite $1" >&2; exit 2 ;;
esac
"""
CALC = "def add(a, b):\n    return a + b\n"
TESTS = "import sys, unittest\nsys.path.insert(0, 'src')\nfrom calc import add\n\n\n" \
        "class T(unittest.TestCase):\n    def test_add(self):\n        self.assertEqual(add(2, 3), 5)\n"


def make_repo(root: Path) -> Path:
    repo = root / "calc"
    (repo / "ci").mkdir(parents=True)
    (repo / "src").mkdir()
    (repo / "tests").mkdir()
    (repo / "ci" / "build.sh").write_text(BUILD)
    (repo / "ci" / "test.sh").write_text(TEST)
    (repo / "src" / "calc.py").write_text(CALC)
    (repo / "tests" / "test_calc.py").write_text(TESTS)
    git(repo, "init", "--quiet")
    git(repo, "add", ".")
    git(repo, "commit", "--quiet", "-m", "calc")
    return repo


async def devart(*args: str, env: dict[str, str], home: Path) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "control_plane.cli", *args, env=dict(os.environ, DEVART_HOME=str(home), **env),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=100)
    return process.returncode or 0, out.decode(), err.decode()


@pytest.mark.slow
async def test_example_pipeline_passes_then_catches_a_broken_change(
    base_url: str, admin: httpx.AsyncClient, shell_agent: AgentRuntime, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path)
    git(repo, "checkout", "--quiet", "-b", "feature")
    (repo / "src" / "calc.py").write_text(CALC + "\n\ndef sub(a, b):\n    return a - b\n")
    git(repo, "commit", "--quiet", "-am", "add sub")
    head = git(repo, "rev-parse", "HEAD").strip()
    token = (await admin.post("/api/v1/tokens", json={"name": "ci", "role": "ci"})).json()["token"]
    ci = {"DEVART_URL": base_url, "DEVART_TOKEN": token}
    home = tmp_path / "home"
    operator = {"DEVART_URL": base_url, "DEVART_TOKEN": admin.headers["Authorization"].split()[1]}

    code, out, err = await devart("workflow", "apply", str(EXAMPLE), env=operator, home=home)
    assert code == 0, err
    assert out.strip() == "workflow pr-pipeline created version 1"

    code, out, err = await devart("workflow", "run", "pr-pipeline", "--input", f"repo={repo}",
                                  "--input", "ref=feature", "--wait", env=ci, home=home)
    assert code == 0, out + err
    run_id = err.split()[1]
    assert f"run {run_id} (pr-pipeline v1): succeeded" in out
    run = (await admin.get(f"/api/v1/runs/{run_id}")).json()
    assert states(run) == {"build": "succeeded", "test[suite=unit]": "succeeded", "test[suite=lint]": "succeeded",
                           "review": "succeeded", "report": "succeeded"}
    by_job = jobs(run)
    assert by_job["build"]["outputs"] == {"commit": head, "artifact": f"dist/calc-{head[:7]}.tar.gz"}
    assert by_job["review"]["outputs"]["findings"].endswith("review: no findings\n")
    assert by_job["report"]["outputs"]["summary"] == (
        "build=succeeded test=succeeded review=succeeded outcome=succeeded\n")
    unit = (await admin.get(f"/api/v1/tasks/{by_job['test[suite=unit]']['task_id']}")).json()
    assert unit["input"]["ref"] == head
    logs = (await admin.get(f"/api/v1/tasks/{unit['id']}/logs")).json()["lines"]
    assert any("test_add" in line["line"] and "ok" in line["line"] for line in logs)

    # main: no review (if false); the table and `runs show` say so
    code, out, err = await devart("workflow", "run", "pr-pipeline", "--input", f"repo={repo}", "--wait", env=ci, home=home)
    assert code == 0, out + err
    main_run = err.split()[1]
    code, shown, _ = await devart("runs", "show", main_run, env=ci, home=home)
    assert code == 0 and "review" in shown and "if_false" in shown

    # a change that breaks a test and leaks a secret: the run fails, exit code 1
    git(repo, "checkout", "--quiet", "-b", "broken")
    (repo / "src" / "calc.py").write_text("API_TOKEN = 'hunter2-abcdef'\n\n\ndef add(a, b):\n    return a - b\n")
    git(repo, "commit", "--quiet", "-am", "oops")
    code, out, err = await devart("workflow", "run", "pr-pipeline", "--input", f"repo={repo}",
                                  "--input", "ref=broken", "--wait", env=ci, home=home)
    assert code == 10, out + err
    broken = (await admin.get(f"/api/v1/runs/{err.split()[1]}")).json()
    assert broken["state"] == "failed"
    got = states(broken)
    # fail_fast cancels lint unless it ended before unit failed
    assert got.pop("test[suite=lint]") in ("cancelled", "succeeded")
    assert got == {"build": "succeeded", "test[suite=unit]": "failed", "review": "failed", "report": "succeeded"}
    code, listed, _ = await devart("runs", "list", "--workflow", "pr-pipeline", env=ci, home=home)
    assert code == 0 and len(listed.strip().splitlines()) == 1 + 3  # a header, three runs
    code, _, err = await devart("workflow", "run", "pr-pipeline", "--input", "nope", env=ci, home=home)
    assert code == 2 and "KEY=VALUE" in err
    code, _, err = await devart("workflow", "run", "pr-pipeline", "--input", "repo=1", env=ci, home=home)
    assert code == 3 and "inputs.repo: must be a string" in err

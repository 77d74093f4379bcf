"""The README's set-up commands stay true: CI runs the very test command it shows."""

from __future__ import annotations

import re

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.slow


def _commands() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    setup = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", setup, flags=re.DOTALL)


def test_readme_has_exactly_two_setup_commands() -> None:
    commands = _commands()
    assert len(commands) == 2
    assert "reva-plugins call examples/revad.toml authprovider authenticate" in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert _commands()[1] in ci.splitlines()


@pytest.mark.long
def test_benchmark_smoke_run_prints_every_figure() -> None:
    """``python -m benchmarks --quick``: tiny counts, so the benchmark code cannot rot."""
    import json
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    for name in (
        "warm_start",
        "latency_one_cpu",
        "latency_two_cpus",
        "in_process_overhead",
        "throughput",
        "memory",
        "provisioning",
        "scale",
        "serve",
        "bundle_import",
        "sandbox",
    ):
        assert name in figures, name
    if figures["sandbox"]["sandbox"].startswith("landlock"):
        assert figures["sandbox"]["warm_start_ms"] > 0
        assert figures["sandbox"]["baseline_unsandboxed_start_ms"] > 0
    assert figures["latency_one_cpu"]["ours"]["p50_us"] > 0
    assert figures["latency_one_cpu"]["baseline_raw_pipe_echo"]["p50_us"] > 0
    assert figures["provisioning"]["pip_folder_cold_s"] > 0
    overhead = figures["in_process_overhead"]
    assert overhead["proxy_us"] > 0
    assert overhead["baseline_direct_method_us"] > 0
    assert "figure" in result.stderr

"""The starter alert rules of role monitoring pass their promtool unit tests.

``roles/monitoring/files/tests/keelson_rules_test.yml`` has, for every rule in
``roles/monitoring/files/rules/keelson.yml``, a case where it fires and one where it
must not.  promtool is not part of the controller's tools: a ``promtool`` on PATH is
used if there is one, else the lab's Prometheus image (``keelson-lab/prometheus:lab``)
if it has been built, else the tests are skipped with the reason.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT

ROLE_FILES = ROOT / "roles" / "monitoring" / "files"
RULES = ROLE_FILES / "rules" / "keelson.yml"
RULE_TESTS = ROLE_FILES / "tests" / "keelson_rules_test.yml"
LAB_IMAGE = "keelson-lab/prometheus:lab"


def _docker_has_image(image: str) -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    proc = subprocess.run(
        [docker, "image", "inspect", "--format", "{{.Id}}", image], capture_output=True, text=True, check=False
    )
    return proc.returncode == 0


def _promtool() -> list[str]:
    """The promtool command line: the binary on PATH, or one run inside the lab image."""
    local = shutil.which("promtool")
    if local:
        return [local]
    if _docker_has_image(LAB_IMAGE):
        mount = f"--volume={ROLE_FILES}:{ROLE_FILES}:ro"
        # promtool test rules writes a scratch TSDB under /tmp.
        sandbox = ["--network=none", "--read-only", "--tmpfs=/tmp"]
        return ["docker", "run", "--rm", *sandbox, mount, "--entrypoint=promtool", LAB_IMAGE]
    pytest.skip(f"promtool is not on PATH and the image {LAB_IMAGE} is not built (`keelson lab images` builds it)")


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    argv = _promtool()
    if argv[0] == "docker":
        argv = [*argv[:-1], f"--workdir={cwd}", argv[-1]]
    return subprocess.run([*argv, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def test_every_starter_rule_has_a_firing_and_a_quiet_case():
    rules = {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}
    cases = [case for test in yaml.safe_load(RULE_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]
    fires = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    assert rules - fires == set(), "rules without a case where they fire"
    assert rules - quiet == set(), "rules without a case where they stay quiet"


def test_starter_rules_pass_promtool_check_rules():
    proc = _run("check", "rules", str(RULES), cwd=RULES.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_starter_rules_pass_their_promtool_unit_tests():
    proc = _run("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout

"""The alert rules of role monitoring pass their promtool unit tests.

Every rules file in ``roles/monitoring/files/rules/`` (``keelson.yml``, ``backup.yml``, ...)
is loaded by at least one test file in ``roles/monitoring/files/tests/`` (its
``rule_files``), which has, for every rule of the file, a case where it fires and one where
it must not; every rules file passes ``promtool check rules``, every test file ``promtool
test rules``, and every rules file is shipped by the role (``vars/main.yml``). promtool is
not part of the controller's tools: a ``promtool`` on PATH is used if there is one, else
the one in the lab's Prometheus image (``keelson-lab/prometheus:lab``, built when missing).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests import lab_images
from tests.helpers import ROOT

ROLE = ROOT / "roles" / "monitoring"
ROLE_FILES = ROLE / "files"
RULE_FILES = sorted((ROLE_FILES / "rules").glob("*.yml"))
TEST_FILES = sorted((ROLE_FILES / "tests").glob("*.yml"))


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    argv = lab_images.promtool(ROLE_FILES)
    if argv[0] == "docker":
        argv = [*argv[:-1], f"--workdir={cwd}", argv[-1]]
    return subprocess.run([*argv, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def _alerts(rules_file: Path) -> set[str]:
    return {
        rule["alert"]
        for group in yaml.safe_load(rules_file.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


def _loaded_rules(test_file: Path) -> list[Path]:
    """The rules files a test file loads (rule_files are relative to the test file)."""
    return [(test_file.parent / name).resolve() for name in yaml.safe_load(test_file.read_text())["rule_files"]]


def _tests_of(rules_file: Path) -> list[Path]:
    return [test for test in TEST_FILES if rules_file.resolve() in _loaded_rules(test)]


def _cases(test_file: Path) -> list[dict]:
    return [case for test in yaml.safe_load(test_file.read_text())["tests"] for case in test.get("alert_rule_test", [])]


def _name(path: Path) -> str:
    return path.name


def test_the_rules_and_tests_are_found():
    assert {"keelson.yml", "backup.yml"} <= {path.name for path in RULE_FILES}
    assert TEST_FILES, "no promtool test files in files/tests/"


@pytest.mark.parametrize("rules_file", RULE_FILES, ids=_name)
def test_every_rule_has_a_firing_and_a_quiet_case(rules_file):
    tests = _tests_of(rules_file)
    assert tests, f"no test file in files/tests/ has {rules_file.name} in its rule_files"
    rules = _alerts(rules_file)
    cases = [case for test in tests for case in _cases(test)]
    fires = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    assert rules - fires == set(), "rules without a case where they fire"
    assert rules - quiet == set(), "rules without a case where they stay quiet"


@pytest.mark.parametrize("test_file", TEST_FILES, ids=_name)
def test_rule_tests_name_only_rules_they_load(test_file):
    """A case for a misspelt or removed alert would pass as quiet without testing anything."""
    loaded = _loaded_rules(test_file)
    assert loaded, f"{test_file.name} loads no rules file"
    for rules_file in loaded:
        assert rules_file.parent == (ROLE_FILES / "rules").resolve(), f"{test_file.name} loads {rules_file}"
        assert rules_file.is_file(), f"{test_file.name} loads {rules_file}, which does not exist"
    alerts = set().union(*(_alerts(rules_file) for rules_file in loaded))
    unknown = {case["alertname"] for case in _cases(test_file)} - alerts
    assert unknown == set(), f"{test_file.name} has cases for alerts its rule_files do not define"


@pytest.mark.parametrize("rules_file", RULE_FILES, ids=_name)
def test_every_rules_file_is_deployed(rules_file):
    """files/rules/<name> becomes rules/<name> of the release, through the template rules-<name>.j2."""
    config_files = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())["__monitoring_config_files"]
    dest = f"rules/{rules_file.name}"
    template = f"rules-{rules_file.name}.j2"
    assert {"src": template, "dest": dest} in config_files, f"vars/main.yml: __monitoring_config_files lacks {dest}"
    text = (ROLE / "templates" / template).read_text()
    # Either a lookup of the file itself, or the shared rules-file.j2 told which file to look up.
    direct = f"/files/rules/{rules_file.name}'" in text
    shared = (
        f"__monitoring_rules_name = '{rules_file.stem}'" in text
        and "include 'rules-file.j2'" in text
        and "'/files/rules/' ~ __monitoring_rules_name ~ '.yml'" in (ROLE / "templates" / "rules-file.j2").read_text()
    )
    assert direct or shared, f"templates/{template} does not render files/rules/{rules_file.name}"


@pytest.mark.parametrize("rules_file", RULE_FILES, ids=_name)
def test_rules_pass_promtool_check_rules(rules_file):
    proc = _run("check", "rules", str(rules_file), cwd=rules_file.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


@pytest.mark.parametrize("test_file", TEST_FILES, ids=_name)
def test_rules_pass_their_promtool_unit_tests(test_file):
    proc = _run("test", "rules", test_file.name, cwd=test_file.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout

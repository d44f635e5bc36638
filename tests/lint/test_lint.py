"""Static checks: every linter the project promises to be clean for."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers import BIN, ROOT, tool_env

pytestmark = pytest.mark.lint

PLAYBOOKS = sorted([ROOT / "site.yml", *(ROOT / "playbooks").glob("*.yml")])


def _run(*argv: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=ROOT, env=tool_env(), capture_output=True, text=True, timeout=timeout, check=False)


def test_yamllint_is_clean():
    proc = _run(str(BIN / "yamllint"), "--strict", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ansible_lint_production_profile_is_clean():
    proc = _run(str(BIN / "ansible-lint"), "--profile", "production", "--offline", "--nocolor")
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-8000:]


def test_ruff_is_clean():
    proc = _run(str(BIN / "ruff"), "check", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = _run(str(BIN / "ruff"), "format", "--check", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("playbook", PLAYBOOKS, ids=lambda p: str(Path(p).relative_to(ROOT)))
@pytest.mark.parametrize("inventory", ["lab", "single"])
def test_playbook_syntax(playbook, inventory):
    proc = _run(str(BIN / "ansible-playbook"), "--syntax-check", "-i", f"inventories/{inventory}", str(playbook))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_prod_example_inventory_parses_with_its_example_vault_password():
    proc = _run(
        str(BIN / "ansible-inventory"),
        "-i",
        "inventories/prod",
        "--vault-password-file",
        "inventories/prod/vault-pass.example",
        "--list",
    )
    assert proc.returncode == 0, proc.stderr
    assert "app2.example.com" in proc.stdout
    # The vault decrypts with the example password only.
    proc = _run(
        str(BIN / "ansible-vault"),
        "view",
        "--vault-password-file",
        "inventories/prod/vault-pass.example",
        "inventories/prod/group_vars/all/vault.yml",
    )
    assert proc.returncode == 0, proc.stderr
    assert "vault_keelson_example_secret" in proc.stdout

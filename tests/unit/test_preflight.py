"""Bad input is refused on the controller, before any host is contacted (role preflight).

Every playbook that changes hosts starts with playbooks/preflight.yml. These runs use the
single-server example inventory (with the secrets it leaves to your vault given as extra
vars; one host keeps them quick) and the production example (its example vault password),
with every host pointed at 127.0.0.1 port 1, where nothing listens: a run that contacted a
host would report it unreachable. The refusals must name the variable and the form it must have; the example
inventory itself must pass. How long a refusal takes is measured by bench/converge, not here.
"""

from __future__ import annotations

import json

import pytest

from tests.helpers import ROOT, PlaybookRun, run_playbook

SINGLE_SECRETS = {
    "postgres_superuser_password": "single-example-superuser-pw",
    "postgres_app_password": "single-example-app-pw",
    "redis_password": "single-example-redis-password",
    "backup_password": "single-example-backup-password",
    "monitoring_grafana_admin_password": "single-example-grafana-pw",
    "vault_backup_s3_access_key_id": "AKIAEXAMPLE",
    "vault_backup_s3_secret_access_key": "example-secret",
}
SINGLE = ["-i", "inventories/single", "-e", json.dumps(SINGLE_SECRETS)]
PROD = ["-i", "inventories/prod", "--vault-password-file", "inventories/prod/vault-pass.example"]
# Nobody's address: if anything connected, it would fail as unreachable (and say so).
NOWHERE = ["-e", "ansible_host=127.0.0.1", "-e", "ansible_port=1"]


def refused(playbook: str, bad: dict, tmp_path, inventory: list[str] = SINGLE) -> PlaybookRun:
    run = run_playbook(
        playbook, *inventory, *NOWHERE, "-e", json.dumps(bad), summary_file=tmp_path / "summary.json", timeout=300
    )
    assert run.returncode != 0, run.output[-3000:]
    assert "UNREACHABLE" not in run.output, "a host was contacted before the input was refused"
    stats = run.summary.get("hosts", {})
    assert stats, run.output[-3000:]
    assert all(s["unreachable"] == 0 and s["changed"] == 0 for s in stats.values()), stats
    return run


@pytest.mark.parametrize(
    ("playbook", "bad", "message"),
    [
        ("site.yml", {"ssh_port": 99999}, "ssh_port (99999) and ssh_verify_port (99999) must be between 1 and 65535"),
        ("site.yml", {"edge_domains": []}, "edge_domains must list at least one DNS host name"),
        ("site.yml", {"redis_maxmemory": "lots"}, "redis_maxmemory ('lots') must be a size like 256mb or 1gb"),
        (
            "site.yml",
            {"postgres_settings": {"shared_buffers": "lots"}},
            "postgres_settings.shared_buffers ('lots') must be a memory size",
        ),
        ("playbooks/upgrade.yml", {"app_memory_limit": "big"}, "app_memory_limit ('big') must be a size like 512m"),
        ("playbooks/upgrade.yml", {"upgrade_serial": "0"}, "upgrade_serial must be a number of hosts"),
        (
            "playbooks/upgrade.yml",
            {"keelson_lb_group": "nowhere"},
            'keelson_lb_group = "nowhere": the inventory has no host in that group',
        ),
        ("playbooks/rollback.yml", {"app_slots": []}, "app_slots must name two distinct slots"),
        (
            "playbooks/onboard.yml",
            {"firewall_ssh_rate": "fast"},
            "firewall_ssh_rate / firewall_icmp_rate like 30/minute",
        ),
        ("playbooks/patch.yml", {"patch_reboot_timeout": 0}, "patch_reboot_timeout must be above 0"),
        ("playbooks/restore.yml", {"backup_keep_daily": -1}, "backup_keep_daily=-1"),
    ],
)
def test_bad_input_is_refused_before_any_host_is_contacted(playbook, bad, message, tmp_path):
    run = refused(playbook, bad, tmp_path)
    assert message in " ".join(run.output.split()), run.output[-3000:]


def test_a_playbook_checks_the_roles_it_runs_and_site_yml_checks_them_all(tmp_path):
    # upgrade.yml runs app (and the edge): a bad Prometheus setting is not its business ...
    bad = {"monitoring_retention": "forever"}
    preflight = run_playbook(
        ROOT / "playbooks" / "preflight.yml",
        *SINGLE,
        *NOWHERE,
        "-e",
        json.dumps({**bad, "preflight_only": ["app", "edge"]}),
        summary_file=None,
    )
    assert preflight.returncode == 0, preflight.output[-3000:]
    # ... while site.yml, which runs monitoring, refuses it.
    run = refused("site.yml", bad, tmp_path)
    assert "monitoring_retention" in run.output


def test_a_wrong_type_gets_a_message_that_names_the_variable(tmp_path):
    run = refused("site.yml", {"ssh_port": "twenty-two"}, tmp_path)
    assert "argument 'ssh_port' is of type str and we were unable to convert to int" in run.output


def test_a_service_group_without_hosts_is_refused_on_every_host_of_a_fleet(tmp_path):
    run = refused("site.yml", {"keelson_db_group": "nosuchgroup"}, tmp_path, inventory=PROD)
    assert 'keelson_db_group = "nosuchgroup": the inventory has no host in that group' in " ".join(run.output.split())


@pytest.mark.parametrize("inventory", ["prod", "single"])
def test_the_example_inventories_pass_the_preflight(inventory, tmp_path):
    # The single-server example leaves its secrets to your vault.
    args = PROD if inventory == "prod" else SINGLE
    run = run_playbook(ROOT / "playbooks" / "preflight.yml", *args, *NOWHERE, summary_file=tmp_path / "s.json")
    assert run.returncode == 0, run.output[-4000:]
    assert "UNREACHABLE" not in run.output


def test_a_fleet_without_its_secrets_is_refused_naming_them(tmp_path):
    run = run_playbook(
        ROOT / "playbooks" / "preflight.yml", "-i", "inventories/single", *NOWHERE, summary_file=tmp_path / "s.json"
    )
    assert run.returncode != 0
    assert "postgres_superuser_password must be set (vault, 12+ characters)" in " ".join(run.output.split())
    assert "UNREACHABLE" not in run.output

"""Behaviour of role base on a converged host (see ../converge.yml for the inputs)."""

import json
import re

import pytest

DEPLOY_USER = "keelson"
ADMIN_GROUP = "keelson-admins"
TEST_KEY = "/root/.ssh/keelson_test_ed25519"
SSH_OPTS = (
    "-o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
    "-o PasswordAuthentication=no -o KbdInteractiveAuthentication=no -o ConnectTimeout=10"
)
SECURITY_ORIGIN = re.compile(r"(-security|Debian-Security)")


def shadow_field(host, user):
    line = host.check_output("getent shadow %s", user)
    return line.split(":")[1]


# --- users and sudo ------------------------------------------------------------


@pytest.mark.parametrize("user", [DEPLOY_USER, "alice"])
def test_admins_have_passwordless_sudo(host, user):
    result = host.run("runuser -u %s -- sudo -n true", user)
    assert result.rc == 0, result.stderr


def test_non_admin_cannot_sudo(host):
    result = host.run("runuser -u carol -- sudo -n true")
    assert result.rc != 0
    assert "password is required" in result.stderr or "not in the sudoers" in result.stderr


def test_sudoers_tree_is_valid(host):
    assert host.run("visudo -c").rc == 0


@pytest.mark.parametrize("user", [DEPLOY_USER, "alice"])
def test_ssh_key_login_works(host, user):
    result = host.run(f"ssh -i {TEST_KEY} {SSH_OPTS} {user}@127.0.0.1 id -un")
    assert result.rc == 0, result.stderr
    assert result.stdout.strip() == user


def test_stale_key_was_removed(host):
    keys = host.file("/home/alice/.ssh/authorized_keys").content_string
    assert "stale@example" not in keys
    assert len([k for k in keys.splitlines() if k.strip()]) == 1


@pytest.mark.parametrize("user", [DEPLOY_USER, "alice"])
def test_password_login_is_impossible(host, user):
    # No hash at all: a locked field ("!") that no password can match.
    field = shadow_field(host, user)
    assert field.startswith("!") or field.startswith("*")
    assert "$" not in field
    assert host.check_output("passwd -S %s", user).split()[1] == "L"


def password_ssh(host, user):
    cmd = (
        "sshpass -p molecule-throwaway ssh -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
        "-o PubkeyAuthentication=no -o PreferredAuthentications=password,keyboard-interactive "
        f"-o ConnectTimeout=10 {user}@127.0.0.1 id -un"
    )
    return host.run(cmd)


def test_password_ssh_login_control_user_works(host):
    # Control: sshd accepts passwords here, so the refusal below is the account's doing.
    result = password_ssh(host, "carol")
    assert result.rc == 0, result.stderr
    assert result.stdout.strip() == "carol"


def test_password_set_before_converge_no_longer_works(host):
    # prepare gave alice the same password as carol; converge must have removed it.
    result = password_ssh(host, "alice")
    assert result.rc != 0
    assert "Permission denied" in result.stderr


def test_password_only_ssh_is_refused(host):
    # With public keys off, sshd has nothing that can let the deploy user in.
    cmd = (
        "ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
        f"-o PubkeyAuthentication=no -o ConnectTimeout=10 {DEPLOY_USER}@127.0.0.1 true"
    )
    result = host.run(cmd)
    assert result.rc == 255
    assert "Permission denied" in result.stderr


def test_removed_admin_is_gone(host):
    assert not host.user("bob").exists
    assert not host.file("/home/bob").exists
    assert "bob" not in host.check_output("getent group %s", ADMIN_GROUP).split(":")[3].split(",")


def test_admins_are_in_admin_group(host):
    members = host.check_output("getent group %s", ADMIN_GROUP).split(":")[3].split(",")
    assert sorted(members) == ["alice", DEPLOY_USER]


# --- hostname and time -----------------------------------------------------------


def test_hostname_matches_inventory(host):
    expected = host.backend.get_hostname()
    assert host.check_output("hostname") == expected


def test_timezone_is_set(host):
    assert host.check_output("timedatectl show -p Timezone --value") == "Europe/Berlin"
    assert host.check_output("date +%Z") in ("CET", "CEST")


def test_timesyncd_configured_and_enabled(host):
    svc = host.service("systemd-timesyncd")
    assert svc.is_enabled
    config = host.check_output("systemd-analyze cat-config systemd/timesyncd.conf")
    assert "NTP=ntp.example.test" in config


# --- packages and updates --------------------------------------------------------


@pytest.mark.parametrize("pkg", ["tzdata", "curl", "unattended-upgrades", "systemd-timesyncd", "sudo", "rsync"])
def test_base_packages_installed(host, pkg):
    assert host.package(pkg).is_installed


def test_unattended_upgrades_only_security_origins(host):
    dump = host.check_output("apt-config dump Unattended-Upgrade")
    patterns = re.findall(r'^Unattended-Upgrade::Origins-Pattern:: "(.*)";$', dump, re.M)
    assert patterns, dump
    assert all(SECURITY_ORIGIN.search(p) for p in patterns), patterns
    assert "Allowed-Origins::" not in dump
    assert 'Unattended-Upgrade::Automatic-Reboot "false";' in dump
    assert 'Unattended-Upgrade::Mail "";' in dump


def test_unattended_upgrade_dry_run(host):
    result = host.run("unattended-upgrade --dry-run --debug")
    assert result.rc == 0, result.stdout + result.stderr
    output = result.stdout + result.stderr
    allowed = re.search(r"Allowed origins are: (.*)", output)
    assert allowed, output
    origins = [o.strip() for o in allowed.group(1).split(", ") if o.strip()]
    assert origins and all(SECURITY_ORIGIN.search(o) for o in origins), origins


def test_periodic_apt_enabled(host):
    dump = host.check_output("apt-config dump APT::Periodic")
    assert 'APT::Periodic::Unattended-Upgrade "1";' in dump
    assert 'APT::Periodic::Update-Package-Lists "1";' in dump
    for timer in ("apt-daily.timer", "apt-daily-upgrade.timer"):
        assert host.service(timer).is_enabled
        assert host.service(timer).is_running


# --- journald --------------------------------------------------------------------


def test_journald_effective_config_has_caps(host):
    config = host.check_output("systemd-analyze cat-config systemd/journald.conf")
    # the last assignment wins: the Keelson drop-in comes after journald.conf
    last = {}
    for line in config.splitlines():
        m = re.match(r"^(\w+)=(.*)$", line.strip())
        if m:
            last[m.group(1)] = m.group(2)
    assert last.get("SystemMaxUse") == "300M"
    assert last.get("SystemMaxFileSize") == "50M"
    assert last.get("MaxRetentionSec") == "1month"
    assert last.get("Storage") == "persistent"


def test_journald_uses_persistent_storage(host):
    # journald restarted with Storage=persistent creates /var/log/journal/<machine-id>
    assert host.file("/var/log/journal").is_directory
    assert host.run("journalctl --header --file '/var/log/journal/*/system.journal'").rc == 0


# --- sysctl ----------------------------------------------------------------------


def parse_sysctl_file(text):
    settings = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a key = value line: {line!r}"
        settings[key.strip()] = value.strip()
    return settings


def test_sysctl_file_parses_and_keys_exist(host):
    settings = parse_sysctl_file(host.file("/etc/sysctl.d/60-keelson.conf").content_string)
    assert settings["net.ipv4.tcp_syncookies"] == "1"
    assert settings["kernel.kptr_restrict"] == "2"
    assert settings["net.ipv4.conf.all.log_martians"] == "0"  # base_sysctl_extra won
    for key in settings:
        # every key is one sysctl knows (reading works even where /proc/sys is read-only)
        assert host.run("sysctl -n %s", key).rc == 0, key


def test_sysctl_net_values_applied_where_possible(host):
    settings = parse_sysctl_file(host.file("/etc/sysctl.d/60-keelson.conf").content_string)
    if host.run("test -w /proc/sys/net/ipv4/tcp_syncookies").rc != 0:
        pytest.skip("/proc/sys is read-only in this container: the role skips applying")
    for key, value in settings.items():
        if key.startswith("net."):
            assert host.check_output("sysctl -n %s", key) == value, key


# --- facts -----------------------------------------------------------------------


def test_keelson_facts_file(host):
    f = host.file("/etc/ansible/facts.d/keelson.fact")
    assert f.mode == 0o644
    facts = json.loads(f.content_string)
    assert facts == {
        "managed": True,
        "groups": ["molecule"],
        "deploy_user": DEPLOY_USER,
        "admin_group": ADMIN_GROUP,
        "keelson_version": "0.0.0-molecule",
    }


def test_login_shells_get_the_restrictive_umask(host):
    result = host.run(f"ssh -i {TEST_KEY} {SSH_OPTS} {DEPLOY_USER}@127.0.0.1 bash -lc umask")
    assert result.rc == 0, result.stderr
    assert result.stdout.strip() == "0027"
    assert "UMASK\t\t027" in host.file("/etc/login.defs").content_string


def test_core_dumps_are_off_for_a_fresh_login(host):
    # sshd's PAM stack applies limits.d to the new session.
    result = host.run(f"ssh -i {TEST_KEY} {SSH_OPTS} {DEPLOY_USER}@127.0.0.1 ulimit -Hc")
    assert result.rc == 0, result.stderr
    assert result.stdout.strip() == "0"


def test_legacy_clients_are_absent(host):
    for package in ("telnet", "rsh-client", "talk", "ftp"):
        assert not host.package(package).is_installed, package

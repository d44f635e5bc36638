"""Behaviour of role ssh on a converged host.

Inputs: ../vars/ssh.yml; accounts and the "provider" state of the host: ../prepare.yml
(paula: admin with a known password; mallory: not in an allowed group; root: in the admin
group with a valid key; a 2048-bit RSA host key, HostKey lines and a cloud-init drop-in
with PasswordAuthentication yes). side_effect.yml has already broken and restored sshd
twice when these tests run.

Logins are made from inside the host to 127.0.0.1. A connection that is meant to fail
binds its own loopback source address (ssh -b 127.0.0.N): OpenSSH >= 9.8 penalises a
source address that keeps connecting without authenticating (PerSourcePenalties), e.g.
after failed algorithm negotiations, and one test's refusals must not block another's.
"""

import json
import re

import pytest

DEPLOY_USER = "keelson"
KEY = "/root/.ssh/keelson_test_ed25519"
PASSWORD = "molecule-throwaway"
SSH = (
    "ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
    "-o ConnectTimeout=10 -o IdentitiesOnly=yes"
)
CIPHERS = [
    "chacha20-poly1305@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
]
MACS = ["hmac-sha2-512-etm@openssh.com", "hmac-sha2-256-etm@openssh.com", "umac-128-etm@openssh.com"]
HOST_KEY_ALGORITHMS = ["ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256"]
KEX = {
    "12": ["sntrup761x25519-sha512@openssh.com"],
    "13": ["mlkem768x25519-sha256", "sntrup761x25519-sha512", "sntrup761x25519-sha512@openssh.com"],
}
SSH_AUDIT = "PYTHONPATH=/opt/ssh_audit.whl python3 -m ssh_audit --skip-rate-test"


def debian_major(host):
    return host.file("/etc/debian_version").content_string.strip().split(".")[0]


def login(host, user, *, source="127.0.0.1", options="", command="id -un"):
    return host.run(f"{SSH} -b {source} -i {KEY} {options} {user}@127.0.0.1 {command}")


def sshd_effective(host):
    """sshd -T as a dict; keywords sshd accumulates (hostkey, allowgroups) become lists."""
    settings = {}
    for line in host.check_output("sshd -T").splitlines():
        key, _, value = line.partition(" ")
        if key in ("hostkey", "allowgroups"):
            settings.setdefault(key, []).append(value)
        else:
            settings[key] = value
    return settings


def sshd_log(host, pattern):
    return re.search(pattern, host.check_output("journalctl -u ssh.service -o cat --no-pager"))


# --- who can log in ----------------------------------------------------------------


def test_deploy_user_key_login_works(host):
    result = login(host, DEPLOY_USER)
    assert result.rc == 0, result.stderr
    assert result.stdout.strip() == DEPLOY_USER


def test_password_login_refused_for_admin_with_known_password(host):
    # Control: paula is allowed in (admin group, valid key) ...
    control = login(host, "paula")
    assert control.rc == 0, control.stderr
    # ... but not with her (correct) password, even though a cloud-init style drop-in
    # says PasswordAuthentication yes: the server offers nothing but publickey.
    result = host.run(
        f"sshpass -p {PASSWORD} ssh -b 127.0.0.11 -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
        "-o PubkeyAuthentication=no -o PreferredAuthentications=password,keyboard-interactive "
        "-o ConnectTimeout=10 paula@127.0.0.1 id -un"
    )
    assert result.rc == 255
    assert "Permission denied (publickey)." in result.stderr
    assert host.file("/etc/ssh/sshd_config.d/50-cloud-init.conf").contains("PasswordAuthentication yes")


def test_root_login_refused_with_valid_key(host):
    # root is in the admin group and has the key: only PermitRootLogin no stops it.
    result = login(host, "root", source="127.0.0.12")
    assert result.rc == 255
    assert "Permission denied (publickey)." in result.stderr
    assert sshd_log(host, r"ROOT LOGIN REFUSED FROM 127\.0\.0\.12")


def test_user_outside_allow_groups_refused_with_valid_key(host):
    result = login(host, "mallory", source="127.0.0.13")
    assert result.rc == 255
    assert "Permission denied (publickey)." in result.stderr
    assert sshd_log(
        host, r"User mallory from 127\.0\.0\.13 not allowed because none of user's groups are listed in AllowGroups"
    )


def test_login_is_logged_with_key_fingerprint(host):
    login(host, DEPLOY_USER)
    assert sshd_log(host, rf"Accepted publickey for {DEPLOY_USER} from 127\.0\.0\.1 port \d+ ssh2: ED25519 SHA256:")


def test_banner_is_shown_before_login(host):
    result = login(host, DEPLOY_USER, options="-o LogLevel=INFO")
    assert result.rc == 0, result.stderr
    assert "Keelson molecule host.\nAuthorised access only." in result.stderr


def test_tcp_forwarding_refused(host):
    result = login(
        host, DEPLOY_USER, options="-o ExitOnForwardFailure=yes -R 127.0.0.1:20222:127.0.0.1:22", command="true"
    )
    assert result.rc == 255
    assert "remote port forwarding failed" in result.stderr


def test_repeated_failures_penalise_only_the_offending_source(host):
    # The role keeps OpenSSH's PerSourcePenalties (>= 9.8) on: a source that keeps
    # connecting without authenticating (here: 20 failed negotiations, 1 s of penalty
    # each, enforced from 15 s) is shut out for a while; other sources are not.
    if debian_major(host) != "13":
        pytest.skip("PerSourcePenalties exist from OpenSSH 9.8 (Debian 13)")
    for _ in range(20):
        login(host, DEPLOY_USER, source="127.0.0.31", options="-o KexAlgorithms=curve25519-sha256", command="true")
    blocked = login(host, DEPLOY_USER, source="127.0.0.31")
    assert blocked.rc == 255
    assert sshd_log(host, r"drop connection #\d+ from \[127\.0\.0\.31\]")
    assert login(host, DEPLOY_USER).rc == 0


# --- cryptography --------------------------------------------------------------------


def test_effective_crypto(host):
    settings = sshd_effective(host)
    assert settings["kexalgorithms"].split(",") == KEX[debian_major(host)]
    assert settings["ciphers"].split(",") == CIPHERS
    assert settings["macs"].split(",") == MACS
    assert settings["hostkeyalgorithms"].split(",") == HOST_KEY_ALGORITHMS
    accepted = settings["pubkeyacceptedalgorithms"].split(",")
    assert not [a for a in accepted if "ecdsa" in a or a.startswith(("ssh-rsa", "ssh-dss"))], accepted


def test_mlkem_offered_only_where_supported(host):
    kex = sshd_effective(host)["kexalgorithms"].split(",")
    if debian_major(host) == "13":
        assert kex[0] == "mlkem768x25519-sha256"
    else:
        assert "mlkem768x25519-sha256" not in kex
        assert "mlkem768x25519-sha256" not in host.check_output("ssh -Q kex").split()


def test_client_negotiates_post_quantum_kex(host):
    result = login(host, DEPLOY_USER, options="-v", command="true")
    assert result.rc == 0, result.stderr
    expected = KEX[debian_major(host)][0]
    assert f"kex: algorithm: {expected}" in result.stderr


@pytest.mark.parametrize(
    ("source", "option", "refusal"),
    [
        ("127.0.0.21", "KexAlgorithms=curve25519-sha256,diffie-hellman-group14-sha256", "no matching key exchange"),
        ("127.0.0.22", "Ciphers=aes128-cbc,aes256-cbc,3des-cbc", "no matching cipher"),
        ("127.0.0.23", "MACs=hmac-sha2-256,hmac-sha2-512,hmac-sha1", "no matching MAC"),
        ("127.0.0.24", "HostKeyAlgorithms=ecdsa-sha2-nistp256,ssh-rsa", "no matching host key type"),
    ],
)
def test_weak_algorithms_refused(host, source, option, refusal):
    # aes*-ctr so that the MAC case cannot fall back to an AEAD cipher.
    extra = f"-o {option}" + (" -o Ciphers=aes128-ctr" if option.startswith("MACs") else "")
    result = login(host, DEPLOY_USER, source=source, options=extra, command="true")
    assert result.rc == 255
    assert f"Unable to negotiate with 127.0.0.1 port 22: {refusal}" in result.stderr


def test_ssh_audit_reports_no_failure_or_warning(host):
    result = host.run(f"{SSH_AUDIT} -jj 127.0.0.1")
    assert result.rc == 0, result.stdout + result.stderr  # exit code 0: no failure, no warning
    report = json.loads(result.stdout)
    flagged = [
        (section, entry["algorithm"], entry["notes"])
        for section in ("kex", "key", "enc", "mac")
        for entry in report[section]
        if {"fail", "warn"} & set(entry.get("notes", {}))
    ]
    assert flagged == []
    assert report["cves"] == []
    assert report["recommendations"] == {}
    text = host.run(f"{SSH_AUDIT} -n 127.0.0.1")
    assert text.rc == 0, text.stdout
    assert "[fail]" not in text.stdout
    assert "[warn]" not in text.stdout


# --- host keys and moduli ------------------------------------------------------------


def test_no_ecdsa_or_dsa_host_key(host):
    for key_type in ("ecdsa", "dsa"):
        assert not host.file(f"/etc/ssh/ssh_host_{key_type}_key").exists
        assert not host.file(f"/etc/ssh/ssh_host_{key_type}_key.pub").exists
    assert sshd_effective(host)["hostkey"] == ["/etc/ssh/ssh_host_ed25519_key", "/etc/ssh/ssh_host_rsa_key"]
    # What the server presents: nothing for ECDSA, an Ed25519 and an RSA key otherwise.
    ecdsa = host.run("ssh-keyscan -t ecdsa 127.0.0.1").stdout
    assert [line for line in ecdsa.splitlines() if not line.startswith("#")] == []
    offered = host.check_output("ssh-keyscan -t ed25519,rsa 127.0.0.1 2>/dev/null")
    key_lines = [line for line in offered.splitlines() if not line.startswith("#")]
    assert sorted(line.split()[1] for line in key_lines) == ["ssh-ed25519", "ssh-rsa"]


def test_main_config_has_no_hostkey_lines_and_includes_dropins(host):
    config = host.file("/etc/ssh/sshd_config").content_string
    assert not re.search(r"^\s*HostKey\s", config, re.M)
    first_setting = next(line for line in config.splitlines() if line.strip() and not line.startswith("#"))
    assert first_setting == "Include /etc/ssh/sshd_config.d/*.conf"


def test_rsa_host_key_is_at_least_3072_bits_and_was_replaced(host):
    presented = host.check_output("ssh-keyscan -t rsa 127.0.0.1 2>/dev/null | grep -v '^#' | ssh-keygen -l -f -")
    bits, fingerprint = presented.split()[:2]
    assert int(bits) >= 3072
    weak = host.file("/root/weak_rsa_fingerprint").content_string.split()[1]
    assert fingerprint != weak


def test_replaced_host_keys_are_kept_for_rollback(host):
    backups = host.file("/var/backups/keelson-ssh")
    assert backups.is_directory
    assert backups.mode == 0o700
    weak = host.file("/root/weak_rsa_fingerprint").content_string.split()[1]
    backed_up = host.check_output("ssh-keygen -l -f /var/backups/keelson-ssh/ssh_host_rsa_key.pub").split()
    assert backed_up[0] == "2048"
    assert backed_up[1] == weak
    assert host.file("/var/backups/keelson-ssh/ssh_host_ecdsa_key").mode == 0o600


def test_moduli_has_no_group_below_3072_bits(host):
    lines = [
        line for line in host.file("/etc/ssh/moduli").content_string.splitlines() if line and not line.startswith("#")
    ]
    sizes = [int(line.split()[4]) for line in lines]
    assert sizes, "moduli must keep the strong groups"
    assert min(sizes) >= 3071  # the file records bits - 1


# --- the rest of the configuration -------------------------------------------------


def test_effective_limits_and_switches(host):
    settings = sshd_effective(host)
    expected = {
        "permitrootlogin": "no",
        "passwordauthentication": "no",
        "kbdinteractiveauthentication": "no",
        "permitemptypasswords": "no",
        "pubkeyauthentication": "yes",
        "authenticationmethods": "publickey",
        "maxauthtries": "3",
        "logingracetime": "30",
        "clientaliveinterval": "300",
        "clientalivecountmax": "2",
        "maxsessions": "10",
        "maxstartups": "10:30:60",
        "x11forwarding": "no",
        "allowtcpforwarding": "no",
        "allowagentforwarding": "no",
        "allowstreamlocalforwarding": "no",
        "permittunnel": "no",
        "loglevel": "VERBOSE",
        "usedns": "no",
        "banner": "/etc/issue.net",
    }
    assert {k: settings.get(k) for k in expected} == expected
    assert settings["allowgroups"] == ["keelson-admins"]


def test_penalty_exemptions_only_where_supported(host):
    settings = sshd_effective(host)
    dropin = host.file("/etc/ssh/sshd_config.d/00-keelson.conf")
    if debian_major(host) == "13":
        assert settings["persourcepenaltyexemptlist"] == "192.0.2.10/32"
    else:
        assert "persourcepenaltyexemptlist" not in settings
        assert not dropin.contains("PerSourcePenaltyExemptList")


def test_dropin_is_private_and_first(host):
    dropin = host.file("/etc/ssh/sshd_config.d/00-keelson.conf")
    assert dropin.user == "root"
    assert dropin.mode == 0o600
    names = sorted(host.file("/etc/ssh/sshd_config.d").listdir())
    assert names[0] == "00-keelson.conf"


def test_sshd_running_and_enabled(host):
    service = host.service("ssh")
    assert service.is_running
    assert service.is_enabled
    assert host.run("sshd -t").rc == 0

"""Behaviour of role fail2ban on a converged host: attack sshd, see the ban drop traffic.

Inside the host the tests make two network namespaces, each joined to the host by its
own veth pair, a private link that exists only inside this container:

    attacker  10.200.0.2  <->  10.200.0.1  host   not allowlisted: must be banned
    friend    10.201.0.2  <->  10.201.0.1  host   in fail2ban_ignoreip (10.201.0.0/24): never banned

Failed password logins (an unknown user, a wrong password) go from a namespace to the
host's sshd, which logs them to the journal, where the sshd jail reads them. A ban is
only believed when a new TCP connection from the banned address really fails. Every test
unbans what it banned, so verify can be run again.
"""

import re

import pytest

MAXRETRY = 3  # converge.yml sets maxretry 3 for sshd through fail2ban_extra_jails
NETS = {
    # namespace: (host-side interface, host address, namespace address)
    "attacker": ("f2b-att-h", "10.200.0.1", "10.200.0.2"),
    "friend": ("f2b-fri-h", "10.201.0.1", "10.201.0.2"),
}
F2B_LOG = "/var/log/fail2ban.log"
WAIT = 30  # seconds to wait for fail2ban to act on what it reads in the journal


def in_ns(ns, command):
    return f"ip netns exec {ns} {command}"


def tcp_connect_rc(host, ns):
    """Exit status of a bare TCP connection from ns to the host's sshd: 0 connected, 124 timed out."""
    _, host_ip, _ = NETS[ns]
    return host.run(in_ns(ns, f"timeout 3 bash -c '</dev/tcp/{host_ip}/22'")).rc


def failed_logins(host, ns, count):
    """count password logins of an unknown user with a wrong password, from ns."""
    _, host_ip, _ = NETS[ns]
    ssh = (
        "sshpass -p not-the-password ssh -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
        "-o PubkeyAuthentication=no -o PreferredAuthentications=password "
        f"-o ConnectTimeout=5 nosuchuser@{host_ip} true"
    )
    result = host.run(f"for i in $(seq {count}); do {in_ns(ns, ssh)}; echo rc=$?; done")
    # sshpass exits 5 when ssh asks for the password again: the password was tried and refused.
    return result.stdout.split()


def banned_ips(host):
    status = host.check_output("fail2ban-client status sshd")
    match = re.search(r"Banned IP list:\s*(.*)$", status, re.M)
    assert match, status
    return match.group(1).split()


def wait_for(host, condition, seconds=WAIT):
    """Poll a shell condition inside the host (one round trip), True once it holds."""
    return host.run(f"for i in $(seq {seconds}); do {condition} && exit 0; sleep 1; done; exit 1").rc == 0


def wait_banned(host, ip):
    return wait_for(host, f"fail2ban-client status sshd | grep -q 'Banned IP list:.*\\b{re.escape(ip)}\\b'")


def unban(host, *ips):
    host.run("fail2ban-client unban" + " %s" * len(ips), *ips)


def diagnostics(host):
    return host.run("fail2ban-client status sshd; nft list ruleset; tail -n 30 %s", F2B_LOG).stdout


@pytest.fixture(scope="module")
def netns(host):
    """The attacker and friend namespaces with their veth links; removed afterwards."""
    for ns, (host_if, host_ip, ns_ip) in NETS.items():
        host.run(f"ip netns del {ns}")  # left over from an interrupted run (deletes its veth too)
        setup = " && ".join(
            [
                f"ip netns add {ns}",
                f"ip link add {host_if} type veth peer name eth0 netns {ns}",
                f"ip addr add {host_ip}/24 dev {host_if}",
                f"ip link set {host_if} up",
                f"ip -n {ns} addr add {ns_ip}/24 dev eth0",
                f"ip -n {ns} link set eth0 up",
                f"ip -n {ns} link set lo up",
            ]
        )
        result = host.run(setup)
        assert result.rc == 0, f"cannot build the {ns} namespace: {result.stderr}"
    yield NETS
    unban(host, *(ns_ip for _, _, ns_ip in NETS.values()))
    for ns in NETS:
        host.run(f"ip netns del {ns}")


# --- the service ----------------------------------------------------------------


def test_fail2ban_enabled_and_answering(host):
    svc = host.service("fail2ban")
    assert svc.is_enabled
    assert svc.is_running
    assert "pong" in host.check_output("fail2ban-client ping")


def test_only_enabled_jails_run(host):
    # sshd is on; the edge (HAProxy) jail is defined in the file but off by default.
    status = host.check_output("fail2ban-client status")
    assert re.search(r"Jail list:\s*sshd\s*$", status, re.M), status
    assert "[haproxy-http-auth]" in host.file("/etc/fail2ban/jail.d/keelson.local").content_string


def test_configuration_passes_fail2ban_test(host):
    result = host.run("fail2ban-client -t")
    assert result.rc == 0, result.stdout + result.stderr


def test_sshd_jail_settings_as_converged(host):
    assert host.check_output("fail2ban-client get sshd maxretry") == str(MAXRETRY)  # from fail2ban_extra_jails
    assert "nftables-multiport" in host.check_output("fail2ban-client get sshd actions")
    # fail2ban lists networks by their network address: 127.0.0.1/8 is shown as 127.0.0.0/8.
    ignored = re.findall(r"^[|`]- (\S+)$", host.check_output("fail2ban-client get sshd ignoreip"), re.M)
    assert sorted(ignored) == sorted(["127.0.0.0/8", "::1", "10.201.0.0/24", "192.0.2.10", "2001:db8::/48"])


def test_nftables_works_in_this_host(host):
    # Precondition of every ban below: the container may change its own nftables ruleset.
    result = host.run("nft list ruleset")
    assert result.rc == 0, result.stderr


def test_fail2ban_is_coupled_to_nftables(host):
    assert "nftables.service" in host.check_output("systemctl show -p PartOf --value fail2ban.service")
    assert "fail2ban.service" in host.check_output("systemctl show -p Wants --value nftables.service")


# --- the attack -------------------------------------------------------------------


def test_attacker_is_banned_and_its_traffic_dropped(host, netns):
    attacker_ip = netns["attacker"][2]
    unban(host, attacker_ip)
    try:
        assert attacker_ip not in banned_ips(host)
        assert tcp_connect_rc(host, "attacker") == 0, "the attacker cannot reach sshd even before any ban"

        outcomes = failed_logins(host, "attacker", MAXRETRY + 1)
        assert "rc=5" in outcomes, f"no login got as far as a wrong password: {outcomes}"

        assert wait_banned(host, attacker_ip), diagnostics(host)
        table = host.check_output("nft list table inet f2b-table")
        assert re.search(rf"elements = {{[^}}]*\b{re.escape(attacker_ip)}\b", table), table
        assert "drop" in table

        # The ban must drop packets, not only be listed: a new connection now times out.
        assert tcp_connect_rc(host, "attacker") == 124
    finally:
        unban(host, attacker_ip)
    # ...and it was the ban: once lifted, the same connection works again.
    assert attacker_ip not in banned_ips(host)
    assert tcp_connect_rc(host, "attacker") == 0


def test_ban_survives_nftables_restart_and_stop_start(host, netns):
    # nftables.service loads /etc/nftables.conf, which begins with "flush ruleset" and
    # so deletes fail2ban's table; the role couples fail2ban to it, so fail2ban rebuilds it.
    attacker_ip = netns["attacker"][2]
    ban_enforced = f"nft list table inet f2b-table 2>/dev/null | grep -q '{attacker_ip}'"
    had_filter_table = host.run("nft list table inet filter").rc == 0
    try:
        failed_logins(host, "attacker", MAXRETRY + 1)
        assert wait_banned(host, attacker_ip), diagnostics(host)
        assert tcp_connect_rc(host, "attacker") == 124

        host.check_output("systemctl restart nftables.service")
        assert wait_for(host, ban_enforced), diagnostics(host)
        assert tcp_connect_rc(host, "attacker") == 124

        # Stopping nftables flushes everything and stops fail2ban; starting it starts fail2ban again.
        host.check_output("systemctl stop nftables.service")
        assert not host.service("fail2ban").is_running
        host.check_output("systemctl start nftables.service")
        assert wait_for(host, ban_enforced), diagnostics(host)
        assert host.service("fail2ban").is_running
        assert tcp_connect_rc(host, "attacker") == 124
    finally:
        host.run("systemctl start fail2ban.service")
        unban(host, attacker_ip)
        if not had_filter_table:
            host.run("nft delete table inet filter")  # the accept-all table of Debian's /etc/nftables.conf
    assert tcp_connect_rc(host, "attacker") == 0


def test_allowlisted_friend_is_never_banned(host, netns):
    friend_ip = netns["friend"][2]
    ignore_line = f"Ignore {friend_ip} by ip"
    count_ignored = f"grep -c '{ignore_line}' {F2B_LOG}"
    before = int(host.run(count_ignored).stdout.strip() or 0)
    try:
        assert tcp_connect_rc(host, "friend") == 0

        # More failures than would ban anyone else.
        outcomes = failed_logins(host, "friend", MAXRETRY + 2)
        assert "rc=5" in outcomes, f"no login got as far as a wrong password: {outcomes}"

        # fail2ban did see them, and let them pass because of fail2ban_ignoreip.
        assert wait_for(host, f"test $({count_ignored}) -ge {before + MAXRETRY + 1}"), diagnostics(host)
        assert friend_ip not in banned_ips(host)
        assert friend_ip not in host.run("nft list table inet f2b-table").stdout
        assert tcp_connect_rc(host, "friend") == 0
    finally:
        unban(host, friend_ip)

"""Commit-confirmed nftables changes, against real nft in a throwaway network
namespace (the controller's own firewall is never touched)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.helpers import ROOT

sys.path.insert(0, str(ROOT / "plugins" / "module_utils"))
import keelson_nft  # noqa: E402

NFT = shutil.which("nft") or "/usr/sbin/nft"
pytestmark = pytest.mark.skipif(
    not Path(NFT).exists(), reason="nftables is not installed (scripts/prereqs.sh installs it)"
)

ALLOW_SSH = """
table inet keelson {
    chain input {
        type filter hook input priority filter; policy drop;
        ct state established,related accept
        iifname "lo" accept
        tcp dport 22 accept
    }
}
"""
ALLOW_WEB = ALLOW_SSH.replace("tcp dport 22 accept", "tcp dport 22 accept\n        tcp dport { 80, 443 } accept")
BROKEN = ALLOW_SSH.replace("tcp dport 22 accept", "tcp dport 22 acept")
DOCKER_LIKE = """
table ip nat {
    chain DOCKER {
    }
}
"""


@pytest.fixture
def netns():
    name = f"keelson-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], check=True)


class Timers:
    """Records what the module would hand to systemd-run."""

    def __init__(self):
        self.armed: dict[str, tuple[int, list[str]]] = {}
        self.cancelled: list[str] = []

    def schedule(self, unit, seconds, argv):
        self.armed[unit] = (seconds, argv)

    def cancel(self, unit):
        self.cancelled.append(unit)
        self.armed.pop(unit, None)


def make(netns, tmp_path, timers):
    def run(argv, data=None):
        proc = subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, check=False)
        return proc.returncode, proc.stdout, proc.stderr

    return keelson_nft.NftCommit(run, timers.schedule, timers.cancel, state_dir=str(tmp_path / "state"), nft=(NFT,))


def ns_nft(netns, *args):
    return subprocess.run(["ip", "netns", "exec", netns, NFT, *args], capture_output=True, text=True, check=True).stdout


def test_apply_then_confirm_persists_and_disarms(netns, tmp_path):
    timers = Timers()
    nft = make(netns, tmp_path, timers)
    nft.apply(ALLOW_SSH, timeout=30)
    assert "tcp dport 22 accept" in nft.live()
    assert timers.armed["keelson-nft-rollback"][0] == 30
    persist = tmp_path / "etc" / "keelson.nft"
    assert nft.confirm(ALLOW_SSH, persist_path=str(persist)) is True
    assert "keelson-nft-rollback" not in timers.armed
    assert persist.read_text().startswith("table inet keelson\ndelete table inet keelson\n")
    assert nft.in_sync(ALLOW_SSH)
    assert not nft.in_sync(ALLOW_WEB)


def test_unconfirmed_change_is_reverted_by_the_armed_command(netns, tmp_path):
    timers = Timers()
    nft = make(netns, tmp_path, timers)
    nft.apply(ALLOW_SSH, timeout=30)
    nft.confirm(ALLOW_SSH)
    before = nft.live()
    nft.apply(ALLOW_WEB, timeout=30)
    assert "80, 443" in nft.live()
    # What the timer would run when nobody confirms:
    _seconds, argv = timers.armed["keelson-nft-rollback"]
    subprocess.run(["ip", "netns", "exec", netns, *argv], check=True)
    assert nft.live() == before
    assert nft.pending() is None, "after the rollback nothing awaits confirmation"
    assert nft.in_sync(ALLOW_SSH), "the last confirmed table is in force again"
    assert not nft.in_sync(ALLOW_WEB)


def test_rollback_of_a_first_apply_removes_the_table(netns, tmp_path):
    nft = make(netns, tmp_path, Timers())
    nft.apply(ALLOW_SSH, timeout=30)
    assert nft.rollback() is True
    assert nft.live() == ""
    assert nft.rollback() is False


def test_a_broken_ruleset_changes_nothing(netns, tmp_path):
    timers = Timers()
    nft = make(netns, tmp_path, timers)
    nft.apply(ALLOW_SSH, timeout=30)
    nft.confirm(ALLOW_SSH)
    before = nft.live()
    with pytest.raises(keelson_nft.NftError, match="nothing was changed"):
        nft.apply(BROKEN, timeout=30)
    assert nft.live() == before
    assert timers.armed == {}
    assert nft.pending() is None


def test_other_tables_survive_every_step(netns, tmp_path):
    subprocess.run(["ip", "netns", "exec", netns, NFT, "-f", "-"], input=DOCKER_LIKE, text=True, check=True)
    nft = make(netns, tmp_path, Timers())
    nft.apply(ALLOW_SSH, timeout=30)
    nft.confirm(ALLOW_SSH)
    nft.apply(ALLOW_WEB, timeout=30)
    nft.rollback()
    assert "chain DOCKER" in ns_nft(netns, "list", "table", "ip", "nat")


def test_a_second_unconfirmed_apply_keeps_the_last_good_table(netns, tmp_path):
    timers = Timers()
    nft = make(netns, tmp_path, timers)
    nft.apply(ALLOW_SSH, timeout=30)
    nft.confirm(ALLOW_SSH)
    good = nft.live()
    nft.apply(ALLOW_WEB, timeout=30)
    nft.apply(ALLOW_WEB.replace("80, 443", "8080"), timeout=30)
    nft.rollback()
    assert nft.live() == good


def test_confirming_a_different_change_is_refused(netns, tmp_path):
    nft = make(netns, tmp_path, Timers())
    nft.apply(ALLOW_SSH, timeout=30)
    with pytest.raises(keelson_nft.NftError, match="not the one being confirmed"):
        nft.confirm(ALLOW_WEB)


@pytest.mark.parametrize("table", ["keelson", "inet", "inet kee lson", "foo keelson"])
def test_table_names_are_checked(table):
    with pytest.raises(keelson_nft.NftError, match="family"):
        keelson_nft.NftCommit(None, None, None, table=table)


def test_too_short_a_timeout_is_refused(netns, tmp_path):
    nft = make(netns, tmp_path, Timers())
    with pytest.raises(keelson_nft.NftError, match="at least 10"):
        nft.apply(ALLOW_SSH, timeout=5)
    assert nft.live() == ""


def test_normalise_ignores_handles_and_blank_lines():
    assert keelson_nft.normalise("a # handle 4\n\n b\n") == "a\n b\n"


LISTING_WITH_RATE_STATE = """table inet keelson {
\tset admin_v4 {
\t\ttype ipv4_addr
\t\tflags interval
\t\telements = { 10.0.0.1, 10.0.0.2 }
\t}

\tset ssh_rate_v4 {
\t\ttype ipv4_addr
\t\tsize 65535
\t\tflags dynamic,timeout
\t\ttimeout 5m
\t\telements = { 10.0.0.1 timeout 5m expires 4m1s limit rate over 30/minute burst 30 packets,
\t\t\t     10.0.0.2 timeout 5m expires 2m limit rate over 30/minute burst 30 packets }
\t}
}
"""


def test_dynamic_set_state_is_not_part_of_the_configuration():
    cleaned = keelson_nft.drop_dynamic_elements(LISTING_WITH_RATE_STATE)
    assert "expires" not in cleaned
    assert "elements = { 10.0.0.1, 10.0.0.2 }" in cleaned, "configured elements stay"
    assert "set ssh_rate_v4 {" in cleaned and "timeout 5m" in cleaned
    assert cleaned.count("{") == cleaned.count("}")


def test_live_state_ignores_per_source_rate_entries(netns, tmp_path):
    body = ALLOW_SSH.replace(
        "tcp dport 22 accept",
        "tcp dport 22 ct state new update @rate { ip saddr limit rate over 5/minute } drop\n"
        "        tcp dport 22 accept",
    ).replace(
        "    chain input {",
        "    set rate {\n        type ipv4_addr\n        flags dynamic\n        timeout 5m\n    }\n    chain input {",
    )
    nft = make(netns, tmp_path, Timers())
    nft.apply(body, timeout=30)
    nft.confirm(body)
    assert nft.in_sync(body)
    ns_nft(netns, "add", "element", "inet", "keelson", "rate", "{ 192.0.2.9 }")
    assert "192.0.2.9" in ns_nft(netns, "list", "set", "inet", "keelson", "rate")
    assert nft.in_sync(body), "run-time rate state must not count as drift"

# Keelson: commit-confirmed nftables changes (logic for plugins/modules/nft_commit.py).
# MIT License (see LICENSE)
"""Apply an nftables table atomically, with an automatic way back.

Keelson owns exactly one table (``inet keelson`` by default).  A change is
made in three steps, like a router's commit-confirmed:

1. ``apply``: check the new table with ``nft -c``, save the live table, load
   the new one in one transaction that touches no other table (Docker's stay
   as they are), and arm a timer that loads the saved table back;
2. the controller opens a fresh connection to prove it can still get in;
3. ``confirm``: disarm the timer and persist the new table for boot.

Nothing here talks to Ansible; the module passes a command runner and a
scheduler, so the same code is tested against real ``nft`` in a network
namespace.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile

TABLE_RE = re.compile(r"^(inet|ip|ip6|arp|bridge|netdev) [A-Za-z_][A-Za-z0-9_-]*$")


class NftError(Exception):
    """A failure with a message an operator can act on."""


def replace_script(table, body):
    """An nft script that atomically replaces ``table`` with ``body``.

    ``table x`` creates the table if missing, so ``delete table x`` never
    fails; the new definition follows in the same transaction.  Other tables
    (Docker's, for example) are not touched.
    """
    body = body.strip("\n")
    script = f"table {table}\ndelete table {table}\n"
    if body:
        script += body + "\n"
    return script


def normalise(listing):
    """Drop what changes without a ruleset change (handles, blank lines)."""
    lines = []
    for raw in listing.splitlines():
        line = re.sub(r"\s+# handle \d+$", "", raw.rstrip())
        if line.strip():
            lines.append(line)
    return "\n".join(lines) + ("\n" if lines else "")


def drop_dynamic_elements(listing):
    """Remove the elements of dynamic sets (per-source rate state the kernel
    adds at run time), keeping everything that was configured."""
    out = []
    in_set = dynamic = skipping = False
    depth = 0
    for line in listing.splitlines():
        stripped = line.strip()
        if skipping:
            depth += stripped.count("{") - stripped.count("}")
            if depth <= 0:
                skipping = False
            continue
        if re.match(r"^set \S+ \{$", stripped):
            in_set, dynamic = True, False
        elif in_set and stripped.startswith("flags") and "dynamic" in stripped:
            dynamic = True
        elif in_set and dynamic and stripped.startswith("elements = {"):
            depth = stripped.count("{") - stripped.count("}")
            skipping = depth > 0
            continue
        elif in_set and stripped == "}":
            in_set = False
        out.append(line)
    return "\n".join(out) + ("\n" if out else "")


def digest(text):
    return hashlib.sha256(text.encode()).hexdigest()


class NftCommit:
    """Commit-confirmed changes to one nftables table.

    run(argv, data=None) -> (rc, stdout, stderr) runs a command;
    schedule(unit, seconds, argv) arms a one-shot timer, cancel(unit) disarms it.
    """

    def __init__(
        self,
        run,
        schedule,
        cancel,
        *,
        table="inet keelson",
        state_dir="/var/lib/keelson/nft",
        nft=("nft",),
        unit="keelson-nft-rollback",
    ):
        if not TABLE_RE.match(table):
            raise NftError(f"table must be '<family> <name>', e.g. 'inet keelson'; got {table!r}")
        self.run = run
        self.schedule = schedule
        self.cancel = cancel
        self.table = table
        self.state_dir = state_dir
        self.nft = list(nft)
        self.unit = unit

    # -- state files ------------------------------------------------------
    def _path(self, name):
        return os.path.join(self.state_dir, name)

    def _write(self, name, text, mode=0o600):
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.state_dir, prefix=".tmp-")
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, self._path(name))
        return self._path(name)

    def _read(self, name):
        try:
            with open(self._path(name)) as handle:
                return handle.read()
        except FileNotFoundError:
            return None

    def pending(self):
        """The armed rollback, if a change awaits confirmation."""
        text = self._read("pending.json")
        return json.loads(text) if text else None

    # -- nft --------------------------------------------------------------
    def _nft(self, *args, data=None):
        return self.run(self.nft + list(args), data=data)

    def live(self):
        """The live table as nft prints it ('' when it does not exist)."""
        rc, out, err = self._nft("list", "table", *self.table.split())
        if rc != 0:
            if "No such file or directory" in err or "does not exist" in err:
                return ""
            raise NftError(f"cannot read table {self.table}: {err.strip()}")
        return normalise(drop_dynamic_elements(out))

    def check(self, body):
        """Validate the replacement script without applying it (nft -c); changes no file."""
        with tempfile.NamedTemporaryFile("w", suffix=".nft", prefix="keelson-check-") as handle:
            handle.write(replace_script(self.table, body))
            handle.flush()
            rc, _out, err = self._nft("-c", "-f", handle.name)
        if rc != 0:
            raise NftError(f"nft rejected the new ruleset (nothing was changed):\n{err.strip()}")

    def in_sync(self, body):
        """True when the wanted body is what was last confirmed and is live."""
        confirmed = self._read("confirmed.json")
        if not confirmed or self.pending():
            return False
        record = json.loads(confirmed)
        return record.get("body") == digest(body) and record.get("live") == digest(self.live())

    # -- the three steps --------------------------------------------------
    def apply(self, body, timeout):
        """Load ``body`` now and arm a rollback in ``timeout`` seconds."""
        if timeout < 10:
            raise NftError("timeout must be at least 10 seconds to leave time to confirm")
        self.check(body)
        candidate = self._write("candidate.nft", replace_script(self.table, body))
        previous = self.pending()
        if previous:
            # An earlier change was never confirmed: its saved table is the
            # last one known to work, so keep it as the way back.
            self.cancel(self.unit)
            backup = previous["backup"]
        else:
            backup = self._write("rollback.nft", replace_script(self.table, self.live()))
        # Load the saved table, then forget the pending change: the host is
        # back at the last confirmed state.
        revert = ["sh", "-c", '"$0" -f "$1" && rm -f "$2"', self.nft[-1], backup, self._path("pending.json")]
        if len(self.nft) > 1:
            revert = self.nft[:-1] + revert
        self.schedule(self.unit, timeout, revert)
        self._write("pending.json", json.dumps({"backup": backup, "body": digest(body), "timeout": timeout}))
        rc, _out, err = self._nft("-f", candidate)
        if rc != 0:
            self.rollback()
            raise NftError(f"loading the new ruleset failed, the previous one is back:\n{err.strip()}")
        return {"backup": backup, "revert": revert}

    def confirm(self, body, persist_path=None):
        """Disarm the rollback and record (and optionally persist) the table."""
        pending = self.pending()
        if pending and pending.get("body") != digest(body):
            raise NftError("the change awaiting confirmation is not the one being confirmed")
        self.cancel(self.unit)
        if persist_path:
            persist_dir = os.path.dirname(persist_path)
            os.makedirs(persist_dir, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=persist_dir, prefix=".keelson-nft-")
            with os.fdopen(fd, "w") as handle:
                handle.write(replace_script(self.table, body))
            os.chmod(tmp, 0o600)
            os.replace(tmp, persist_path)
        self._write("confirmed.json", json.dumps({"body": digest(body), "live": digest(self.live())}))
        if pending:
            os.unlink(self._path("pending.json"))
        return bool(pending)

    def rollback(self):
        """Load the saved table now and disarm the timer."""
        pending = self.pending()
        if not pending:
            return False
        self.cancel(self.unit)
        rc, _out, err = self._nft("-f", pending["backup"])
        if rc != 0:
            raise NftError(f"rollback failed: {err.strip()}")
        os.unlink(self._path("pending.json"))
        return True

#!/usr/bin/python
# Keelson: commit-confirmed nftables changes.
# MIT License (see LICENSE)

DOCUMENTATION = r"""
module: nft_commit
short_description: Replace one nftables table atomically, with an automatic rollback until confirmed
description:
  - Owns exactly one nftables table (O(table)); every other table, such as
    Docker's, is left as it is. The table is replaced in one transaction.
  - C(state=applied) checks the new table with C(nft -c) (a bad ruleset fails
    here and nothing changes), saves the live table, loads the new one and arms
    a systemd timer that loads the saved table back after O(timeout) seconds.
  - The play then proves it can still connect and calls C(state=confirmed),
    which disarms the timer and writes the table to O(persist_path) for boot.
    If the controller never confirms, the host reverts by itself.
  - C(state=rolled_back) loads the saved table now.
  - Unchanged input (same body confirmed before and the live table unchanged)
    reports C(changed=false) and arms nothing.
options:
  body:
    description: The table definition, e.g. C(table inet keelson { chain input { ... } }).
    type: str
  table:
    description: The table this module owns, as C(<family> <name>).
    type: str
    default: inet keelson
  state:
    description: Which step to run.
    type: str
    choices: [applied, confirmed, rolled_back]
    default: applied
  timeout:
    description: Seconds before an unconfirmed change is rolled back (at least 10).
    type: int
    default: 60
  persist_path:
    description: Where C(confirmed) writes the table so that nftables.service loads it at boot.
    type: path
    default: /etc/nftables.d/keelson.nft
  state_dir:
    description: Where the saved table and the pending/confirmed records live.
    type: path
    default: /var/lib/keelson/nft
author: Keelson developers
"""

EXAMPLES = r"""
- name: Apply the firewall, revert in 60 s unless confirmed
  nft_commit:
    body: "{{ lookup('ansible.builtin.template', 'keelson.nft.j2') }}"
    timeout: 60
  register: fw

- name: Prove a fresh connection still works
  ansible.builtin.meta: reset_connection

- name: Confirm
  nft_commit:
    body: "{{ lookup('ansible.builtin.template', 'keelson.nft.j2') }}"
    state: confirmed
  when: fw is changed
"""

RETURN = r"""
rollback_armed:
  description: Whether a rollback timer is armed after this call.
  type: bool
  returned: always
backup:
  description: The saved table that the rollback loads.
  type: str
  returned: when state is applied and something changed
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.keelson_nft import NftCommit, NftError


def main():
    module = AnsibleModule(
        argument_spec=dict(
            body=dict(type="str"),
            table=dict(type="str", default="inet keelson"),
            state=dict(type="str", choices=["applied", "confirmed", "rolled_back"], default="applied"),
            timeout=dict(type="int", default=60),
            persist_path=dict(type="path", default="/etc/nftables.d/keelson.nft"),
            state_dir=dict(type="path", default="/var/lib/keelson/nft"),
        ),
        required_if=[("state", "applied", ["body"]), ("state", "confirmed", ["body"])],
        supports_check_mode=True,
    )
    p = module.params
    nft = module.get_bin_path("nft")
    if nft is None:
        if module.check_mode:
            # A fresh host in check mode: the package is not installed yet.
            module.exit_json(
                changed=p["state"] != "rolled_back",
                rollback_armed=False,
                msg="nft is not installed yet; the ruleset could not be validated in check mode",
            )
        module.fail_json(msg="nft is not installed (install the nftables package first)")

    def run(argv, data=None):
        return module.run_command(argv, data=data, binary_data=True)

    def schedule(unit, seconds, argv):
        systemd_run = module.get_bin_path("systemd-run", required=True)
        cancel(unit)
        rc, _out, err = module.run_command(
            [
                systemd_run,
                "--unit",
                unit,
                "--on-active",
                f"{seconds}s",
                "--timer-property=AccuracySec=1s",
                "--description",
                "Keelson: roll back an unconfirmed firewall change",
            ]
            + argv
        )
        if rc != 0:
            raise NftError(f"cannot arm the rollback timer (nothing was changed): {err.strip()}")

    def cancel(unit):
        # Stopping a unit that does not exist is fine: nothing was armed.
        module.run_command(["systemctl", "stop", unit + ".timer", unit + ".service"])
        module.run_command(["systemctl", "reset-failed", unit + ".timer", unit + ".service"])

    try:
        nftc = NftCommit(run, schedule, cancel, table=p["table"], state_dir=p["state_dir"], nft=(nft,))
        if p["state"] == "applied":
            if nftc.in_sync(p["body"]):
                module.exit_json(changed=False, rollback_armed=False)
            if module.check_mode:
                nftc.check(p["body"])  # apply() runs the same check itself
                module.exit_json(changed=True, rollback_armed=False)
            result = nftc.apply(p["body"], p["timeout"])
            module.exit_json(changed=True, rollback_armed=True, backup=result["backup"])
        elif p["state"] == "confirmed":
            if nftc.in_sync(p["body"]):
                module.exit_json(changed=False, rollback_armed=False)
            if module.check_mode:
                module.exit_json(changed=True, rollback_armed=bool(nftc.pending()))
            nftc.confirm(p["body"], persist_path=p["persist_path"])
            module.exit_json(changed=True, rollback_armed=False)
        else:
            pending = nftc.pending()
            if module.check_mode or not pending:
                module.exit_json(changed=bool(pending), rollback_armed=bool(pending))
            nftc.rollback()
            module.exit_json(changed=True, rollback_armed=False)
    except NftError as exc:
        module.fail_json(msg=str(exc))


if __name__ == "__main__":
    main()

"""Write a machine-readable summary of a playbook run."""

from __future__ import annotations

DOCUMENTATION = r"""
name: keelson_summary
type: aggregate
short_description: Write a JSON summary of a run (per-host stats and every changed task)
description:
  - Writes one JSON document when the run ends, to the file named by
    C(KEELSON_SUMMARY_FILE). Nothing is written when the variable is unset, so
    the plugin can stay enabled in ansible.cfg.
  - The summary has the PLAY RECAP numbers per host and, for every task that
    reported C(changed), the host, play and task name. Tests use it to prove a
    second run changes nothing, and to say which task did when it does.
requirements:
  - enabled in ansible.cfg (C(callbacks_enabled))
options:
  path:
    description: Where to write the summary.
    env:
      - name: KEELSON_SUMMARY_FILE
    ini:
      - section: callback_keelson_summary
        key: path
    type: path
"""

import json
import os
import tempfile

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "keelson_summary"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._play = None
        self._changed = []
        self._failed = []

    def v2_playbook_on_play_start(self, play):
        self._play = play.get_name()

    def v2_runner_on_ok(self, result):
        if result._result.get("changed", False):
            self._changed.append(self._record(result))

    def v2_runner_on_failed(self, result, ignore_errors=False):
        if not ignore_errors:
            record = self._record(result)
            record["msg"] = str(result._result.get("msg", ""))[:2000]
            self._failed.append(record)

    def v2_runner_on_unreachable(self, result):
        record = self._record(result)
        record["msg"] = str(result._result.get("msg", ""))[:2000]
        self._failed.append(record)

    def _record(self, result):
        return {
            "host": result._host.get_name(),
            "play": self._play,
            "task": result._task.get_name(),
            "action": result._task.action,
        }

    def v2_playbook_on_stats(self, stats):
        path = self.get_option("path")
        if not path:
            return
        hosts = {}
        for host in sorted(stats.processed):
            summary = stats.summarize(host)
            hosts[host] = {
                key: summary.get(key, 0)
                for key in ("ok", "changed", "failures", "unreachable", "skipped", "rescued", "ignored")
            }
        document = {"hosts": hosts, "changed_tasks": self._changed, "failed_tasks": self._failed}
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".keelson-summary-")
        with os.fdopen(fd, "w") as handle:
            json.dump(document, handle, indent=2, sort_keys=True)
        os.replace(tmp, path)

"""Filters that check the form of values passed through to the services, on the controller.

- ``keelson_form_errors``: one message per value of a mapping that is not of the given form
  (a Docker memory size, a Redis memory size, a Prometheus duration, a PostgreSQL memory or
  time setting).
- ``keelson_postgres_setting_errors``: one message per entry of ``postgres_settings`` that
  PostgreSQL would refuse for its form (a memory or time parameter without a valid unit, a
  name that is not a parameter name, a value that cannot be passed as ``-c key=value``).

The servers themselves remain the last word (a value can be well-formed and still out of
range); these checks refuse what is malformed before any host is contacted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

DOCUMENTATION = """
name: keelson_inputs
short_description: Form checks of sizes, durations and service settings
description:
  - C(keelson_form_errors(form)) returns one message per value of a mapping that is not of C(form)
    (docker_size, redis_size, prometheus_duration, postgres_memory, postgres_time).
  - C(keelson_postgres_setting_errors) returns one message per malformed entry of a PostgreSQL settings mapping.
"""

_NUMBER = r"[0-9]+(?:\.[0-9]+)?"
FORMS: dict[str, tuple[re.Pattern[str], str]] = {
    # Compose's mem_limit / deploy.resources.limits.memory (docker/go-units RAMInBytes).
    "docker_size": (re.compile(rf"^{_NUMBER}\s*(?:[bkmgtp]|[kmgtp]i?b)?$", re.IGNORECASE), "a size like 512m or 1g"),
    # redis.conf memory units: 1k 1kb 1m 1mb 1g 1gb, case-insensitive, or bytes.
    "redis_size": (re.compile(r"^[0-9]+(?:[kmg]b?)?$", re.IGNORECASE), "a size like 256mb or 1gb"),
    # Prometheus/Alertmanager durations: units in order, each at most once (1h30m, 15d, 500ms).
    "prometheus_duration": (
        re.compile(r"^(?=[0-9])(?:[0-9]+y)?(?:[0-9]+w)?(?:[0-9]+d)?(?:[0-9]+h)?(?:[0-9]+m)?(?:[0-9]+s)?(?:[0-9]+ms)?$"),
        "a duration like 15s, 5m, 1h30m or 15d",
    ),
    # PostgreSQL memory and time parameters: a number with one of its units (case-sensitive).
    "postgres_memory": (re.compile(rf"^-?{_NUMBER}\s*(?:B|kB|MB|GB|TB)?$"), "a memory size like 128MB, 8kB or 1GB"),
    "postgres_time": (re.compile(rf"^-?{_NUMBER}\s*(?:us|ms|s|min|h|d)?$"), "a time like 500ms, 30s, 5min or 1h"),
}

# PostgreSQL parameters whose unit is memory or time (the ones people set; others are
# checked for the form of any value only).
POSTGRES_MEMORY = frozenset(
    {
        "shared_buffers",
        "work_mem",
        "maintenance_work_mem",
        "autovacuum_work_mem",
        "logical_decoding_work_mem",
        "effective_cache_size",
        "temp_buffers",
        "wal_buffers",
        "max_wal_size",
        "min_wal_size",
        "wal_keep_size",
        "max_slot_wal_keep_size",
        "temp_file_limit",
        "huge_page_size",
        "log_rotation_size",
    }
)
POSTGRES_TIME = frozenset(
    {
        "statement_timeout",
        "lock_timeout",
        "idle_in_transaction_session_timeout",
        "idle_session_timeout",
        "transaction_timeout",
        "deadlock_timeout",
        "checkpoint_timeout",
        "checkpoint_warning",
        "archive_timeout",
        "wal_sender_timeout",
        "wal_receiver_timeout",
        "wal_receiver_status_interval",
        "wal_writer_delay",
        "bgwriter_delay",
        "autovacuum_naptime",
        "log_min_duration_statement",
        "log_min_duration_sample",
        "log_autovacuum_min_duration",
        "log_rotation_age",
        "authentication_timeout",
        "tcp_keepalives_idle",
        "tcp_keepalives_interval",
        "tcp_user_timeout",
        "client_connection_check_interval",
        "max_standby_streaming_delay",
        "max_standby_archive_delay",
        "vacuum_cost_delay",
        "autovacuum_vacuum_cost_delay",
    }
)
_POSTGRES_NAME = re.compile(r"^[a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)?$")


def _matches(value: Any, form: str) -> bool:
    pattern, _ = FORMS[form]
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        if form.startswith("postgres_"):
            return True  # in the parameter's base unit
        # Bytes for Docker and Redis; Prometheus has no unitless durations.
        return form != "prometheus_duration" and isinstance(value, int) and value >= 0
    return isinstance(value, str) and value == value.strip() and bool(pattern.match(value))


def keelson_form_errors(values: Mapping[str, Any], form: str) -> list[str]:
    """One message per ``name: value`` of ``values`` that is not of ``form``."""
    if form not in FORMS:
        raise ValueError(f"keelson_form_errors: unknown form {form!r} (known: {', '.join(sorted(FORMS))})")
    if not isinstance(values, Mapping):
        raise TypeError("keelson_form_errors: expects a mapping of variable name to value")
    _, example = FORMS[form]
    return [f"{name} ({value!r}) must be {example}" for name, value in values.items() if not _matches(value, form)]


def keelson_postgres_setting_errors(settings: Any) -> list[str]:
    """One message per malformed entry of a PostgreSQL settings mapping (passed as ``-c key=value``)."""
    if not isinstance(settings, Mapping):
        return [f"postgres_settings must be a mapping of parameter name to value, got {type(settings).__name__}"]
    errors = []
    for name, value in settings.items():
        label = f"postgres_settings.{name}"
        if not isinstance(name, str) or not _POSTGRES_NAME.match(name):
            errors.append(f"{label}: {name!r} is not a PostgreSQL parameter name")
            continue
        if isinstance(value, Mapping | list | tuple) or value is None:
            errors.append(f"{label}: must be a single value, got {value!r}")
            continue
        text = value if isinstance(value, str) else str(value)
        if not text.strip() or "\n" in text or "\x00" in text:
            errors.append(f"{label}: {value!r} must be a non-empty single-line value")
            continue
        for names, form in ((POSTGRES_MEMORY, "postgres_memory"), (POSTGRES_TIME, "postgres_time")):
            if name in names and not _matches(value, form):
                errors.append(f"{label} ({value!r}) must be {FORMS[form][1]}")
    return errors


class FilterModule:
    """Ansible entry point."""

    def filters(self) -> dict[str, Any]:
        return {
            "keelson_form_errors": keelson_form_errors,
            "keelson_postgres_setting_errors": keelson_postgres_setting_errors,
        }

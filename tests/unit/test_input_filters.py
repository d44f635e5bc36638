"""The form checks of plugins/filter/keelson_inputs.py (sizes, durations, PostgreSQL settings)."""

from __future__ import annotations

import sys

import pytest

from tests.helpers import ROOT

sys.path.insert(0, str(ROOT / "plugins" / "filter"))
import keelson_inputs as ki  # noqa: E402


@pytest.mark.parametrize(
    ("form", "good", "bad"),
    [
        (
            "docker_size",
            ["384m", "1g", "1G", "512M", "1gb", "1GiB", 1048576, "0.5g"],
            ["lots", "1 gigabyte", "-1m", "", "1x", True],
        ),
        ("redis_size", ["256mb", "1gb", "100k", "1G", 1000000, "0"], ["lots", "256 mb", "1.5gb", "1gib", "", -5]),
        (
            "prometheus_duration",
            ["15s", "5m", "1h30m", "15d", "1w", "1y", "500ms", "0s"],
            ["15", 15, "lots", "5min", "1m1h", "h", "", " 15s"],
        ),
        ("postgres_memory", ["128MB", "8kB", "1GB", "1024", 1024, "-1"], ["lots", "128mb", "1Gb", "12 MiB", ""]),
        ("postgres_time", ["500ms", "30s", "5min", "1h", "2d", "0", -1, "100us"], ["lots", "5m", "1 hour", "30S"]),
    ],
)
def test_each_form_accepts_its_examples_and_refuses_the_rest(form, good, bad):
    assert ki.keelson_form_errors({f"v{i}": v for i, v in enumerate(good)}, form) == []
    errors = ki.keelson_form_errors({f"v{i}": v for i, v in enumerate(bad)}, form)
    assert len(errors) == len(bad), errors
    assert all(e.startswith(f"v{i} (") for i, e in enumerate(errors))


def test_form_errors_name_the_variable_the_value_and_the_form():
    [message] = ki.keelson_form_errors({"redis_maxmemory": "lots", "redis_memory_limit": "384m"}, "redis_size")
    assert message == "redis_maxmemory ('lots') must be a size like 256mb or 1gb"


def test_an_unknown_form_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown form"):
        ki.keelson_form_errors({"a": "1"}, "furlongs")


def test_the_default_postgres_settings_pass():
    defaults = {
        "max_connections": 100,
        "shared_buffers": "128MB",
        "password_encryption": "scram-sha-256",
        "log_min_duration_statement": "500ms",
        "log_connections": "on",
    }
    assert ki.keelson_postgres_setting_errors(defaults) == []


def test_postgres_settings_refuse_bad_units_names_and_values():
    errors = ki.keelson_postgres_setting_errors(
        {
            "shared_buffers": "lots",
            "statement_timeout": "5m",  # minutes are "min" in PostgreSQL; "m" is refused there too
            "Bad-Name": 1,
            "application_name": "two\nlines",
            "search_path": ["a", "b"],
            "work_mem": "4MB",
            "jit": False,
        }
    )
    assert errors == [
        "postgres_settings.shared_buffers ('lots') must be a memory size like 128MB, 8kB or 1GB",
        "postgres_settings.statement_timeout ('5m') must be a time like 500ms, 30s, 5min or 1h",
        "postgres_settings.Bad-Name: 'Bad-Name' is not a PostgreSQL parameter name",
        "postgres_settings.application_name: 'two\\nlines' must be a non-empty single-line value",
        "postgres_settings.search_path: must be a single value, got ['a', 'b']",
    ]


def test_postgres_settings_must_be_a_mapping():
    assert ki.keelson_postgres_setting_errors("shared_buffers=1GB") == [
        "postgres_settings must be a mapping of parameter name to value, got str"
    ]

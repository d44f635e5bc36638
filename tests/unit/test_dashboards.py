"""The Grafana dashboards of role monitoring are well-formed and every query in them parses.

Every dashboard in ``roles/monitoring/files/dashboards/`` is a JSON object with its uid
(``keelson-<file name>``), schemaVersion 39, unique panel ids and the provisioned
Prometheus datasource (uid ``keelson-prometheus``) on every panel and target. Every query
(panel targets, in collapsed rows too, and template variables), made concrete by
``keelson.dashboards.concrete``, passes ``promtool check rules`` as a recording rule:
with the variables at "All" and with chosen values that need escaping. promtool is found
as in test_monitoring_rules.py (PATH, else the lab's Prometheus image, built when missing).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from keelson import dashboards
from tests import lab_images
from tests.helpers import ROOT

DASHBOARD_DIR = ROOT / "roles" / "monitoring" / "files" / "dashboards"
DASHBOARDS = sorted(DASHBOARD_DIR.glob("*.json"))
DATASOURCE = {"type": "prometheus", "uid": "keelson-prometheus"}
# A label value that needs escaping in a regex and in a PromQL string.
CHOSEN = {"host": ["app1", 'odd.host"\\1']}


def _name(path: Path) -> str:
    return path.name


def _all_panels(panels: list[dict]) -> list[dict]:
    return [p for panel in panels for p in [panel, *_all_panels(panel.get("panels") or [])]]


def _promtool_check(rules: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """promtool check rules on one group with each expression as a recording rule."""
    rules_file = tmp_path / "dashboard_rules.yml"
    group = {
        "name": "dashboards",
        "rules": [{"record": f"keelson:dashboard_query:{i}", "expr": expr} for i, expr in enumerate(rules)],
    }
    rules_file.write_text(yaml.safe_dump({"groups": [group]}, sort_keys=False))
    argv = lab_images.promtool(tmp_path)  # in the lab image: the scratch directory mounted, read as us
    return subprocess.run(
        [*argv, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=120, check=False
    )


def test_the_four_dashboards_are_found():
    assert {path.name for path in DASHBOARDS} == {"fleet.json", "app.json", "postgres.json", "backups.json"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=_name)
def test_dashboard_is_well_formed(path):
    board = dashboards.load(path)
    assert board["uid"] == f"keelson-{path.stem}"
    assert board["schemaVersion"] == 39
    assert board["title"].startswith("Keelson / ")
    panels = _all_panels(board["panels"])
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(ids)}"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, f"{panel['title']}: {grid}"
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel.get("description"), f"panel {panel['id']} lacks a title or description"
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], f"{panel['title']}: no queries"
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), f"{panel['title']}: duplicate refIds {refs}"
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, f"{panel['title']} {target['refId']}"
            assert target["expr"].strip(), f"{panel['title']} {target['refId']}: empty query"
    for variable in board["templating"]["list"]:
        assert variable["datasource"] == DATASOURCE, variable["name"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=_name)
def test_panels_do_not_overlap(path):
    """Grafana moves overlapping panels around: a layout mistake shows up as a jumbled board."""
    board = dashboards.load(path)
    # Top-level panels (rows too) share one grid; a collapsed row's panels have their own.
    layouts = [board["panels"]] + [panel["panels"] for panel in board["panels"] if panel.get("panels")]
    for layout in layouts:
        cells: set[tuple[int, int]] = set()
        for panel in layout:
            grid = panel["gridPos"]
            xs, ys = range(grid["x"], grid["x"] + grid["w"]), range(grid["y"], grid["y"] + grid["h"])
            mine = {(x, y) for x in xs for y in ys}
            assert not cells & mine, f"{path.name}: panel {panel['title']!r} overlaps another"
            cells |= mine


@pytest.mark.parametrize("path", DASHBOARDS, ids=_name)
def test_rate_windows_use_rate_interval(path):
    """Fixed windows go blank or jagged when the scrape interval or the zoom changes."""
    for title, expr in dashboards.expressions(dashboards.load(path)):
        code = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
        for window in re.findall(r"\[([^\]]*)\]", code):
            assert window == "$__rate_interval", f"{path.name} {title!r}: window [{window}] in {expr}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=_name)
def test_every_query_parses_with_promtool(path, tmp_path):
    board = dashboards.load(path)
    queries = [expr for _, expr in dashboards.expressions(board)]
    assert len(queries) >= 5
    made = [dashboards.concrete(expr) for expr in queries] + [dashboards.concrete(e, CHOSEN) for e in queries]
    for query in made:
        assert "$" not in query and "[[" not in query, query
    proc = _promtool_check(made, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(made)} rules found" in proc.stdout, proc.stdout


def test_promtool_check_rejects_a_broken_query(tmp_path):
    """The check above can fail: a missing parenthesis and an unknown function are refused."""
    broken = dashboards.concrete('sum by (host) (rate(up{host=~"$host"}[$__rate_interval])')
    proc = _promtool_check(["up", broken], tmp_path)
    assert proc.returncode != 0
    proc = _promtool_check(["no_such_function(up)"], tmp_path)
    assert proc.returncode != 0


# --- expressions() ----------------------------------------------------------------------


def test_expressions_include_collapsed_rows_and_template_variables():
    board = dashboards.load(DASHBOARD_DIR / "postgres.json")
    found = dashboards.expressions(board)
    titles = [title for title, _ in found]
    redis_row = next(panel for panel in board["panels"] if panel["type"] == "row" and panel["title"] == "Redis")
    assert redis_row["collapsed"] and redis_row["panels"], "the Redis row should be collapsed, with its panels"
    assert "Rejected connections" in titles  # inside the collapsed row
    assert ("variable host", 'label_values(up{job="postgres"}, host)') in found
    # two targets in one panel are two expressions, in order
    both = [expr for title, expr in found if title == "Connections vs max_connections"]
    assert both == [
        'sum by (host) (pg_stat_database_numbackends{job="postgres", host=~"$host"})',
        'max by (host) (pg_settings_max_connections{job="postgres", host=~"$host"})',
    ]


def test_expressions_read_both_variable_query_forms_and_skip_other_queries():
    board = {
        "panels": [
            {"title": "text", "type": "text"},
            {"title": "logs", "targets": [{"refId": "A", "datasource": {"type": "loki"}}, {"refId": "B", "expr": " "}]},
            {"title": "row", "type": "row", "panels": [{"title": "inner", "targets": [{"expr": "up"}]}]},
        ],
        "templating": {
            "list": [
                {"name": "a", "type": "query", "query": "label_values(up, job)"},
                {"name": "b", "type": "query", "query": {"query": "label_values(up, instance)", "refId": "X"}},
                {"name": "c", "type": "custom", "query": "x,y"},
                {"name": "d", "type": "interval", "query": "1m,5m"},
            ]
        },
    }
    assert dashboards.expressions(board) == [
        ("inner", "up"),
        ("variable a", "label_values(up, job)"),
        ("variable b", "label_values(up, instance)"),
    ]


def test_load_names_a_file_that_is_not_a_dashboard(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"panels": [}')
    with pytest.raises(ValueError, match=r"bad\.json: not valid JSON"):
        dashboards.load(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a Grafana dashboard"):
        dashboards.load(bad)


def test_the_shipped_files_are_stable_json():
    """Written with indent 2 and a final newline: a regenerated or hand-edited file diffs cleanly."""
    for path in DASHBOARDS:
        text = path.read_text()
        assert text == json.dumps(json.loads(text), indent=2) + "\n", path.name


# --- concrete() -------------------------------------------------------------------------

APP_P99 = (
    "histogram_quantile(0.99, sum by (host, le) (rate(keelson_http_request_duration_seconds_bucket"
    '{job="app", host=~"$host", path!~"/readyz|/healthz|/metrics"}[$__rate_interval])))'
)


def test_concrete_fills_in_a_real_panel_query():
    assert APP_P99 in [expr for _, expr in dashboards.expressions(dashboards.load(DASHBOARD_DIR / "app.json"))]
    assert dashboards.concrete(APP_P99) == (
        "histogram_quantile(0.99, sum by (host, le) (rate(keelson_http_request_duration_seconds_bucket"
        '{job="app", host=~".*", path!~"/readyz|/healthz|/metrics"}[1m])))'
    )
    assert 'host=~"app1"' in dashboards.concrete(APP_P99, {"host": "app1"})


@pytest.mark.parametrize(
    ("expr", "made"),
    [
        ('up{host=~"${host}"}', 'up{host=~".*"}'),
        ('up{host=~"${host:regex}"}', 'up{host=~".*"}'),
        ('up{host=~"[[host]]"}', 'up{host=~".*"}'),
        ('up{host!~"$host"}', 'up{host!~".*"}'),
        ("up{host=~ '$host'}", "up{host=~ '.*'}"),
        ("increase(x[$__interval]) offset $__range", "increase(x[1m]) offset 1h"),
        ("max_over_time(x[${__range}]) * $__range_s", "max_over_time(x[1h]) * 3600"),
        ('label_replace(up, "h", "$1", "instance", "(.*):.*")', 'label_replace(up, "h", "$1", "instance", "(.*):.*")'),
    ],
)
def test_concrete_forms(expr, made):
    assert dashboards.concrete(expr) == made


def test_concrete_escapes_chosen_values_for_where_they_stand():
    assert dashboards.concrete('up{host=~"$host"}', {"host": "db.1"}) == r'up{host=~"db\\.1"}'
    assert dashboards.concrete('up{host=~"$host"}', {"host": ["app1", "app2"]}) == 'up{host=~"(app1|app2)"}'
    assert dashboards.concrete("up{host=~`$host`}", {"host": "db.1"}) == r"up{host=~`db\.1`}"
    assert dashboards.concrete('up{host="$host"}', {"host": 'a"b'}) == r'up{host="a\"b"}'
    assert dashboards.concrete("topk($n, up)", {"n": "5"}) == "topk(5, up)"


@pytest.mark.parametrize(
    ("expr", "variables", "message"),
    [
        ('up{host="$host"}', None, "outside a regex matcher"),
        ("topk($n, up)", None, "outside a regex matcher"),
        ('up{host="$host"}', {"host": ["a", "b"]}, "several values"),
        ('up{host=~"$host"}', {"host": []}, "non-empty list"),
        ("rate(up[$__step])", None, "unknown Grafana variable"),
        ("label_names()", None, "cannot turn label_names"),
    ],
)
def test_concrete_refuses_what_it_cannot_fill_in(expr, variables, message):
    with pytest.raises(ValueError, match=message):
        dashboards.concrete(expr, variables)


@pytest.mark.parametrize(
    ("query", "made"),
    [
        ('label_values(up{job="node"}, host)', 'up{job="node"}'),
        ('label_values(up{job="node", host=~"$host"}, instance)', 'up{job="node", host=~".*"}'),
        ('label_values(up{job="a,b"}, job)', 'up{job="a,b"}'),
        ("label_values(host)", '{host!=""}'),
        ("query_result(topk(3, up))", "topk(3, up)"),
        ("metrics(keelson_.*)", '{__name__=~"keelson_.*"}'),
    ],
)
def test_concrete_turns_template_queries_into_promql(query, made):
    assert dashboards.concrete(query) == made

"""The PromQL of Keelson's Grafana dashboards, ready to send to Prometheus.

Grafana fills its variables in before a query reaches Prometheus; a test that wants to
check a dashboard's queries itself (``promtool check rules`` offline, the lab Prometheus's
``/api/v1/query`` end to end) has to do the same. This module reads a dashboard
(``load``), lists every query in it (``expressions``: panel targets, in rows too, and the
template variables' queries) and makes one concrete (``concrete``)::

    board = load("roles/monitoring/files/dashboards/app.json")
    for title, expr in expressions(board):
        query = concrete(expr)              # $__rate_interval -> 1m, host=~"$host" -> host=~".*"
        query = concrete(expr, {"host": "app1"})  # host=~"app1"

Variables:

- Grafana's own: ``$__rate_interval``, ``$__interval`` and ``$__auto`` become ``1m``,
  ``$__range`` ``1h`` (``$__range_s`` 3600, ``$__range_ms`` and ``$__interval_ms`` in
  milliseconds). Any other ``$__name`` is an error.
- The dashboard's own (``$host``, ``${host}``, ``${host:regex}``, ``[[host]]``): a value
  from ``variables`` (a label value, or a list of them) is escaped for where it stands;
  without one, a variable in a regex matcher (``=~``, ``!~``) matches anything (``.*``,
  what the dashboards' "All" sends) and anywhere else it is an error, since no value
  would be right there.
- ``$1``-style references (``label_replace``'s replacement) are not variables: they stay.

A template variable's ``label_values(selector, label)`` becomes its selector (the series
whose label values Grafana lists), ``label_values(label)`` the selector ``{label!=""}``,
``query_result(expr)`` its expression and ``metrics(regex)`` ``{__name__=~"regex"}``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

# Grafana's built-in variables, as a one-minute step over a one-hour range would give them.
BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__auto": "1m",
    "__interval_ms": "60000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}
ANY = ".*"

# ${name}, ${name:format}, [[name]], [[name:format]], $name. A name is \w+; Grafana, like
# this, takes the longest one ($hostname is not $host followed by "name").
_VARIABLE = re.compile(r"\$\{(\w+)(?::[\w-]+)?\}|\[\[(\w+)(?::[\w-]+)?\]\]|\$(\w+)")
# A PromQL string literal: "...", '...' (backslash escapes) or `...` (raw).
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', re.DOTALL)
_REGEX_OPERATOR = re.compile(r"[=!]~\s*$")
_REGEX_META = set("\\.+*?()|[]{}^$")
_TEMPLATE_FUNCTION = re.compile(r"^\s*(label_values|query_result|metrics|label_names)\s*\((.*)\)\s*$", re.DOTALL)
_LABEL_NAME = re.compile(r"^[A-Za-z_]\w*$")

Variables = Mapping[str, str | Sequence[str]]


def load(path: str | Path) -> dict[str, Any]:
    """The dashboard in a Grafana JSON file (a ValueError says which file is not one)."""
    path = Path(path)
    try:
        board = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from err
    if not isinstance(board, dict) or not isinstance(board.get("panels", []), list):
        raise ValueError(f"{path}: not a Grafana dashboard (a JSON object with a list of panels)")
    return board


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        # A row keeps its panels in "panels" while collapsed; old dashboards nest them too.
        yield from _panels(panel.get("panels") or [])


def expressions(dashboard: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(title, expr) of every query: panel targets (in rows too), then template variables.

    A variable's title is ``variable <name>``. Targets without an expression (another
    datasource's queries, empty ones) are left out.
    """
    found: list[tuple[str, str]] = []
    for panel in _panels(list(dashboard.get("panels") or [])):
        for target in panel.get("targets") or []:
            expr = target.get("expr")
            if isinstance(expr, str) and expr.strip():
                found.append((str(panel.get("title", "")), expr))
    for variable in (dashboard.get("templating") or {}).get("list") or []:
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        if isinstance(query, Mapping):  # the Prometheus variable editor's form
            query = query.get("query")
        if isinstance(query, str) and query.strip():
            found.append((f"variable {variable.get('name', '')}", query))
    return found


def _regex_escape(value: str) -> str:
    return "".join("\\" + char if char in _REGEX_META else char for char in value)


def _string_escape(value: str, quote: str) -> str:
    if quote == "`":
        if "`" in value:
            raise ValueError(f"value {value!r} cannot stand in a `raw` PromQL string")
        return value
    return value.replace("\\", "\\\\").replace(quote, "\\" + quote)


def _value(name: str, variables: Variables, *, regex: bool, quote: str | None, expr: str) -> str:
    """What variable ``name`` becomes: in a regex matcher, a string (quote) or bare PromQL."""
    if name in variables:
        given = variables[name]
        values = [given] if isinstance(given, str) else list(given)
        if not values or not all(isinstance(value, str) for value in values):
            raise ValueError(f"variable {name}: give a label value or a non-empty list of them, not {given!r}")
        if regex:
            text = "|".join(_regex_escape(value) for value in values)
            text = f"({text})" if len(values) > 1 else text
        elif len(values) == 1:
            text = values[0]
        else:
            raise ValueError(f"variable {name} has several values but stands outside a regex matcher in: {expr}")
        return _string_escape(text, quote) if quote else text
    if regex:
        return ANY
    raise ValueError(
        f"variable ${name} stands outside a regex matcher (=~, !~) in: {expr}; give its value in variables"
    )


def _substitute(text: str, variables: Variables, *, regex: bool, quote: str | None, expr: str) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name.isdigit():  # $1: a regex group reference, not a variable
            return match.group(0)
        if name.startswith("__"):
            if name not in BUILTINS:
                raise ValueError(f"unknown Grafana variable ${name} in: {expr}")
            return BUILTINS[name]
        return _value(name, variables, regex=regex, quote=quote, expr=expr)

    return _VARIABLE.sub(replace, text)


def _split_arguments(text: str) -> list[str]:
    """Top-level comma-separated arguments (commas in strings, braces or brackets stay)."""
    arguments, depth, start, index = [], 0, 0, 0
    while index < len(text):
        char = text[index]
        if char in "\"'`":
            match = _STRING.match(text, index)
            if match is None:
                raise ValueError(f"unterminated string in: {text}")
            index = match.end()
            continue
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            arguments.append(text[start:index].strip())
            start = index + 1
        index += 1
    arguments.append(text[start:].strip())
    return arguments


def _template_query(expr: str) -> str:
    """A template variable's query as the PromQL it stands for (other PromQL as it is)."""
    match = _TEMPLATE_FUNCTION.match(expr)
    if match is None:
        return expr
    function, arguments = match.group(1), _split_arguments(match.group(2))
    if function == "label_values" and len(arguments) == 2 and _LABEL_NAME.match(arguments[1]):
        return arguments[0]
    if function == "label_values" and len(arguments) == 1 and _LABEL_NAME.match(arguments[0]):
        return f'{{{arguments[0]}!=""}}'
    if function == "query_result" and len(arguments) == 1 and arguments[0]:
        return arguments[0]
    if function == "metrics" and len(arguments) == 1 and arguments[0]:
        return '{__name__=~"' + _string_escape(arguments[0], '"') + '"}'
    raise ValueError(f"cannot turn {function}() into a PromQL query: {expr}")


def concrete(expr: str, variables: Variables | None = None) -> str:
    """``expr`` with Grafana's variables filled in, as Prometheus's query API takes it."""
    variables = variables or {}
    expr = _template_query(expr)
    out, position = [], 0
    for match in _STRING.finditer(expr):
        code = expr[position : match.start()]
        out.append(_substitute(code, variables, regex=False, quote=None, expr=expr))
        literal = match.group(0)
        regex = _REGEX_OPERATOR.search(expr[: match.start()]) is not None
        quote = literal[0]
        out.append(quote + _substitute(literal[1:-1], variables, regex=regex, quote=quote, expr=expr) + quote)
        position = match.end()
    out.append(_substitute(expr[position:], variables, regex=False, quote=None, expr=expr))
    return "".join(out)

#!/usr/bin/env python3
"""Print every PromQL expression of the kanary Grafana dashboard, one per line.

Grafana variables are substituted so that each line is plain PromQL that a
Prometheus HTTP API (/api/v1/query) accepts:

  $model, ${model}, ${model:regex}, [[model]]  -> the --model regex (default ".*")
  $__rate_interval, $__interval, $__range       -> the --interval duration (default "1m")
  $datasource / other variables                 -> not expected in expressions: an error

Usage:
  scripts/dashboard_queries.py [--model REGEX] [--interval DUR] [--titles] [DASHBOARD.json]

  --titles   print "panel title<TAB>refId<TAB>expr" instead of the bare expression
  --check    also verify the dashboard's structure (every panel has a non-empty
             expr, the `model` template variable exists and is queried from
             label_values(detector_events_total, model)); exit 1 with a message if not

Only panel targets are printed (rows' nested panels included); template
variable queries and annotations are not PromQL panels and are skipped.
Standard library only, so it runs on any python3 >= 3.8.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys

DEFAULT_DASHBOARD = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "deploy", "grafana", "dashboards", "kanary.json"
)

# Panel types that carry no queries.
NON_QUERY_PANELS = {"row", "text", "news", "dashlist", "alertlist"}


def iter_panels(panels):
    """Yield every panel, descending into rows (collapsed rows keep theirs in `panels`)."""
    for panel in panels or []:
        yield panel
        if panel.get("type") == "row":
            yield from iter_panels(panel.get("panels"))


def load(path: str) -> dict:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def queries(dashboard: dict):
    """Yield (panel title, refId, raw expr) for every query target of every panel."""
    for panel in iter_panels(dashboard.get("panels")):
        if panel.get("type") in NON_QUERY_PANELS:
            continue
        for tgt in panel.get("targets") or []:
            if tgt.get("hide"):
                continue
            yield panel.get("title", ""), tgt.get("refId", ""), tgt.get("expr")


def substitute(expr: str, model: str, interval: str) -> str:
    out = expr
    for pattern in (r"\$\{model(?::[a-z]+)?\}", r"\[\[model\]\]", r"\$model\b"):
        out = re.sub(pattern, lambda _m: model, out)
    for name in ("__rate_interval", "__interval_ms", "__interval", "__range"):
        value = interval
        if name == "__interval_ms":
            value = str(duration_ms(interval))
        out = re.sub(r"\$\{" + name + r"\}|\$" + name + r"\b", lambda _m, v=value: v, out)
    # PromQL is whitespace-insensitive: one expression per output line.
    out = " ".join(out.split())
    leftover = re.search(r"\$\{?\w+|\[\[\w+\]\]", out)
    if leftover:
        raise ValueError(f"unsubstituted Grafana variable {leftover.group(0)!r} in: {out}")
    return out


def duration_ms(text: str) -> int:
    units = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
    match = re.fullmatch(r"(\d+)(ms|s|m|h|d)", text)
    if not match:
        raise ValueError(f"bad duration {text!r}")
    return int(match.group(1)) * units[match.group(2)]


def check(dashboard: dict) -> list[str]:
    """Structural checks; returns a list of problems (empty when fine)."""
    problems = []
    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    model = variables.get("model")
    if model is None:
        problems.append("template variable `model` is missing")
    else:
        query = model.get("query")
        if isinstance(query, dict):
            query = query.get("query", "")
        if "label_values(detector_events_total, model)" not in f"{query} {model.get('definition', '')}":
            problems.append("variable `model` must query label_values(detector_events_total, model)")
    seen_ids = set()
    count = 0
    for panel in iter_panels(dashboard.get("panels")):
        title = panel.get("title") or f"panel id {panel.get('id')}"
        if panel.get("id") in seen_ids:
            problems.append(f"{title}: duplicate panel id {panel.get('id')}")
        seen_ids.add(panel.get("id"))
        if panel.get("type") in NON_QUERY_PANELS:
            continue
        targets = panel.get("targets") or []
        if not targets:
            problems.append(f"{title}: no targets")
        for tgt in targets:
            expr = tgt.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                problems.append(f"{title}: target {tgt.get('refId', '?')} has an empty expr")
            else:
                count += 1
    if count == 0:
        problems.append("dashboard has no queries")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dashboard", nargs="?", default=DEFAULT_DASHBOARD)
    ap.add_argument("--model", default=".*", help='regex substituted for $model (default ".*")')
    ap.add_argument("--interval", default="1m", help="duration for $__rate_interval/$__interval (default 1m)")
    ap.add_argument("--titles", action="store_true", help="prefix each line with panel title and refId")
    ap.add_argument("--check", action="store_true", help="verify the dashboard structure too")
    args = ap.parse_args(argv)

    try:
        dashboard = load(args.dashboard)
    except (OSError, json.JSONDecodeError) as exc:
        print(f"dashboard_queries: cannot read {args.dashboard}: {exc}", file=sys.stderr)
        return 1

    if args.check:
        problems = check(dashboard)
        if problems:
            for problem in problems:
                print(f"dashboard_queries: {problem}", file=sys.stderr)
            return 1

    try:
        duration_ms(args.interval)
        for title, ref, expr in queries(dashboard):
            if not isinstance(expr, str) or not expr.strip():
                print(f"dashboard_queries: {title} / {ref}: empty expr", file=sys.stderr)
                return 1
            line = substitute(expr, args.model, args.interval)
            print(f"{title}\t{ref}\t{line}" if args.titles else line)
    except ValueError as exc:
        print(f"dashboard_queries: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    if hasattr(signal, "SIGPIPE"):  # `... | head` should not print a traceback
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())

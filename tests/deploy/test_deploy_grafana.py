"""deploy/grafana: the dashboard's PromQL uses real metrics, it shows what
operators need, and provisioning points at the files that exist."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is needed: pip install 'quakescan[test]'")

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "quakescan.json"


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels() -> list[dict]:
    out = []
    for panel in _dashboard()["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows keep their panels inside
    return out


def _queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and query variable."""
    queries = []
    for panel in _panels():
        for target in panel.get("targets", []):
            queries.append((f"panel {panel['title']!r}", target["expr"]))
    for var in _dashboard()["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            queries.append((f"variable {var['name']!r}", query))
    return queries


def test_dashboard_queries_use_only_real_metrics(check_promql):
    problems = []
    for where, expr in _queries():
        problems += [f"{where}: {p}" for p in check_promql(expr)]
    assert problems == []


def test_dashboard_shows_what_operators_need():
    exprs = "\n".join(expr for _, expr in _queries())
    needed = {
        "per-station data flow": "quakescan_feed_samples_total",
        "last sample age": "time() - max by (station) (quakescan_last_sample_timestamp_seconds",
        "detections by label": "sum by (label) (increase(quakescan_detections_total",
        "latency p50": "histogram_quantile(0.5, sum by (le) (rate(quakescan_end_to_end_latency",
        "latency p90": "histogram_quantile(0.9, sum by (le) (rate(quakescan_end_to_end_latency",
        "latency p99": "histogram_quantile(0.99, sum by (le) (rate(quakescan_end_to_end_latency",
        "chunk latency p99": "histogram_quantile(0.99, sum by (le) (rate(quakescan_chunk_latency",
        "throughput": "rate(quakescan_windows_total",
        "queue depth": "quakescan_queue_depth",
        "failures": "quakescan_task_failures_total",
        "dead-letter": "quakescan_deadletter_total",
        "execution provider": "provider) (quakescan_model_info)",
        "feed lag": "quakescan_feed_lag_seconds",
        "spool": "quakescan_chunks_spooled",
    }
    missing = [what for what, fragment in needed.items() if fragment not in exprs]
    assert missing == []


def test_every_panel_is_well_formed():
    ids = [p["id"] for p in _panels()]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for panel in _panels():
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["w"] > 0 and grid["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel.get("description"), panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]


def test_panels_do_not_overlap():
    cells: dict[tuple[int, int], str] = {}
    for panel in _panels():
        g = panel["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_station_variable_filters_station_panels():
    variables = {v["name"]: v for v in _dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    station = variables["station"]
    assert station["multi"] and station["includeAll"] and station["allValue"] == ".*"
    filtered = [e for _, e in _queries() if 'station=~"$station"' in e]
    assert len(filtered) >= 5


def test_provisioning_matches_the_dashboard():
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    assert source["url"] == "http://prometheus:9090"  # the compose service
    providers = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "quakescan.yml").read_text()
    )["providers"]
    assert providers[0]["type"] == "file"
    assert _dashboard()["uid"] == "quakescan-overview"

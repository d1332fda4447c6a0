"""Shared fixtures for the deploy/ checks: paths, YAML loading, and the metric
names that serving/metrics.py really defines (for PromQL in alerts and panels)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"

# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"job", "instance"}


@dataclass(frozen=True)
class Family:
    """One metric of serving/metrics.py: its name, type and label names."""

    name: str
    type: str
    labels: frozenset[str]

    def sample_names(self) -> dict[str, frozenset[str]]:
        """Series names this metric exposes, each with the labels it carries."""
        if self.type == "counter":
            return {f"{self.name}_total": self.labels, f"{self.name}_created": self.labels}
        if self.type == "histogram":
            return {
                f"{self.name}_bucket": self.labels | {"le"},
                f"{self.name}_sum": self.labels,
                f"{self.name}_count": self.labels,
                f"{self.name}_created": self.labels,
            }
        return {self.name: self.labels}


def load_metric_series() -> dict[str, frozenset[str]]:
    """{series name: label names} for every metric of a fresh ``Metrics``."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics import MetricWrapperBase

    saved = os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    try:
        from quakescan.serving.metrics import Metrics

        metrics = Metrics(registry=CollectorRegistry())
    finally:
        if saved is not None:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = saved
    series: dict[str, frozenset[str]] = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            fam = Family(value._name, value._type, frozenset(value._labelnames))
            series.update(fam.sample_names())
    return series


@pytest.fixture(scope="session")
def metric_series() -> dict[str, frozenset[str]]:
    series = load_metric_series()
    assert len(series) > 20, "serving/metrics.py defines suspiciously few metrics"
    return series


_NAME = re.compile(r"\bquakescan_[A-Za-z0-9_]+")
_SELECTOR = re.compile(r"\b(quakescan_[A-Za-z0-9_]+)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def promql_problems(expr: str, series: dict[str, frozenset[str]]) -> list[str]:
    """What in a PromQL expression does not exist in serving/metrics.py.

    Checks metric names, the labels in their selectors, and the labels of
    ``by (...)`` / ``without (...)`` clauses against the metrics the expression
    uses (plus job and instance, which Prometheus adds).
    """
    problems = []
    names = set(_NAME.findall(expr))
    for name in sorted(names - set(series)):
        problems.append(f"unknown metric {name}")
    known = {n for n in names if n in series}
    for name, body in _SELECTOR.findall(expr):
        if name not in series:
            continue
        for label in _MATCHER.findall(body):
            if label not in series[name] | TARGET_LABELS:
                problems.append(f"{name} has no label {label!r} (has {sorted(series[name])})")
    available = set(TARGET_LABELS)
    for name in known:
        available |= series[name]
    if known:
        for group in _GROUPING.findall(expr):
            for label in (x.strip() for x in group.split(",")):
                if label and label not in available:
                    problems.append(f"grouping label {label!r} is on none of {sorted(known)}")
    return problems


@pytest.fixture(scope="session")
def check_promql(metric_series):
    """``check_promql(expr)``: the list of problems :func:`promql_problems` finds."""
    return lambda expr: promql_problems(expr, metric_series)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def deploy_dir() -> Path:
    return DEPLOY

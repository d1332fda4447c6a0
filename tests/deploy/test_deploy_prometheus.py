"""deploy/prometheus: promtool checks and unit tests, metric names, runbooks."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is needed: pip install 'quakescan[test]'")

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
OPERATIONS = ROOT / "docs" / "operations.md"
JOBS = {"quakescan-worker", "quakescan-feed", "quakescan-sink"}


def _rules() -> list[dict]:
    doc = yaml.safe_load((PROM / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _promtool() -> str:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip(
            "promtool not found: `apt-get install -y prometheus` provides it "
            "(Prometheus config, rule and rule-unit-test checks skipped)"
        )
    return tool


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=PROM, capture_output=True, text=True, timeout=60)


def test_promtool_check_config():
    proc = _run([_promtool(), "check", "config", "prometheus.yml"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 rule files found" in proc.stdout + proc.stderr


def test_promtool_check_rules():
    proc = _run([_promtool(), "check", "rules", "alerts.yml"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(_rules())} rules found" in proc.stdout + proc.stderr


def test_promtool_rule_unit_tests_pass():
    proc = _run([_promtool(), "test", "rules", "alerts_test.yml"])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_unit_tests_can_fail(tmp_path):
    """The unit tests are sensitive: raise one threshold and they fail."""
    tool = _promtool()
    rules = (PROM / "alerts.yml").read_text()
    assert "> 5 * 60" in rules
    (tmp_path / "alerts.yml").write_text(rules.replace("> 5 * 60", "> 10 * 60"))
    shutil.copy(PROM / "alerts_test.yml", tmp_path / "alerts_test.yml")
    proc = subprocess.run(
        [tool, "test", "rules", "alerts_test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "QuakescanStationSilent" in proc.stdout + proc.stderr


def test_every_alert_has_firing_and_silent_unit_tests():
    tests = yaml.safe_load((PROM / "alerts_test.yml").read_text())
    firing, silent = set(), set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {rule["alert"] for rule in _rules()}
    assert names - firing == set(), "alerts never tested firing"
    assert names - silent == set(), "alerts never tested staying silent"
    assert (firing | silent) - names == set(), "tests of alerts that do not exist"


def test_required_alerts_exist():
    names = {rule["alert"] for rule in _rules()}
    for required in (
        "QuakescanStationSilent",
        "QuakescanFeedLagHigh",
        "QuakescanDetectionLatencyHigh",
        "QuakescanChunkLatencyHigh",
        "QuakescanQueueBacklogGrowing",
        "QuakescanNoWorkerUp",
        "QuakescanTaskFailureRateHigh",
        "QuakescanDeadLetter",
    ):
        assert required in names


@pytest.mark.parametrize("rule", _rules(), ids=lambda r: r["alert"])
def test_alert_uses_only_real_metrics(rule, check_promql):
    assert check_promql(rule["expr"]) == []


@pytest.mark.parametrize("rule", _rules(), ids=lambda r: r["alert"])
def test_alert_has_severity_summary_and_runbook(rule):
    assert rule["labels"]["severity"] in ("critical", "warning", "info")
    assert rule["annotations"]["summary"]
    runbook = rule["annotations"]["runbook"]
    assert runbook == f"docs/operations.md#{rule['alert'].lower()}"


def test_every_runbook_anchor_is_a_heading_in_operations_md():
    text = OPERATIONS.read_text()
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", m.group(1).strip().lower()).replace(" ", "-")
        for m in re.finditer(r"^#{1,6}\s+(.+)$", text, flags=re.MULTILINE)
    }
    for rule in _rules():
        anchor = rule["annotations"]["runbook"].split("#", 1)[1]
        assert anchor in anchors, f"docs/operations.md has no heading for {rule['alert']}"


def test_alert_jobs_are_scraped():
    """Jobs named in alert expressions are the job names prometheus.yml scrapes."""
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    jobs = {sc["job_name"] for sc in config["scrape_configs"]}
    assert JOBS <= jobs
    for rule in _rules():
        for job in re.findall(r'job\s*=\s*"([^"]+)"', rule["expr"]):
            assert job in jobs, f"{rule['alert']} uses job {job!r}, not scraped"
        for pattern in re.findall(r'job\s*=~\s*"([^"]+)"', rule["expr"]):
            assert any(re.fullmatch(pattern, j) for j in JOBS), pattern


def test_scrape_targets_use_the_service_metrics_ports():
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    by_job = {sc["job_name"]: sc for sc in config["scrape_configs"]}
    worker = by_job["quakescan-worker"]["dns_sd_configs"][0]
    assert worker["port"] == 9101 and "worker" in worker["names"]
    assert by_job["quakescan-feed"]["static_configs"][0]["targets"] == ["feeder:9102"]
    assert by_job["quakescan-sink"]["static_configs"][0]["targets"] == ["sink:9103"]
    assert config["rule_files"] == ["alerts.yml"]


def test_metric_check_catches_mistakes(check_promql):
    """The name/label check itself: typos are found, real names pass."""
    assert check_promql("rate(quakescan_windows_total[5m])") == []
    assert check_promql("quakescan_windows[5m]") != []
    assert check_promql('quakescan_queue_depth{queues="detect"}') != []
    assert check_promql("sum by (stations) (quakescan_feed_lag_seconds)") != []
    assert check_promql("sum by (le) (rate(quakescan_chunk_latency_seconds_bucket[5m]))") == []
    assert check_promql("quakescan_chunk_latency_seconds_total") != []

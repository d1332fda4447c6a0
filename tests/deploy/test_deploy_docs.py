"""docs/operations.md and deploy/README.md point at files that exist, and the
guide covers what operators need."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "operations.md"


def _mentioned_paths(text: str) -> set[str]:
    paths = set(re.findall(r"\b(deploy/[A-Za-z0-9_./@*<>-]*[A-Za-z0-9_@*>-])", text))
    return {p for p in paths if "*" not in p and "<" not in p}


# Files the guide tells the operator to create.
OPERATOR_FILES = {"deploy/.env"}


def test_paths_in_the_guide_exist():
    paths = _mentioned_paths(GUIDE.read_text())
    assert len(paths) > 15
    missing = sorted(p for p in paths - OPERATOR_FILES if not (ROOT / p).exists())
    assert missing == []


def test_deploy_readme_lists_existing_paths():
    text = (ROOT / "deploy" / "README.md").read_text()
    for cell in re.findall(r"^\| `([^`]+)`", text, flags=re.MULTILINE):
        pattern = cell.replace("*", "")
        matches = list((ROOT / "deploy").glob(cell)) if "*" in cell else []
        assert matches or (ROOT / "deploy" / pattern).exists(), cell


def test_guide_covers_the_operator_topics():
    headings = re.findall(r"^#{2,3} (.+)$", GUIDE.read_text(), flags=re.MULTILINE)
    for topic in (
        "Running on one host (Docker Compose)",
        "Hosts without containers (systemd)",
        "Kubernetes",
        "Scaling out",
        "Sizing",
        "Choosing CPU or GPU workers",
        "Securing Redis",
        "Upgrading a model without losing chunks",
        "Reading the dashboard",
        "Alerts",
    ):
        assert topic in headings, topic

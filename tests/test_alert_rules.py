"""The shipped alert rules, tested with ``promtool test rules`` on series named as exported."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from .test_observability import exported, metric_names_in  # noqa: F401 - the fixture

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "flask_apikeys" / "observability" / "alerts.yml"
RULE_TESTS = ROOT / "tests" / "promtool" / "alerts_test.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is missing: apt-get install -y prometheus (.ci/run installs it)",
)


def promtool_test(rule_tests: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PROMTOOL), "test", "rules", str(rule_tests)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


@needs_promtool
def test_the_alert_rules_pass_their_promtool_tests() -> None:
    completed = promtool_test(RULE_TESTS)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "SUCCESS" in completed.stdout


@needs_promtool
@pytest.mark.slow  # promtool in a child process per threshold: seconds
@pytest.mark.parametrize(
    ("threshold", "changed"),
    [
        ("}[5m])) > 1\n", "}[5m])) > 3\n"),  # invalid keys
        ("> 0.9", "> 1.5"),  # near quota
        ("[1d])) > 100", "[1d])) > 1000"),  # cost
    ],
)
def test_the_promtool_tests_fail_when_a_threshold_changes(
    tmp_path: Path, threshold: str, changed: str
) -> None:
    """The rule tests bite: the same tests against rules with one threshold moved fail."""
    text = RULES.read_text()
    assert threshold in text
    (tmp_path / "alerts.yml").write_text(text.replace(threshold, changed, 1))
    tests = RULE_TESTS.read_text().replace(
        "../../flask_apikeys/observability/alerts.yml", "alerts.yml"
    )
    (tmp_path / "alerts_test.yml").write_text(tests)
    completed = promtool_test(tmp_path / "alerts_test.yml")
    assert completed.returncode != 0, completed.stdout


def test_rules_and_their_test_series_use_only_exported_names_and_labels(
    exported: dict[str, set[frozenset[str]]],  # noqa: F811 - the fixture
) -> None:
    rules = yaml.safe_load(RULES.read_text())
    expressions = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    assert len(expressions) == 5
    used = set().union(*map(metric_names_in, expressions))
    assert used <= exported.keys(), used - exported.keys()
    rule_tests = yaml.safe_load(RULE_TESTS.read_text())
    for case in rule_tests["tests"]:
        for series in case["input_series"]:
            found = re.fullmatch(r"(\w+)(?:\{(.*)\})?", series["series"])
            assert found is not None
            name, labels = found.group(1), found.group(2) or ""
            label_names = frozenset(re.findall(r"(\w+)=", labels))
            assert label_names in exported[name], (name, label_names, exported[name])

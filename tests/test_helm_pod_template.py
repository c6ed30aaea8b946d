"""A chart upgrade restarts the operator only when it changes what the operator runs.

The Deployment's pod template is what Kubernetes compares to decide on a rollout: it carries the selector labels,
the user's podLabels/podAnnotations, and the pod's spec (image, args, env). The chart's version, its appVersion
label and commonLabels stay on the objects' metadata, never in the template.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

import poolbudget
from tests.chart import find, objects
from tests.helm import CHART, Helm, helm_fixture  # noqa: F401

CHART_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]
NEXT = "99.0.0"  # a later release of the chart (and, where said, of the operator)


def _chart_with(tmp_path: Path, **chart_yaml: str) -> Path:
    """A copy of the chart with fields of its Chart.yaml replaced (as a later chart release would have them)."""
    copy = tmp_path / "poolbudget"
    shutil.copytree(CHART, copy)
    meta = yaml.safe_load((copy / "Chart.yaml").read_text())
    meta.update(chart_yaml)
    (copy / "Chart.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    return copy


def _deployment(helm: Helm, *args: str, chart: Path = CHART) -> dict[str, Any]:
    return find(objects(helm.template(*args, chart=chart)), "Deployment")


def _template(helm: Helm, *args: str, chart: Path = CHART) -> dict[str, Any]:
    template: dict[str, Any] = _deployment(helm, *args, chart=chart)["spec"]["template"]
    return template


def test_pod_labels_are_the_selector_and_the_users_only(helm: Helm) -> None:
    deployment = _deployment(helm, "--set", "podLabels.team=platform", "--set", "commonLabels.cost=db")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels == {**deployment["spec"]["selector"]["matchLabels"], "team": "platform"}
    # The Deployment object itself still has every standard label (and commonLabels).
    assert deployment["metadata"]["labels"]["helm.sh/chart"] == f"poolbudget-{CHART_VERSION}"
    assert deployment["metadata"]["labels"]["cost"] == "db"


@pytest.mark.parametrize("args", [[], ["--set", "replicaCount=3"]], ids=["standalone", "peers"])
def test_a_chart_version_bump_leaves_the_pod_template_alone(
    helm: Helm, tmp_path: Path, args: list[str]
) -> None:
    bumped = _chart_with(tmp_path, version=NEXT, description="The same operator, a newer chart.")
    before, after = _deployment(helm, *args), _deployment(helm, *args, chart=bumped)
    assert before["metadata"]["labels"]["helm.sh/chart"] == f"poolbudget-{CHART_VERSION}"
    assert after["metadata"]["labels"]["helm.sh/chart"] == f"poolbudget-{NEXT}"
    assert after["spec"] == before["spec"]


def test_common_labels_change_no_pod(helm: Helm) -> None:
    assert _template(helm, "--set-string", "commonLabels.cost-center=42") == _template(helm)


def test_an_app_version_bump_with_a_pinned_image_restarts_nothing(helm: Helm, tmp_path: Path) -> None:
    pinned = ["--set", f"image.tag={poolbudget.__version__}"]
    bumped = _chart_with(tmp_path, version=NEXT, appVersion=NEXT)
    before, after = _deployment(helm, *pinned), _deployment(helm, *pinned, chart=bumped)
    assert after["metadata"]["labels"]["app.kubernetes.io/version"] == NEXT
    assert after["spec"]["template"] == before["spec"]["template"]


def test_an_app_version_bump_changes_only_the_image(helm: Helm, tmp_path: Path) -> None:
    bumped = _chart_with(tmp_path, version=NEXT, appVersion=NEXT)
    before, after = _template(helm), _template(helm, chart=bumped)
    (old,), (new,) = before["spec"]["containers"], after["spec"]["containers"]
    assert old["image"].endswith(f":{poolbudget.__version__}")
    assert new["image"].endswith(f":{NEXT}")
    new["image"] = old["image"]
    assert after == before


@pytest.mark.parametrize(
    "change",
    [
        ["--set", "image.tag=9.9.9"],
        ["--set", "operator.metricsPort=9191"],
        ["--set", "operator.extraArgs={--verbose}"],
        ["--set", "podAnnotations.restarted-at=now"],
        ["--set", "resources.limits.memory=512Mi"],
        ["--set", "watch.clusterWide=false", "--set", "watch.namespaces={apps}"],
    ],
    ids=["image", "metrics-port", "args", "pod-annotation", "resources", "watch-scope"],
)
def test_what_the_operator_runs_does_change_the_pod(helm: Helm, change: list[str]) -> None:
    assert _template(helm, *change) != _template(helm)

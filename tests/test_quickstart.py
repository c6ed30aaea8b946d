"""The quick start, followed as a new user would, on the real control plane (``kube``).

Every `$ ` command of docs/quickstart.md runs in order with the real helm and kubectl and must print what the
page shows; the real Deployment controller rolls the app out. One stand-in: kwok runs no containers, so the
kubelet's part, starting the chart's operator pod, is done here by running the operator with that pod's
ServiceAccount, namespace and arguments (``tests/kube/release.py``).
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.docblocks import code_blocks, console_steps, output_matches
from tests.helm import REPO, Helm, helm_fixture  # noqa: F401
from tests.kube.fixtures import KubeCluster, wait_for
from tests.kube.release import Release

pytestmark = [pytest.mark.kube, pytest.mark.timeout(180)]

QUICKSTART = REPO / "docs" / "quickstart.md"
# Commands that only read: retried until they print what the page shows (a user waits and looks again).
READ_ONLY = re.compile(r"^kubectl (.* )?(get|rollout status|describe)\b")
WAIT = 60.0


def _ages(text: str) -> str:
    """`kubectl get`'s AGE column, which no page can know."""
    return re.sub(r"\b\d+(ms|s|m|h|d)(\d+s)?$", "<age>", text, flags=re.MULTILINE)


class NewUser:
    """Runs the page's commands against the cluster; after `helm install`, the chart's operator pod runs."""

    def __init__(self, kube: KubeCluster, helm: Helm, workdir: Path) -> None:
        self.kube, self.helm, self.workdir = kube, helm, workdir
        self.running = ExitStack()
        self.operator_log = ""
        self.release: Release | None = None

    def run(self, command: str) -> str:
        words = shlex.split(command)
        if words[:2] == ["helm", "install"]:
            release, chart, *flags = words[2:]
            namespace = flags[flags.index("--namespace") + 1]
            self._adopt_crds(release, namespace)
            self.helm.run(
                "install", release, str(REPO / chart), *flags, "--kubeconfig", str(self.kube.kubeconfig)
            )
            self.release = Release(self.helm, self.kube, namespace)
            operator = self.running.enter_context(self.release.operator(self.workdir))
            self.operator_log = str(operator.log_path)
            return ""
        assert words[0] == "kubectl", f"the quick start runs {words[0]}: teach this test"
        result = self.kube.kubectl(*words[1:], check=False)
        assert result.returncode == 0 or READ_ONLY.match(command), f"$ {command}\n{result.stderr}"
        return str(result.stdout)

    def _adopt_crds(self, release: str, namespace: str) -> None:
        """The session installed the CRDs from crds/ before; mark them the release's, as helm would have made them
        (what a user who applied crds/ first does before `helm install`)."""
        for crd in ("poolbudgets.poolbudget.io", "clusterkopfpeerings.kopf.dev"):
            self.kube.kubectl("label", "--overwrite", "crd", crd, "app.kubernetes.io/managed-by=Helm")
            self.kube.kubectl("annotate", "--overwrite", "crd", crd, f"meta.helm.sh/release-name={release}",
                              f"meta.helm.sh/release-namespace={namespace}")  # fmt: skip

    def log(self) -> str:
        return Path(self.operator_log).read_text()[-3000:] if self.operator_log else "(no operator yet)"


@pytest.fixture
def user(kube: KubeCluster, helm: Helm, tmp_path: Path) -> Iterator[NewUser]:
    new_user = NewUser(kube, helm, tmp_path)
    try:
        yield new_user
    finally:
        new_user.running.close()
        for args in (["delete", "-f", str(REPO / "docs/examples/quickstart/web.yaml"), "--ignore-not-found"],
                     ["delete", "-f", str(REPO / "docs/examples/quickstart/budget.yaml"), "--ignore-not-found", "--wait=false"]):  # fmt: skip
            kube.kubectl(*args, check=False)
        helm.run(
            "uninstall",
            "poolbudget",
            "-n",
            "poolbudget-system",
            "--kubeconfig",
            str(kube.kubeconfig),
            check=False,
        )


def test_quick_start_gives_the_documented_result(user: NewUser, kube: KubeCluster) -> None:
    steps = [
        step
        for block in code_blocks(QUICKSTART)
        if block.language == "console"
        for step in console_steps(block)
        if not step[0].startswith(("poolbudget ", "echo "))  # the offline preview: tests/test_docs.py runs it
    ]
    assert [c for c, _ in steps][:2] == [
        "helm install poolbudget helm/poolbudget --namespace poolbudget-system --create-namespace",
        "kubectl -n poolbudget-system rollout status deployment/poolbudget",
    ]
    assert kube.get("deployment", "web", "default") is None  # nothing there before the user starts
    for command, shown in steps:
        deadline = time.monotonic() + (WAIT if READ_ONLY.match(command) else 0)
        while True:
            printed = user.run(command)
            if output_matches(_ages(shown), _ages(printed)):
                break
            assert time.monotonic() < deadline, (
                f"$ {command}\n--- the page shows\n{shown}\n--- it printed\n{printed}\n--- operator log\n{user.log()}"
            )
            time.sleep(0.3)

    # Step 5 promised the app's env back exactly as it was.
    def env() -> list[dict[str, str]]:
        return list(
            (kube.get("deployment", "web", "default") or {})["spec"]["template"]["spec"]["containers"][0][
                "env"
            ]
        )

    wait_for(lambda: env() == [{"name": "WEB_CONCURRENCY", "value": "2"}, {"name": "DB_POOL_SIZE", "value": "20"},
                               {"name": "DB_MAX_OVERFLOW", "value": "30"}],
             timeout=WAIT, message=lambda: f"the app's own env back: {env()}")  # fmt: skip

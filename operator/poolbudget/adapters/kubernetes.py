"""Every Kubernetes API call poolbudget makes itself (kopf's own watches, finalizers and events aside).

Facts and patches only: this module knows nothing of plans or profiles. The synchronous ``kubernetes`` client runs
in a worker thread (``asyncio.to_thread``) so the event loop never blocks; responses are read as plain JSON.

The calls, for RBAC (the Helm chart grants exactly these, plus kopf's):

- ``patch`` ``apps/v1`` ``deployments`` (strategic merge: the pool env entries, poolbudget's annotations);
- ``patch`` ``poolbudget.io/v1alpha1`` ``poolbudgets/status`` (merge patch);
- ``get`` ``v1`` ``secrets`` (the database URL named by ``spec.database.connectionSecretRef``);
- ``get``, ``create`` ``kopf.dev/v1`` ``clusterkopfpeerings`` (the peering object, once at startup).

What kopf itself calls for ``runtime/handlers.py`` (the chart grants these too):

- ``list``, ``watch``: ``poolbudget.io`` ``poolbudgets``; ``apps`` ``deployments``; ``v1`` ``pods``,
  ``namespaces``; ``autoscaling`` ``horizontalpodautoscalers`` (v2); ``apiextensions.k8s.io``
  ``customresourcedefinitions`` (kopf's resource discovery);
- ``patch`` ``poolbudgets`` (its finalizer and its ``poolbudget.io/*`` progress annotations, on PoolBudgets only);
- ``create`` ``v1`` ``events``, in every watched namespace and in ``default`` (Events about PoolBudgets, which
  are cluster-scoped);
- ``list``, ``watch``, ``patch`` ``kopf.dev`` ``clusterkopfpeerings`` (peering, unless ``--standalone``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Mapping
from typing import Any

import kubernetes

from poolbudget.adapters.errors import Conflict, Forbidden, KubernetesError, NotFound, SecretError
from poolbudget.api.models import GROUP, PLURAL, VERSION

STRATEGIC_MERGE = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
PEERING_GROUP, PEERING_VERSION, PEERING_PLURAL = "kopf.dev", "v1", "clusterkopfpeerings"


def _error(exc: Exception, what: str) -> KubernetesError:
    status = int(getattr(exc, "status", 0) or 0)
    reason = str(getattr(exc, "reason", "") or type(exc).__name__)
    message = reason
    body = getattr(exc, "body", None)
    if body:
        try:
            message = json.loads(body).get("message", reason)
        except (ValueError, AttributeError):
            message = reason
    kind = {404: NotFound, 409: Conflict, 403: Forbidden}.get(status, KubernetesError)
    return kind(f"{what}: {message}", status)


def _json(response: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(response.data)
    return data


class Cluster:
    """The Kubernetes API as poolbudget uses it."""

    def __init__(self, api_client: Any, request_timeout: float = 30.0) -> None:
        self.api_client = api_client
        self.request_timeout = request_timeout
        self._apps = kubernetes.client.AppsV1Api(api_client)
        self._core = kubernetes.client.CoreV1Api(api_client)
        self._custom = kubernetes.client.CustomObjectsApi(api_client)

    @classmethod
    def from_environment(cls, user_agent: str, request_timeout: float = 30.0) -> Cluster:
        """In-cluster credentials when running in a pod, else the kubeconfig (``KUBECONFIG``), as kopf does."""
        configuration = kubernetes.client.Configuration()
        try:
            kubernetes.config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration
            )
        # Concurrent patches in a round share the pool; the default of 4 would serialise them.
        configuration.connection_pool_maxsize = 16
        api_client = kubernetes.client.ApiClient(configuration)
        api_client.user_agent = user_agent
        return cls(api_client, request_timeout)

    async def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        def call() -> dict[str, Any]:
            try:
                return _json(
                    fn(*args, _preload_content=False, _request_timeout=self.request_timeout, **kwargs)
                )
            except kubernetes.client.exceptions.ApiException as exc:
                raise _error(exc, what) from None
            except Exception as exc:  # urllib3 errors: no answer at all
                raise KubernetesError(f"{what}: {type(exc).__name__}: {exc}") from None

        return await asyncio.to_thread(call)

    async def patch_deployment(self, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        """Strategic-merge-patch a Deployment (lists merge by container and env name); the object after it."""
        return await self._call(
            f"patching Deployment {namespace}/{name}",
            self._apps.patch_namespaced_deployment,
            name,
            namespace,
            dict(patch),
            _content_type=STRATEGIC_MERGE,
        )

    async def patch_pod(self, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        """Merge-patch a pod (live delivery writes its allotment annotation); the object after it."""
        return await self._call(
            f"patching Pod {namespace}/{name}",
            self._core.patch_namespaced_pod,
            name,
            namespace,
            dict(patch),
            _content_type=MERGE,
        )

    async def patch_budget_status(self, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
        """Merge-patch a PoolBudget's status subresource; the object after it."""
        return await self._call(
            f"writing the status of PoolBudget {name}",
            self._custom.patch_cluster_custom_object_status,
            GROUP,
            VERSION,
            PLURAL,
            name,
            {"status": dict(status)},
            _content_type=MERGE,
        )

    async def read_secret_value(self, namespace: str, name: str, key: str) -> str:
        """One value of a Secret, decoded; SecretError (never with the value) when it cannot be had."""
        try:
            secret = await self._call(
                f"reading Secret {namespace}/{name}", self._core.read_namespaced_secret, name, namespace
            )
        except NotFound:
            raise SecretError(f"Secret {namespace}/{name} not found", 404) from None
        except KubernetesError as exc:
            raise SecretError(str(exc), exc.status) from None
        data = secret.get("data") or {}
        if key in data:
            try:
                return base64.b64decode(data[key]).decode("utf-8").strip()
            except (ValueError, UnicodeDecodeError):
                raise SecretError(
                    f"Secret {namespace}/{name}: key {key!r} is not valid base64 UTF-8"
                ) from None
        string_data = secret.get("stringData") or {}
        if key in string_data:
            return str(string_data[key]).strip()
        raise SecretError(f"Secret {namespace}/{name} has no key {key!r} (keys: {', '.join(sorted(data))})")

    async def ensure_peering(self, name: str) -> bool:
        """Create the cluster-wide kopf peering object if it is missing; False when it cannot be (no CRD, RBAC)."""
        try:
            await self._call(
                f"reading ClusterKopfPeering {name}",
                self._custom.get_cluster_custom_object,
                PEERING_GROUP,
                PEERING_VERSION,
                PEERING_PLURAL,
                name,
            )
            return True
        except NotFound:
            pass
        except KubernetesError:
            return False
        body = {
            "apiVersion": f"{PEERING_GROUP}/{PEERING_VERSION}",
            "kind": "ClusterKopfPeering",
            "metadata": {"name": name},
        }
        try:
            await self._call(
                f"creating ClusterKopfPeering {name}",
                self._custom.create_cluster_custom_object,
                PEERING_GROUP,
                PEERING_VERSION,
                PEERING_PLURAL,
                body,
            )
        except Conflict:
            return True  # another replica created it meanwhile
        except KubernetesError:
            return False
        return True

    def close(self) -> None:
        self.api_client.close()

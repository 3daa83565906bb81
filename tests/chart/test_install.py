"""Install the chart on the real Docker-less local cluster with the real Helm
engine (helm-python-sdk), and prove that its RBAC is enough and not more:
the controller, running as its own ServiceAccount, evicts an annotated pod
over its limit, and that ServiceAccount is refused what it must not do.

Needs `hack/local-cluster.sh up` and `hack/local-cluster.sh images`
(images docker.io/library/memwatch:dev and memwatch-hog:dev in the node's
containerd); skips loudly otherwise. MEMWATCH_TEST_KEEP=1 (`make e2e-local KEEP=1`) leaves the
release installed.
"""

from __future__ import annotations

import base64
import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import helm_python
import kubernetes
import pytest
from kubernetes.client.rest import ApiException

from integration.clusterkit import LOCAL_KUBECONFIG

from .chartlib import CHART_DIR

pytestmark = pytest.mark.cluster

KUBECONFIG = Path(os.environ.get("KUBECONFIG") or LOCAL_KUBECONFIG)
IMAGE = "docker.io/library/memwatch:dev"
HOG_IMAGE = "docker.io/library/memwatch-hog:dev"
RELEASE = "mwchart"
FULLNAME = f"{RELEASE}-memwatch"
NAMESPACE = "memwatch-chart-test"
WORKLOAD_NAMESPACE = "memwatch-chart-workload"
SERVICE_ACCOUNT = f"system:serviceaccount:{NAMESPACE}:{FULLNAME}"
# Other suites and benchmarks share the cluster: this release watches every
# namespace (the default, cluster-wide RBAC) but streams only pods with this
# label, so it never acts on theirs.
TEST_LABEL = ("memwatch-chart-test", "true")
VALUES: dict[str, Any] = {
    "image": {"tag": "dev", "pullPolicy": "Never"},
    "interval": "2s",
    "labelSelector": "=".join(TEST_LABEL),
    "verbose": True,
}

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 120, every: float = 1.0) -> T:
    """Poll probe() until it returns something truthy; fail with `what` after timeout."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = probe()
        except ApiException as error:
            last_error, result = error, None
        if result:
            return result
        time.sleep(every)
    pytest.fail(
        f"timed out after {timeout:.0f}s waiting for {what}" + (f" (last error: {last_error})" if last_error else "")
    )


@dataclass
class Cluster:
    api: Any
    core: Any
    authz: Any
    rbac: Any
    helm: helm_python.Config

    def controller_pod(self) -> Any:
        pods = self.core.list_namespaced_pod(
            NAMESPACE, label_selector=f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=controller"
        ).items
        assert len(pods) == 1, [p.metadata.name for p in pods]
        return pods[0]


def _skip_unless_cluster() -> Any:
    if not KUBECONFIG.exists():
        pytest.skip(
            f"SKIPPED LOUDLY: no local cluster ({KUBECONFIG} is missing). "
            "Run `hack/local-cluster.sh up && hack/local-cluster.sh images` (or `make cluster-up`)."
        )
    api = kubernetes.config.new_client_from_config(config_file=str(KUBECONFIG))
    # The kubelet lists a freshly imported image in its node status only at its next status
    # update (up to a minute): wait for it rather than skip a cluster that is about to be ready.
    deadline = time.monotonic() + 120
    while True:
        try:
            nodes = kubernetes.client.CoreV1Api(api).list_node(_request_timeout=10).items
        except Exception as error:
            pytest.skip(f"SKIPPED LOUDLY: the local cluster does not answer ({KUBECONFIG}): {error}")
        images = {name for node in nodes for image in node.status.images or [] for name in image.names or []}
        missing = [image for image in (IMAGE, HOG_IMAGE) if image not in images]
        if not missing:
            return api
        if time.monotonic() > deadline:
            pytest.skip(f"SKIPPED LOUDLY: the cluster's node lacks {missing}: run `hack/local-cluster.sh images`")
        time.sleep(2)


def _delete_namespace(core: Any, name: str) -> None:
    try:
        core.delete_namespace(name)
    except ApiException as error:
        if error.status != 404:
            raise

    def gone() -> bool:
        try:
            core.read_namespace(name)
        except ApiException as error:
            return error.status == 404
        return False

    wait_for(f"namespace {name} to go", gone, timeout=180)


@contextlib.contextmanager
def installed(release: str, values: dict[str, Any], namespace: str, workload_namespace: str
              ) -> Iterator[tuple[Any, Any, Any]]:
    """The chart installed as ``release`` in ``namespace`` with the real Helm engine (leftovers of an
    interrupted run removed first), and an empty ``workload_namespace`` whose pods can be created;
    both removed afterwards unless MEMWATCH_TEST_KEEP=1. Yields (api client, CoreV1Api, helm)."""
    api = _skip_unless_cluster()
    core = kubernetes.client.CoreV1Api(api)
    helm = helm_python.Config(kubeconfig_path=str(KUBECONFIG), namespace=namespace)
    helm.uninstall(release, ignore_not_found=True, wait="watcher", timeout=120)
    for name in (namespace, workload_namespace):
        _delete_namespace(core, name)
    helm.install(CHART_DIR, release, values, namespace=namespace, create_namespace=True, wait="watcher",
                 timeout=240)
    core.create_namespace({"metadata": {"name": workload_namespace}})
    # Pods cannot be created until the namespace's default ServiceAccount has its token (1.20).
    wait_for("the workload namespace's default ServiceAccount token",
             lambda: core.read_namespaced_service_account("default", workload_namespace).secrets, timeout=60)
    yield api, core, helm
    if os.environ.get("MEMWATCH_TEST_KEEP") == "1":
        return
    helm.uninstall(release, ignore_not_found=True, wait="watcher", timeout=120)
    for name in (workload_namespace, namespace):
        _delete_namespace(core, name)
    helm.close()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with installed(RELEASE, VALUES, NAMESPACE, WORKLOAD_NAMESPACE) as (api, core, helm):
        yield Cluster(
            api=api,
            core=core,
            authz=kubernetes.client.AuthorizationV1Api(api),
            rbac=kubernetes.client.RbacAuthorizationV1Api(api),
            helm=helm,
        )


def test_release_is_deployed(cluster: Cluster) -> None:
    status = cluster.helm.status(RELEASE)
    assert status["status"] == "deployed", {k: v for k, v in status.items() if k != "manifest"}


def test_controller_runs_as_its_own_service_account_and_is_live(cluster: Cluster) -> None:
    pod = wait_for("the controller pod to run", lambda: (p := cluster.controller_pod()).status.phase == "Running" and p)
    assert pod.spec.service_account_name == FULLNAME
    assert pod.spec.security_context.run_as_non_root is True
    (status,) = pod.status.container_statuses
    assert status.state.running is not None

    def healthz() -> str | None:
        answer: str = cluster.core.connect_get_namespaced_pod_proxy_with_path(
            f"{pod.metadata.name}:8080", NAMESPACE, "healthz"
        )
        return answer if answer is not None else None

    # kopf's liveness endpoint answers (what the kubelet's probe asks).
    wait_for("kopf's /healthz to answer through the pod proxy", lambda: healthz() is not None, timeout=60)


def test_evicts_an_annotated_pod_over_its_limit(cluster: Cluster) -> None:
    name = f"hog-{uuid.uuid4().hex[:6]}"
    cluster.core.create_namespaced_pod(
        WORKLOAD_NAMESPACE,
        {
            "metadata": {
                "name": name,
                "labels": dict([TEST_LABEL]),
                "annotations": {"memwatch.io/limit": "100Mi"},
            },
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [
                    {
                        "name": "hog",
                        "image": HOG_IMAGE,
                        "imagePullPolicy": "Never",
                        # Grows to 150Mi and holds: over memwatch's limit, under the kernel's.
                        "command": ["/hog", "--rate", "50", "--max", "150", "--hold"],
                        "resources": {"requests": {"memory": "64Mi"}, "limits": {"memory": "256Mi"}},
                    }
                ],
            },
        },
    )

    def evicted_event() -> Any:
        events = cluster.core.list_namespaced_event(
            WORKLOAD_NAMESPACE, field_selector=f"involvedObject.name={name},reason=MemwatchEvicted"
        ).items
        return events[0] if events else None

    event = wait_for(f"a MemwatchEvicted Event on {WORKLOAD_NAMESPACE}/{name}", evicted_event, timeout=180, every=2)
    assert event.type in ("Normal", "Warning")

    def pod_gone() -> bool:
        try:
            pod = cluster.core.read_namespaced_pod(name, WORKLOAD_NAMESPACE)
        except ApiException as error:
            return error.status == 404
        return pod.status.phase == "Failed" and pod.status.reason == "Evicted"

    wait_for(f"{name} to be evicted", pod_gone, timeout=60)
    logs = cluster.core.read_namespaced_pod_log(cluster.controller_pod().metadata.name, NAMESPACE)
    assert f"action=evicted pod={WORKLOAD_NAMESPACE}/{name}" in logs, logs[-3000:]
    # Still the same container: the liveness probe never failed meanwhile.
    assert cluster.controller_pod().status.container_statuses[0].restart_count == 0


def can(cluster: Cluster, verb: str, resource: str, namespace: str | None = None, **attributes: str) -> bool:
    """What RBAC lets the controller's ServiceAccount do (a SubjectAccessReview, as `kubectl auth can-i --as`)."""
    group = attributes.pop("group", "")
    subresource = attributes.pop("subresource", None)
    review = cluster.authz.create_subject_access_review(
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": SERVICE_ACCOUNT,
                "groups": ["system:serviceaccounts", f"system:serviceaccounts:{NAMESPACE}", "system:authenticated"],
                "resourceAttributes": {
                    "verb": verb,
                    "resource": resource,
                    "group": group,
                    **({"namespace": namespace} if namespace else {}),
                    **({"subresource": subresource} if subresource else {}),
                    **attributes,
                },
            },
        }
    )
    return bool(review.status.allowed)


ALLOWED = [
    ("list", "pods", None, {}),
    ("watch", "pods", WORKLOAD_NAMESPACE, {}),
    ("create", "pods", WORKLOAD_NAMESPACE, {"subresource": "eviction"}),
    ("create", "events", WORKLOAD_NAMESPACE, {}),
    ("patch", "events", WORKLOAD_NAMESPACE, {}),
    ("list", "events", None, {}),
    ("list", "pods", WORKLOAD_NAMESPACE, {"group": "metrics.k8s.io"}),
    ("get", "nodes", None, {"subresource": "stats"}),  # the kubelet source: its Summary API only
    ("get", "nodes", None, {}),  # each node's address and kubelet port
    ("create", "leases", NAMESPACE, {"group": "coordination.k8s.io"}),
    ("update", "leases", NAMESPACE, {"group": "coordination.k8s.io", "name": FULLNAME}),
    # The policies: read them, patch their status (charts/memwatch/crds/).
    ("list", "memwatchpolicies", WORKLOAD_NAMESPACE, {"group": "memwatch.io"}),
    ("watch", "memwatchpolicies", None, {"group": "memwatch.io"}),
    ("watch", "clustermemwatchpolicies", None, {"group": "memwatch.io"}),
    ("patch", "memwatchpolicies", WORKLOAD_NAMESPACE, {"group": "memwatch.io", "subresource": "status"}),
    ("patch", "clustermemwatchpolicies", None, {"group": "memwatch.io", "subresource": "status"}),
    ("watch", "namespaces", None, {}),  # a ClusterMemwatchPolicy's namespaceSelector
]

REFUSED = [
    ("get", "secrets", NAMESPACE, {}),
    ("list", "secrets", WORKLOAD_NAMESPACE, {}),
    ("list", "secrets", None, {}),
    ("get", "configmaps", NAMESPACE, {}),
    ("delete", "pods", WORKLOAD_NAMESPACE, {}),  # no delete without rbac.allowDelete / eviction.escalate
    ("create", "pods", WORKLOAD_NAMESPACE, {}),
    ("patch", "pods", WORKLOAD_NAMESPACE, {}),
    ("create", "pods", WORKLOAD_NAMESPACE, {"subresource": "exec"}),
    ("list", "nodes", None, {}),
    # The kubelet grants exec, containerLogs, pod specs and its configuration to nodes/proxy.
    ("get", "nodes", None, {"subresource": "proxy"}),
    ("create", "nodes", None, {"subresource": "proxy"}),
    ("update", "leases", NAMESPACE, {"group": "coordination.k8s.io", "name": "someone-elses"}),
    ("update", "leases", WORKLOAD_NAMESPACE, {"group": "coordination.k8s.io", "name": FULLNAME}),
    ("create", "clusterroles", None, {"group": "rbac.authorization.k8s.io"}),
    # The policies are the users': memwatch writes only their status.
    *((verb, "memwatchpolicies", WORKLOAD_NAMESPACE, {"group": "memwatch.io"})
      for verb in ("create", "update", "patch", "delete")),
    *((verb, "clustermemwatchpolicies", None, {"group": "memwatch.io"})
      for verb in ("create", "update", "patch", "delete")),
    ("update", "clustermemwatchpolicies", None, {"group": "memwatch.io", "subresource": "status"}),
    ("delete", "namespaces", WORKLOAD_NAMESPACE, {}),
    ("patch", "namespaces", WORKLOAD_NAMESPACE, {}),
]


@pytest.mark.parametrize(("verb", "resource", "namespace", "attributes"), ALLOWED)
def test_service_account_may(
    cluster: Cluster, verb: str, resource: str, namespace: str | None, attributes: dict[str, str]
) -> None:
    assert can(cluster, verb, resource, namespace, **attributes)


@pytest.mark.parametrize(("verb", "resource", "namespace", "attributes"), REFUSED)
def test_service_account_may_not(
    cluster: Cluster, verb: str, resource: str, namespace: str | None, attributes: dict[str, str]
) -> None:
    assert not can(cluster, verb, resource, namespace, **attributes)


def _service_account_token(cluster: Cluster) -> str:
    """A token of the controller's ServiceAccount: TokenRequest, else its legacy token Secret (1.20)."""
    try:
        request = cluster.core.create_namespaced_service_account_token(
            FULLNAME, NAMESPACE, {"spec": {"expirationSeconds": 600}}
        )
        return str(request.status.token)
    except ApiException:
        account = cluster.core.read_namespaced_service_account(FULLNAME, NAMESPACE)
        (ref,) = account.secrets
        secret = cluster.core.read_namespaced_secret(ref.name, NAMESPACE)
        return base64.b64decode(secret.data["token"]).decode()


def test_service_account_token_is_refused_secrets(cluster: Cluster) -> None:
    """Not only what RBAC says: a real request with the ServiceAccount's own token."""
    configuration = kubernetes.client.Configuration()
    admin = cluster.api.configuration
    configuration.host = admin.host
    configuration.ssl_ca_cert = admin.ssl_ca_cert
    configuration.api_key = {"authorization": f"Bearer {_service_account_token(cluster)}"}
    as_memwatch = kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(configuration))
    assert as_memwatch.list_namespaced_pod(WORKLOAD_NAMESPACE).items is not None
    for namespace in (NAMESPACE, WORKLOAD_NAMESPACE):
        with pytest.raises(ApiException) as refused:
            as_memwatch.list_namespaced_secret(namespace)
        assert refused.value.status == 403


def test_helm_test_hook_reaches_the_metrics_service(cluster: Cluster) -> None:
    result = cluster.helm.test(RELEASE, timeout=180, logs=True)
    assert "OK" in result.get("logs", ""), result


# --- The kubelet API, as the controller's own ServiceAccount (issue 10, item 1) ----------------
#
# The local cluster's kubelet authenticates every caller and authorises it against its RBAC
# (webhook mode, as real clusters do). What the chart grants must open the Summary API and
# nothing else of the kubelet's: not logs, pod specs, configuration or exec, neither through the
# API server's node proxy nor straight at the kubelet's port.

#: What README's RBAC list grants the controller by default (source auto), as (API group,
#: resource, verb, resource name or "" for any). `kubectl auth can-i --list` as its ServiceAccount
#: must show nothing beyond this, and README must name each resource.
README_RBAC = {
    *(("", "pods", verb, "") for verb in ("get", "list", "watch")),
    ("", "pods/eviction", "create", ""),
    *(("", "events", verb, "") for verb in ("create", "patch", "list", "watch")),
    *(("metrics.k8s.io", "pods", verb, "") for verb in ("get", "list")),
    ("", "nodes", "get", ""),
    ("", "nodes/stats", "get", ""),
    ("coordination.k8s.io", "leases", "create", ""),
    *(("coordination.k8s.io", "leases", verb, FULLNAME) for verb in ("get", "update")),
    # The policies (charts/memwatch/crds/): read them, write their status only, never the policies.
    *(("memwatch.io", resource, verb, "") for resource in ("memwatchpolicies", "clustermemwatchpolicies")
      for verb in ("get", "list", "watch")),
    *(("memwatch.io", f"{resource}/status", verb, "") for resource in ("memwatchpolicies", "clustermemwatchpolicies")
      for verb in ("get", "patch")),
    *(("", "namespaces", verb, "") for verb in ("list", "watch")),
}
#: What every authenticated user may do on any cluster (system:basic-user, system:discovery,
#: system:public-info-viewer): not the chart's doing.
EVERYONE = {("authorization.k8s.io", "selfsubjectaccessreviews", "create", ""),
            ("authorization.k8s.io", "selfsubjectrulesreviews", "create", "")}
EVERYONE_URLS = {"/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi", "/openapi/*",
                 "/readyz", "/version", "/version/",
                 # system:service-account-issuer-discovery, bound to every ServiceAccount
                 "/.well-known/openid-configuration", "/openid/v1/jwks"}
#: Kubelet API paths the controller must not reach: another pod's log, every pod spec on the node,
#: the kubelet's configuration, and exec (as a WebSocket upgrade is authorised: GET; and POST).
KUBELET_REFUSED = [
    ("GET", "containerLogs/{namespace}/{pod}/{container}"),
    ("GET", "pods"),
    ("GET", "configz"),
    ("GET", "exec/{namespace}/{pod}/{container}?command=id&stdout=1&stderr=1"),
    ("POST", "exec/{namespace}/{pod}/{container}?command=id&stdout=1&stderr=1"),
]


def _as_controller(cluster: Cluster) -> Any:
    """An API client that authenticates with a token of the controller's ServiceAccount."""
    configuration = kubernetes.client.Configuration()
    admin = cluster.api.configuration
    configuration.host = admin.host
    configuration.ssl_ca_cert = admin.ssl_ca_cert
    configuration.api_key = {"authorization": f"Bearer {_service_account_token(cluster)}"}
    return kubernetes.client.ApiClient(configuration)


def _rules(client: Any, namespace: str) -> tuple[set[tuple[str, str, str, str]], set[str]]:
    """What `kubectl auth can-i --list -n NAMESPACE` shows (the SelfSubjectRulesReview it sends)."""
    body: Any = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
                 "spec": {"namespace": namespace}}
    review: Any = kubernetes.client.AuthorizationV1Api(client).create_self_subject_rules_review(body)
    assert not review.status.incomplete, review.status.evaluation_error
    granted = {
        (group, resource, verb, name)
        for rule in review.status.resource_rules
        for group in rule.api_groups or [""]
        for resource in rule.resources or []
        for verb in rule.verbs
        for name in rule.resource_names or [""]
    }
    urls = {url for rule in review.status.non_resource_rules for url in rule.non_resource_urls or []}
    return granted, urls


def test_service_account_can_do_nothing_beyond_the_readme_rbac_list(cluster: Cluster) -> None:
    client = _as_controller(cluster)
    for namespace in (WORKLOAD_NAMESPACE, NAMESPACE):
        granted, urls = _rules(client, namespace)
        assert granted - README_RBAC - EVERYONE == set(), f"in {namespace}"
        assert urls - EVERYONE_URLS == set(), f"in {namespace}"
    # The list above is README's: each resource is named there (a Lease as "Lease").
    readme = (Path(CHART_DIR).parents[1] / "README.md").read_text().lower()
    assert not [r for _, r, _, _ in README_RBAC if r.removesuffix("s") not in readme]


@dataclass
class KubeletAnswer:
    status: int
    body: str


def _node(cluster: Cluster) -> Any:
    (node,) = cluster.core.list_node().items
    return node


def _https(cluster: Cluster, method: str, url: str, token: str | None) -> KubeletAnswer:
    """One request, verifying the server's certificate against the cluster's CA."""
    import urllib3

    pool = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=cluster.api.configuration.ssl_ca_cert)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answer = pool.request(method, url, headers=headers, timeout=30, retries=False, redirect=False)
    return KubeletAnswer(answer.status, answer.data.decode("utf-8", "replace"))


def _kubelet(cluster: Cluster, method: str, path: str, token: str | None) -> KubeletAnswer:
    """A request straight to the node's kubelet (https://<InternalIP>:<kubelet port>/<path>)."""
    node = _node(cluster)
    address = next(a.address for a in node.status.addresses if a.type == "InternalIP")
    port = node.status.daemon_endpoints.kubelet_endpoint.port
    return _https(cluster, method, f"https://{address}:{port}/{path}", token)


def _target(cluster: Cluster, path: str) -> str:
    """PATH with {namespace}/{pod}/{container} set to the controller's own pod (it exists)."""
    pod = cluster.controller_pod()
    return path.format(namespace=NAMESPACE, pod=pod.metadata.name, container=pod.spec.containers[0].name)


def test_kubelet_refuses_a_request_without_credentials(cluster: Cluster) -> None:
    answer = _kubelet(cluster, "GET", "pods", token=None)
    assert answer.status == 401, answer


@pytest.mark.parametrize(("method", "path"), KUBELET_REFUSED)
def test_kubelet_refuses_the_controller_directly(cluster: Cluster, method: str, path: str) -> None:
    answer = _kubelet(cluster, method, _target(cluster, path), _service_account_token(cluster))
    assert answer.status == 403, answer


@pytest.mark.parametrize(("method", "path"), KUBELET_REFUSED)
def test_api_server_node_proxy_refuses_the_controller(cluster: Cluster, method: str, path: str) -> None:
    node = _node(cluster).metadata.name
    url = f"{cluster.api.configuration.host}/api/v1/nodes/{node}/proxy/{_target(cluster, path)}"
    answer = _https(cluster, method, url, _service_account_token(cluster))
    assert answer.status == 403, answer


def test_kubelet_serves_the_summary_api_to_the_controller(cluster: Cluster) -> None:
    answer = _kubelet(cluster, "GET", "stats/summary", _service_account_token(cluster))
    assert answer.status == 200, answer
    node = _node(cluster).metadata.name
    assert f'"nodeName": "{node}"' in answer.body or f'"nodeName":"{node}"' in answer.body, answer.body[:500]

"""Baseline for rows 3 and 4: the obvious kopf design, a minimal ``@kopf.on.event`` pod handler.

It keeps one record per matching pod (what a controller needs to decide on) and prints
``seen-all N pods`` once it has seen every one of the ``--expect`` pods carrying the
``--label`` (key=value), and with ``--annotated`` a ``memwatch.io/limit`` annotation
(both filters run in kopf, on the client). kopf has no server-side label selector: it lists and watches every pod
of the cluster and filters on the client. The handler is ``async``, kopf's cheapest path (sync
handlers also pay a thread-pool hop per event). Nothing is ever written to the pods.

    python bench/kopf_baseline.py --kubeconfig FILE --expect 1000 --label bench.memwatch.io/set=mixed
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from typing import Any

STARTED = time.monotonic()
_parser = argparse.ArgumentParser(description="A minimal kopf @on.event pod handler (memwatch's baseline).")
_parser.add_argument("--kubeconfig", required=True)
_parser.add_argument("--expect", type=int, required=True, help="how many labelled pods to wait for")
_parser.add_argument("--label", required=True, help="key=value of the pods to index")
_parser.add_argument("--annotated", action="store_true", help="only pods with a memwatch.io/limit annotation")
ARGS = _parser.parse_args()
# Before kopf imports the official client: it reads $KUBECONFIG once, at import time.
os.environ["KUBECONFIG"] = ARGS.kubeconfig

import kopf  # noqa: E402

seen: dict[str, dict[str, Any]] = {}
_done = False


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Write nothing and scan nothing: only the pod watch runs."""
    settings.posting.enabled = False
    settings.scanning.disabled = True
    settings.peering.standalone = True


_KEY, _, _VALUE = ARGS.label.partition("=")


_ANNOTATIONS = {"memwatch.io/limit": kopf.PRESENT} if ARGS.annotated else None


@kopf.on.event("", "v1", "pods", labels={_KEY: _VALUE}, annotations=_ANNOTATIONS)
async def pod_event(event: Any, uid: str, name: str, namespace: str | None, meta: Any, spec: Any,
                    **_: Any) -> None:
    """Index the pod (name, node, annotations), as a memwatch-like controller would."""
    global _done
    if event.get("type") == "DELETED":
        seen.pop(uid, None)
        return
    seen[uid] = {"name": name, "namespace": namespace, "node": spec.get("nodeName"),
                 "annotations": dict(meta.get("annotations") or {})}
    if not _done and len(seen) >= ARGS.expect:
        _done = True
        print(f"seen-all {len(seen)} pods after {time.monotonic() - STARTED:.2f}s", flush=True)


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    kopf.configure(verbose=False)
    logging.getLogger("kopf").setLevel(logging.WARNING)
    kopf.run(clusterwide=True, standalone=True, liveness_endpoint=None)


if __name__ == "__main__":
    main()

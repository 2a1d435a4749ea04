"""The cluster objects the peer directory reads, exactly as ``kubectl get -o json`` writes them
from the real kube-apiserver (tests/e2e/apiserver.py): pods of every workload kind on two
nodes, Services (ClusterIP, headless) and EndpointSlices, as test_kube_peers.populate
creates them.

``python3 -m tests.e2e.peer_fixtures`` (from the repository root) starts an API server in a
temporary directory, creates them in namespace ``peers`` and writes
tests/unit/fixtures/kubectl-get-peers.json (``kubectl get pods,services,endpointslices -n
peers -o json``) with the ClusterIPs it got in ``kubectl-get-peers.ips.json``, which
tests/unit/test_peer_index.py reads without an API server.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from .apiserver import run_apiserver
from .test_kube_peers import populate

NAMESPACE = "peers"
OUT = Path(__file__).parent.parent / "unit" / "fixtures"


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="peer-fixtures-") as tmp, run_apiserver(Path(tmp)) as api:
        api.create_namespace(NAMESPACE)
        ips = populate(api, NAMESPACE)
        out = api.kubectl("get", "pods,services,endpointslices", "-n", NAMESPACE, "-o", "json").stdout
    (OUT / "kubectl-get-peers.json").write_text(out)
    (OUT / "kubectl-get-peers.ips.json").write_text(json.dumps(ips, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()

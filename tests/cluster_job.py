"""Run a job on a 3-node local Ray and remove a node whose actor is busy (test_faults drives this).

    python tests/cluster_job.py JOB.yaml FAULTS_DIR

Prints one JSON line: whether the removed node held a blocked actor, and the job's counts.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

import alray


def remove_busy_node(cluster: Cluster, workers: list, faults: Path, report: dict) -> None:
    """Once two actors wait at the gate, remove a worker node that holds one, open the gate."""
    while len(list(faults.glob("blocked-*"))) < 2:
        time.sleep(0.05)
    busy = {path.read_text() for path in faults.glob("blocked-*")}
    victim = next(node for node in workers if node.node_id in busy)
    cluster.remove_node(victim)
    report["removed_node_held_actor"] = True
    (faults / "gate-open").touch()


def main() -> None:
    spec_path, faults = sys.argv[1], Path(sys.argv[2])
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    report = {"removed_node_held_actor": False}
    watcher = threading.Thread(target=remove_busy_node, args=(cluster, workers, faults, report),
                               daemon=True)
    watcher.start()
    spec = alray.JobSpec.from_yaml(spec_path, overrides={"resources.actors": 2})
    result = alray.run(spec)
    report["counts"] = result.counts
    print(json.dumps(report))
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main()

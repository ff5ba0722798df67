"""`train.distribution: multi_worker_mirrored` for real: two worker processes on loopback,
each with its TF_CONFIG, train the pipeline's train stage on the slice together."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys

import pytest

from tests.integration.pipeline_repo import pipeline_env, set_params

pytestmark = pytest.mark.integration

WORKERS = 2


def free_ports(count: int) -> list[int]:
    """Ports free on loopback now (held open together, so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for probe in sockets:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in sockets]
    finally:
        for probe in sockets:
            probe.close()


def test_two_workers_on_loopback_finish_with_the_same_weights(own_repo):
    repo = own_repo  # a private copy: this test changes params and the model
    set_params(repo, **{"train.distribution": "multi_worker_mirrored", "train.epochs": 2})
    before = (repo / "models" / "model.keras").stat().st_mtime_ns
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(WORKERS)]}
    workers = []
    for index in range(WORKERS):
        config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        env = {**pipeline_env(repo), "TF_CONFIG": json.dumps(config)}
        workers.append(
            subprocess.Popen(
                [sys.executable, "-m", "stages.train"],
                cwd=repo,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    logs = []
    for worker in workers:
        output, _ = worker.communicate(timeout=600)
        assert worker.returncode == 0, output[-3000:]
        logs.append(output)

    # Both trained as one cluster of two replicas, and ended with the same weights.
    assert all(f"{WORKERS} replica(s) in sync" in log for log in logs)
    digests = [re.findall(r"weights sha256 ([0-9a-f]{16})", log) for log in logs]
    assert digests[0] and digests[0] == digests[1]
    # The chief (worker 0) alone wrote the model and the records; they are those weights.
    import keras

    import pneumonia.model.network  # noqa: F401  (registers the custom layer)
    from pneumonia.model.training import weights_digest

    assert (repo / "models" / "model.keras").stat().st_mtime_ns > before
    saved = keras.models.load_model(repo / "models" / "model.keras")
    assert weights_digest(saved) == digests[0][0]
    info = json.loads((repo / "models" / "train_info.json").read_text())
    assert info["replicas"] == WORKERS and info["epochs_run"] == 2
    assert "worker done" in logs[1] and "worker done" not in logs[0]

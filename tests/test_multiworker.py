"""Multi-worker training on real processes: two workers on 127.0.0.1, each with its own
TF_CONFIG, running `fit_classifier` under MultiWorkerMirroredStrategy (tests/
multiworker_worker.py), against one worker with the same global batch; and a worker killed
mid-epoch, after which both restart with the same command and resume from the backup.

Every port is chosen free at run time, every wait is bounded, and every process started
here is killed in a `finally`.
"""

import csv
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from keras_chanattn.train.run_folder import BACKUP, SUMMARY, private_folder

ROOT = pathlib.Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "multiworker_worker.py"
EPOCHS, STEPS_PER_EPOCH = 3, 4  # the worker's 128 images in global batches of 32
RUN_TIMEOUT = 420  # seconds for a whole run: start-up and tracing dominate on a busy CPU


def free_ports(count):
    """`count` distinct ports free on 127.0.0.1 now (all held open until all are chosen)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def worker_env(ports=None, index=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    if ports is not None:
        cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
        env["TF_CONFIG"] = json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}
        )
    return env


def start(tmp_path, tag, out, ports=None, index=None, extra=()):
    """Starts one worker process (the single-worker reference when `ports` is None)."""
    log = open(tmp_path / f"{tag}.log", "w")
    command = [
        sys.executable,
        str(WORKER),
        "--out",
        str(out),
        "--result",
        str(tmp_path / f"{tag}.json"),
        *extra,
    ]
    process = subprocess.Popen(
        command, cwd=ROOT, env=worker_env(ports, index), stdout=log, stderr=subprocess.STDOUT
    )
    process.log = log
    return process


def wait(processes, timeout):
    """Waits for every process, all within `timeout` seconds; returns their exit codes."""
    deadline = time.monotonic() + timeout
    return [p.wait(timeout=max(0.1, deadline - time.monotonic())) for p in processes]


def stop(processes):
    for process in processes:
        if process.poll() is None:
            process.kill()
        try:
            process.wait(timeout=30)
        finally:
            process.log.close()


def log_tail(tmp_path, tag):
    return (tmp_path / f"{tag}.log").read_text()[-3000:]


def result(tmp_path, tag):
    return json.loads((tmp_path / f"{tag}.json").read_text())


def logged_epochs(out):
    with open(out / "log.csv", newline="") as file:
        return [int(row["epoch"]) for row in csv.DictReader(file)]


@pytest.mark.slow
def test_two_workers_train_like_one_worker_with_the_same_global_batch(tmp_path):
    ports = free_ports(2)
    processes = []
    try:  # the reference runs alongside the cluster: the CPU is shared either way
        processes.append(start(tmp_path, "single", tmp_path / "single"))
        for index in range(2):
            processes.append(start(tmp_path, f"worker{index}", tmp_path / "run", ports, index))
        codes = wait(processes, RUN_TIMEOUT)
    finally:
        stop(processes)
    for code, tag in zip(codes, ("single", "worker0", "worker1"), strict=True):
        assert code == 0, (tag, log_tail(tmp_path, tag))
    single, chief, other = (result(tmp_path, t) for t in ("single", "worker0", "worker1"))
    assert single["summary"]["replicas"] == 1 and chief["summary"]["replicas"] == 2
    for run in (single, chief, other):
        assert run["summary"]["epochs_run"] == EPOCHS
        assert run["summary"]["steps"] == EPOCHS * STEPS_PER_EPOCH
    # The workers hold one model: the same logits and logs on both.
    np.testing.assert_allclose(chief["logits"], other["logits"], rtol=1e-6, atol=1e-6)
    assert chief["epochs"] == other["epochs"]
    # The same start, and the same training as one worker: synchronised BatchNorm over the
    # global batch (the tolerance of test_train's mirrored-strategy parity test).
    np.testing.assert_allclose(chief["initial"], single["initial"], rtol=1e-6, atol=1e-6)
    for ours, reference in zip(chief["epochs"], single["epochs"], strict=True):
        for key in ("loss", "val_loss"):
            assert abs(ours[key] - reference[key]) <= 1e-4 * max(1.0, abs(reference[key])), (
                key, ours, reference
            )  # fmt: skip
    np.testing.assert_allclose(chief["logits"], single["logits"], rtol=1e-3, atol=1e-3)
    # Only the chief wrote the run folder; the other worker's private copy is gone.
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == [
        "config.json",
        "last.keras",
        "log.csv",
        SUMMARY,
    ]
    assert logged_epochs(run) == list(range(EPOCHS))


def wait_for_second_epoch(out, marker, processes, timeout=RUN_TIMEOUT):
    """Polls until the first epoch's backup exists and the chief is inside the second epoch
    (its per-batch marker); returns the backed-up epoch count. Fails if a worker exits."""
    metadata = out / BACKUP / "training_metadata.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert all(p.poll() is None for p in processes), "a worker exited before the kill"
        lines = marker.read_text().split("\n") if marker.exists() else []
        if metadata.exists() and any(line.startswith("1 ") for line in lines):
            try:
                return json.loads(metadata.read_text())["epoch"]
            except (ValueError, KeyError):
                pass  # being written: look again
        time.sleep(0.05)
    pytest.fail(f"no backup of the first epoch within {timeout} s")


@pytest.mark.slow
def test_a_killed_worker_resumes_from_the_backup_without_rerunning_epochs(tmp_path):
    ports, out = free_ports(2), tmp_path / "run"
    # A pause per batch makes an epoch last seconds, so the kill lands inside one.
    args = [("--marker", str(tmp_path / f"marker{i}"), "--pause", "0.5") for i in range(2)]
    processes = []
    try:
        processes = [start(tmp_path, f"first{i}", out, ports, i, args[i]) for i in range(2)]
        backed_up = wait_for_second_epoch(out, tmp_path / "marker0", processes)
        processes[1].kill()  # the non-chief dies mid-epoch; the chief blocks or fails
        try:
            processes[0].wait(timeout=60)
        except subprocess.TimeoutExpired:
            processes[0].kill()
        stop(processes)
        assert backed_up == 1
        assert (out / BACKUP).is_dir() and (out / ".worker-1" / BACKUP).is_dir()
        assert not (out / SUMMARY).exists()
        # The same command on both workers again.
        processes = [start(tmp_path, f"second{i}", out, ports, i) for i in range(2)]
        codes = wait(processes, RUN_TIMEOUT)
    finally:
        stop(processes)
    for code, tag in zip(codes, ("second0", "second1"), strict=True):
        assert code == 0, (tag, log_tail(tmp_path, tag))
    for tag in ("second0", "second1"):
        resumed = result(tmp_path, tag)
        assert [e["epoch"] for e in resumed["epochs"]] == list(range(backed_up, EPOCHS))
        assert resumed["summary"]["epochs_run"] == EPOCHS - backed_up
        assert resumed["summary"]["steps"] == EPOCHS * STEPS_PER_EPOCH  # optimiser state kept
    assert logged_epochs(out) == list(range(EPOCHS))  # each epoch logged once
    assert json.loads((out / SUMMARY).read_text())["epochs"] == EPOCHS
    assert not (out / BACKUP).exists() and not (out / ".worker-1").exists()


def test_a_non_chief_worker_gets_a_private_scratch_folder(tmp_path):
    from keras_chanattn.train import TrainConfig
    from keras_chanattn.train.recipe import _worker_task

    config = TrainConfig(epochs=2)
    chief = types.SimpleNamespace(extended=types.SimpleNamespace(should_checkpoint=True))
    other = types.SimpleNamespace(
        extended=types.SimpleNamespace(should_checkpoint=False),
        cluster_resolver=types.SimpleNamespace(task_type="worker", task_id=1),
    )
    assert _worker_task(None) is None and _worker_task(chief) is None
    assert _worker_task(other) == "worker-1"

    folder = private_folder(tmp_path, "worker-1", config, overwrite=False)
    assert folder.out == folder.work == tmp_path / ".worker-1"
    assert folder.scratch and not folder.resume and not folder.staged
    # An interrupted copy resumes; an overwrite, or a finished copy a crash left, restarts.
    (folder.work / BACKUP).mkdir(parents=True)
    assert private_folder(tmp_path, "worker-1", config, overwrite=False).resume
    assert not private_folder(tmp_path, "worker-1", config, overwrite=True).resume
    assert not (folder.work / BACKUP).exists()
    (folder.work / BACKUP).mkdir(parents=True)
    (folder.work / SUMMARY).write_text("{}")
    assert not private_folder(tmp_path, "worker-1", config, overwrite=False).resume
    assert not folder.work.exists()


def test_the_private_keras_names_of_the_multi_worker_fix_exist():
    from keras_chanattn._compat.keras_distribute import missing_private_names

    assert missing_private_names() == [], "update keras_chanattn/_compat/keras_distribute.py"


def test_the_late_strategy_error_names_the_fix(monkeypatch):
    import tensorflow as tf

    from keras_chanattn.train import distribution_strategy

    def refuse():
        raise RuntimeError("Collective ops must be configured at program startup")

    monkeypatch.setattr(tf.distribute, "MultiWorkerMirroredStrategy", refuse)
    with pytest.raises(RuntimeError, match="before loading data or building a model"):
        distribution_strategy("multi-worker")


@pytest.mark.slow
def test_a_late_multi_worker_strategy_is_a_clear_error():
    """The real TensorFlow refusal, in a fresh process that has run an op (~20 s)."""
    script = (
        "import json, os\n"
        "os.environ['TF_CONFIG'] = json.dumps({'cluster': {'worker': ['127.0.0.1:1', "
        "'127.0.0.1:2']}, 'task': {'type': 'worker', 'index': 0}})\n"
        "import tensorflow as tf\n"
        "tf.constant(1.0) + 1.0  # TensorFlow has run an op: too late for collective ops\n"
        "from keras_chanattn.train import distribution_strategy\n"
        "distribution_strategy('multi-worker')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=worker_env(), capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0
    assert "before TensorFlow runs anything" in done.stderr, done.stderr[-2000:]

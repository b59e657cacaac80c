"""Ingest on a real distributed cluster on 127.0.0.1: identity with a local run, shared
clients, and a worker SIGKILLed in the middle of a run.

The scheduler and each worker are separate ``dask`` processes. Workers load a test-side
preload module that slows every chunk task down (so a kill lands mid-run) and logs which
process started which chunk (so the test knows a killed task was run again elsewhere).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import zarr
from corpus import assert_same_store, chunks_done, free_port, open_group, wait_until

import xraybatch

pytestmark = pytest.mark.slow
distributed = pytest.importorskip("distributed")

SIZE, CHUNK, N_CHUNKS = 64, 4, 15  # synth_small has 60 images
DELAY = 0.25  # seconds added to every chunk task on the workers
PRELOAD = '''
import os, time

from xraybatch import tasks

# distributed imports a preload file twice: wrap the original function only once
process_chunk = tasks.__dict__.setdefault("_unpatched_process_chunk", tasks.process_chunk)
log = os.path.join(os.environ["XRB_TEST_LOG"], f"{os.getpid()}.log")


def logged_slow_chunk(task):
    with open(log, "a") as f:
        f.write(f"{task.ref.url}\\t{task.index}\\n")
    time.sleep(float(os.environ["XRB_TEST_DELAY"]))
    return process_chunk(task)


tasks.process_chunk = logged_slow_chunk
'''


@dataclass
class Cluster:
    address: str
    client: distributed.Client
    root: Path
    procs: list[subprocess.Popen] = field(default_factory=list)

    def start_worker(self) -> subprocess.Popen:
        """One more single-threaded worker process (no nanny, so SIGKILL really kills it)."""
        env = {**os.environ, "XRB_TEST_DELAY": str(DELAY), "XRB_TEST_LOG": str(self.root)}
        cmd = [sys.executable, "-m", "dask", "worker", self.address, "--host", "127.0.0.1",
               "--nthreads", "1", "--no-nanny", "--no-dashboard", "--death-timeout", "60",
               "--preload", str(self.root / "xrb_test_preload.py")]
        self.procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL, env=env))
        return self.procs[-1]

    def started(self, out: Path) -> dict[int, list[int]]:
        """Worker pid -> chunk indices it started for the store ``out``."""
        runs: dict[int, list[int]] = {}
        for log in self.root.glob("*.log"):
            for line in log.read_text().splitlines():
                url, index = line.split("\t")
                if url == str(out):
                    runs.setdefault(int(log.stem), []).append(int(index))
        return runs


def scheduler_address(path: Path) -> str | None:
    """The address in a scheduler file; None while it is absent or still half written."""
    try:
        return json.loads(path.read_text()).get("address")
    except (OSError, ValueError):
        return None


def in_background(fn: Callable, *args, **kwargs) -> tuple[threading.Thread, Future]:
    """Run ``fn`` in a thread; its result or its exception lands in the returned future."""
    future: Future = Future()

    def target() -> None:
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as e:  # re-raised by future.result() in the test's thread
            future.set_exception(e)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, future


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("cluster")
    (root / "xrb_test_preload.py").write_text(PRELOAD)
    scheduler_file = root / "scheduler.json"
    procs = [subprocess.Popen(
        [sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
         "--no-dashboard", "--scheduler-file", str(scheduler_file)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    client = None
    try:
        wait_until(lambda: scheduler_address(scheduler_file), 60, "the scheduler to start", 0.1)
        address = scheduler_address(scheduler_file)
        assert address.startswith("tcp://127.0.0.1:")
        client = distributed.Client(address, timeout="30s")
        cluster = Cluster(address, client, root, procs)
        for _ in range(2):
            cluster.start_worker()
        client.wait_for_workers(2, timeout=60)
        yield cluster
    finally:
        if client is not None:
            client.close()
        for proc in procs:
            proc.kill()
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def reference(synth_small: Path, tmp_path_factory: pytest.TempPathFactory) -> zarr.Group:
    out = tmp_path_factory.mktemp("reference") / "ref.zarr"
    xraybatch.ingest(synth_small, out, size=SIZE, chunk=CHUNK, scheduler="threads")
    return open_group(out)


def test_cli_on_cluster_matches_local_threads(cluster, synth_small, reference, tmp_path):
    out = tmp_path / "cluster.zarr"
    run = subprocess.run([sys.executable, "-m", "xraybatch", "ingest", str(synth_small),
                          str(out), "--size", str(SIZE), "--chunk", str(CHUNK),
                          "--scheduler", cluster.address],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "ingest: done, 60/60 images" in run.stderr and "\r" not in run.stderr  # progress
    assert f"stored 60 of 60 images in {out}" in run.stdout
    assert_same_store(open_group(out), reference)
    started = cluster.started(out)  # every chunk ran on the worker processes
    assert sorted(i for chunks in started.values() for i in chunks) == list(range(N_CHUNKS))
    assert len(started) == 2


def test_api_with_a_shared_client(cluster, synth_small, reference, tmp_path):
    """Two ingests at once through one Client: their tasks must not be confused."""
    first, second = tmp_path / "first.zarr", tmp_path / "second.zarr"
    background, first_run = in_background(xraybatch.ingest, synth_small, first, size=SIZE,
                                          chunk=CHUNK, scheduler=cluster.client)
    try:
        wait_until(lambda: chunks_done(first) >= 1, 60, "the first ingest to start")
        result = xraybatch.ingest(synth_small, second, size=SIZE, chunk=CHUNK,
                                  scheduler=cluster.client)
    finally:
        background.join(timeout=120)
    assert not background.is_alive(), "the first ingest did not finish"
    assert first_run.exception(timeout=0) is None
    assert (result.n_stored, result.chunks_run) == (60, N_CHUNKS)
    assert_same_store(open_group(first), reference)
    assert_same_store(open_group(second), reference)


def test_worker_sigkilled_mid_run(cluster, synth_small, reference, tmp_path):
    out = tmp_path / "out.zarr"
    victim = cluster.start_worker()
    cluster.client.wait_for_workers(3, timeout=60)
    run, ingest = in_background(xraybatch.ingest, synth_small, out, size=SIZE, chunk=CHUNK,
                                scheduler=cluster.client)
    try:
        def victim_busy() -> bool:  # the victim has started a chunk that is not written yet
            started = cluster.started(out).get(victim.pid, [])
            done = open_group(out)["chunk_done"][:] if started else None
            return bool(started) and not done[started[-1]] and 2 <= done.sum() < N_CHUNKS

        wait_until(victim_busy, 60, "the victim worker to be writing a chunk mid-run")
        in_flight = cluster.started(out)[victim.pid][-1]
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
    finally:
        run.join(timeout=120)
    assert not run.is_alive(), "the ingest did not finish"
    assert ingest.result(timeout=0).n_stored == 60  # re-raises the ingest's own error
    rerun_by = [pid for pid, chunks in cluster.started(out).items()
                if in_flight in chunks and pid != victim.pid]
    assert rerun_by, f"chunk {in_flight} of the killed worker was not run again"
    assert_same_store(open_group(out), reference)
    wait_until(lambda: len(cluster.client.scheduler_info()["workers"]) == 2, 30,
               "the scheduler to drop the dead worker")


def test_unreachable_scheduler_is_a_one_line_error(synth_small, tmp_path):
    address = f"tcp://127.0.0.1:{free_port()}"  # nobody listens there
    env = {**os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "1s"}
    run = subprocess.run([sys.executable, "-m", "xraybatch", "ingest", str(synth_small),
                          str(tmp_path / "out.zarr"), "--scheduler", address],
                         capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 2
    assert run.stderr.startswith(f"xraybatch ingest: error: cannot reach the Dask scheduler "
                                 f"at {address}: ")
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert not (tmp_path / "out.zarr").exists()  # connected before anything was written

"""Interrupted ingests: SIGKILL / SIGINT of the client at several points, then --resume.

The client is a real ``xraybatch ingest`` process. To land each signal at a known stage
without any hook in the product, it is started through a small wrapper (written below)
that slows every chunk task down and can hold the run just before finalisation until the
test lets it go; the test times its signals by polling the store's ``chunk_done``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from corpus import assert_same_store, chunks_done, open_group, wait_until

import xraybatch
from xraybatch import cli, lock, store
from xraybatch.store import StoreError, StoreRef

pytestmark = pytest.mark.slow

SIZE, CHUNK, N_CHUNKS = 64, 4, 15  # synth_small has 60 images
INGEST_ARGS = ["--size", str(SIZE), "--chunk", str(CHUNK), "--quiet"]
WRAPPER = '''
import os, runpy, signal, time

from xraybatch import build, tasks

signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
delay, gate = float(os.environ["XRB_TEST_DELAY"]), os.environ.get("XRB_TEST_GATE")
process_chunk, summarize = tasks.process_chunk, build._summarize


def slow_chunk(task):
    time.sleep(delay)
    return process_chunk(task)


def held_summarize(*args):  # every chunk is written: wait (bounded) for the test's go
    deadline = time.monotonic() + 60
    while gate and not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.02)
    return summarize(*args)


tasks.process_chunk, build._summarize = slow_chunk, held_summarize
runpy.run_module("xraybatch", run_name="__main__", alter_sys=True)
'''


@pytest.fixture(scope="module")
def reference(synth_small: Path, tmp_path_factory: pytest.TempPathFactory) -> zarr.Group:
    """An uninterrupted, local threaded run."""
    out = tmp_path_factory.mktemp("reference") / "ref.zarr"
    xraybatch.ingest(synth_small, out, size=SIZE, chunk=CHUNK)
    return open_group(out)


@pytest.fixture
def client(tmp_path: Path, synth_small: Path):
    """Start slowed ``xraybatch ingest`` processes; all are killed at teardown."""
    wrapper = tmp_path / "slow_ingest.py"
    wrapper.write_text(WRAPPER)
    procs: list[subprocess.Popen] = []

    def start(out: Path, *extra: str, delay: float = 0.2, gate: Path | None = None):
        env = {**os.environ, "XRB_TEST_DELAY": str(delay)}
        if gate:
            env["XRB_TEST_GATE"] = str(gate)
        cmd = [sys.executable, str(wrapper), "ingest", str(synth_small), str(out),
               *INGEST_ARGS, "--workers", "2", *extra]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=env))
        return procs[-1]

    try:
        yield start
    finally:
        for proc in procs:
            proc.kill()
            proc.communicate(timeout=30)


def _kill(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> tuple[int, str]:
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def _stats(out: Path, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main(["stats", str(out)])
    return code, capsys.readouterr().err


def _resume(src: Path, out: Path, capsys: pytest.CaptureFixture) -> str:
    capsys.readouterr()
    assert cli.main(["ingest", str(src), str(out), *INGEST_ARGS, "--resume"]) == 0
    return capsys.readouterr().out


def test_sigkill_right_after_creation(client, synth_small, reference, tmp_path, capsys):
    out = tmp_path / "out.zarr"
    proc = client(out)
    wait_until(lambda: (out / "zarr.json").exists(), 30, "the store to appear", 0.002)
    _kill(proc)
    assert chunks_done(out) < N_CHUNKS
    code, err = _stats(out, capsys)
    assert code != 0 and ("INCOMPLETE" in err or "creation was interrupted" in err), err
    _resume(synth_small, out, capsys)
    assert_same_store(open_group(out), reference)


def test_sigkill_mid_run_resumes_only_missing_chunks(client, synth_small, reference, tmp_path,
                                                     capsys):
    out = tmp_path / "out.zarr"
    proc = client(out)
    wait_until(lambda: chunks_done(out) >= 3, 60, "3 chunks to be written")
    assert _kill(proc)[0] == -signal.SIGKILL
    done = chunks_done(out)
    assert 3 <= done < N_CHUNKS
    assert not xraybatch.open(str(out)).complete
    code, err = _stats(out, capsys)
    assert code == 1 and f"INCOMPLETE: {done} of {N_CHUNKS} chunks written" in err
    printed = _resume(synth_small, out, capsys)
    assert f"resumed: {N_CHUNKS - done} of {N_CHUNKS} chunks written now" in printed
    group = open_group(out)
    assert group.attrs["summary"]["chunks_last_run"] == N_CHUNKS - done
    assert_same_store(group, reference)


def test_sigint_prints_how_to_resume(client, synth_small, reference, tmp_path, capsys):
    out = tmp_path / "out dir" / "out.zarr"  # a space: the printed command must still work
    proc = client(out)
    wait_until(lambda: chunks_done(out) >= 3, 60, "3 chunks to be written")
    code, err = _kill(proc, signal.SIGINT)
    assert code == 130, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    message, _, command = lines[0].partition(" is incomplete, finish it with: ")
    assert message == f"xraybatch ingest: interrupted; {out}"
    words = shlex.split(command)
    assert words[:4] == ["xraybatch", "ingest", str(synth_small), str(out)] and "--resume" in words
    assert chunks_done(out) < N_CHUNKS and not xraybatch.open(str(out)).complete
    capsys.readouterr()
    assert cli.main(words[1:]) == 0  # exactly what the message says
    assert_same_store(open_group(out), reference)


def test_sigkill_during_finalisation(client, synth_small, reference, tmp_path, capsys):
    out = tmp_path / "out.zarr"
    proc = client(out, gate=tmp_path / "never")  # holds before marking the store complete
    wait_until(lambda: chunks_done(out) == N_CHUNKS, 60, "every chunk to be written")
    _kill(proc)
    assert not xraybatch.open(str(out)).complete
    code, err = _stats(out, capsys)
    assert code == 1 and f"INCOMPLETE: {N_CHUNKS} of {N_CHUNKS} chunks written" in err
    printed = _resume(synth_small, out, capsys)
    assert f"already had all {N_CHUNKS} chunks: nothing to write" in printed
    assert_same_store(open_group(out), reference)


def test_resume_rewrites_unfinished_chunks_and_skips_done_ones(synth_small, reference,
                                                                tmp_path):
    out = tmp_path / "out.zarr"
    shutil.copytree(reference.store.root, out)
    group = zarr.open_group(str(out), mode="r+")
    noise = np.random.default_rng(0).integers(0, 256, (CHUNK, SIZE, SIZE), dtype=np.uint8)
    group["images"][2 * CHUNK:3 * CHUNK] = noise  # chunk 2: a write cut short by a kill
    group["status"][2 * CHUNK:3 * CHUNK] = np.array(["corrupt"] * CHUNK, dtype=object)
    group["chunk_done"][2] = False
    group["images"][5 * CHUNK:6 * CHUNK] = noise  # chunk 5: marked done, so trusted
    group.attrs["complete"] = False

    result = xraybatch.ingest(synth_small, out, size=SIZE, chunk=CHUNK, resume=True)

    assert (result.chunks_run, result.chunks_total) == (1, N_CHUNKS)
    group = open_group(out)
    assert np.array_equal(group["images"][5 * CHUNK:6 * CHUNK], noise)  # not rewritten
    group_images = group["images"][:]
    group_images[5 * CHUNK:6 * CHUNK] = reference["images"][5 * CHUNK:6 * CHUNK]
    assert np.array_equal(group_images, reference["images"][:])  # chunk 2 rewritten
    for name in set(group.array_keys()) - {"images"}:
        np.testing.assert_array_equal(group[name][:], reference[name][:], err_msg=name)
    assert group.attrs["complete"]


def test_resume_refuses_changed_parameters(synth_small, reference, tmp_path):
    out = tmp_path / "out.zarr"
    shutil.copytree(reference.store.root, out)
    with pytest.raises(StoreError, match="size was 64, now 32"):
        xraybatch.ingest(synth_small, out, size=32, chunk=CHUNK, resume=True)
    with pytest.raises(StoreError, match="interpolation was 'auto', now 'linear'"):
        xraybatch.ingest(synth_small, out, size=SIZE, interpolation="linear", resume=True)


def test_resume_refuses_a_store_of_an_older_version(synth_small, reference, tmp_path):
    out = tmp_path / "out.zarr"
    shutil.copytree(reference.store.root, out)
    group = zarr.open_group(str(out), mode="r+")
    attrs = {k: v for k, v in group.attrs.asdict().items() if k not in ("window", "fit")}
    group.attrs.clear()  # as written before --window and --fit existed
    group.update_attributes({**attrs, "xraybatch_version": "0.0.9", "complete": False})
    with pytest.raises(StoreError, match="xraybatch 0.0.9 wrote it without window, fit; "
                                         "start again with --overwrite"):
        xraybatch.ingest(synth_small, out, size=SIZE, chunk=CHUNK, resume=True)


def test_resume_refuses_changed_source_files(synth_copy, tmp_path):
    out = tmp_path / "out.zarr"
    xraybatch.ingest(synth_copy, out, size=SIZE, chunk=CHUNK)
    group = zarr.open_group(str(out), mode="r+")
    group["chunk_done"][0], group.attrs["complete"] = False, False  # as if interrupted
    victim = next(synth_copy.rglob("*.jpeg"))
    victim.write_bytes(victim.read_bytes() + b"\0")  # same path and label, new content
    with pytest.raises(StoreError, match="source files changed"):
        xraybatch.ingest(synth_copy, out, size=SIZE, chunk=CHUNK, resume=True)
    victim.unlink()  # a file gone
    with pytest.raises(StoreError, match="source files changed"):
        xraybatch.ingest(synth_copy, out, size=SIZE, chunk=CHUNK, resume=True)


def test_resume_never_wipes_another_tools_zarr_store(synth_small, tmp_path):
    out = tmp_path / "foreign.zarr"
    foreign = zarr.open_group(str(out), mode="w", zarr_format=3)
    foreign.create_array("data", shape=(3,), dtype="int8")
    with pytest.raises(StoreError, match="not an xraybatch store"):
        xraybatch.ingest(synth_small, out, size=SIZE, resume=True)
    assert "data" in open_group(out)


def test_second_writer_is_refused_while_the_lock_is_held(client, synth_small, reference,
                                                         tmp_path):
    out, gate = tmp_path / "out.zarr", tmp_path / "go"
    holder = client(out, delay=0, gate=gate)  # runs, then waits for `gate` holding the lock
    wait_until(lambda: chunks_done(out) == N_CHUNKS, 60, "the first run to write its chunks")
    second = {flag: subprocess.Popen(
        [sys.executable, "-m", "xraybatch", "ingest", str(synth_small), str(out), *INGEST_ARGS,
         *([flag] if flag else [])], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for flag in ("", "--resume", "--overwrite")}
    try:
        outcome = {flag: (p.wait(timeout=60), p.stderr.read()) for flag, p in second.items()}
    finally:
        for p in second.values():
            p.kill()
            p.communicate(timeout=30)
    busy = (f"xraybatch ingest: error: {out} is being written by pid {holder.pid} on "
            f"{os.uname().nodename}; wait for that ingest to finish")
    for flag, (code, err) in outcome.items():
        assert code == 2 and err.strip() == busy, (flag, err)
    gate.touch()
    _, err = holder.communicate(timeout=60)
    assert holder.returncode == 0, err
    assert_same_store(open_group(out), reference)
    assert not (out / store.LOCK_NAME).exists()


def test_lock_is_exclusive_and_released(tmp_path):
    ref = StoreRef(str(tmp_path / "out.zarr"))
    with (lock.locked(ref), pytest.raises(StoreError, match=r"is being written by pid \d+"),
          lock.locked(ref)):
        pass
    with lock.locked(ref):  # released, and a new holder gets it
        assert (tmp_path / "out.zarr" / store.LOCK_NAME).exists()
    assert not (tmp_path / "out.zarr" / store.LOCK_NAME).exists()


def test_interrupted_overwrite_never_reads_complete(synth_small, reference, tmp_path,
                                                     monkeypatch):
    out = tmp_path / "out.zarr"
    shutil.copytree(reference.store.root, out)
    rmtree = shutil.rmtree

    def interrupted(path, *args, **kwargs):  # Ctrl-C once the first array is deleted
        rmtree(path, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(store.layout.shutil, "rmtree", interrupted)
    with pytest.raises(KeyboardInterrupt):
        xraybatch.ingest(synth_small, out, size=SIZE, chunk=CHUNK, overwrite=True)
    monkeypatch.undo()
    with pytest.raises(StoreError, match="creation was interrupted"):
        xraybatch.open(str(out))
    xraybatch.ingest(synth_small, out, size=SIZE, chunk=CHUNK, resume=True)
    assert_same_store(open_group(out), reference)

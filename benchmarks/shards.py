"""Sharded images (one inner chunk per image) against the whole-chunk layout they replaced.

Two stores of the same images (SRC linked ``--replicate`` times): ``images`` sharded as
ingest writes it now, and as before (one plain chunk file, bytes + CRC-32C, per chunk task:
the child process patches ``xraybatch.store.layout._images_layout``). Measured: ingest and
verify, each in a fresh process, layouts alternating over ``--rounds`` (wall, CPU of the
call and of the process); in-process, ``--repeat`` times in a random order each round:
one chunk's ``zarrio.encode_chunk``, ``zarrio.read_chunks`` and zarr's ``array[a:b]`` (also
with ``codec_pipeline.batch_size`` = chunk), and 32 random rows over 8 chunks by
``shards.RowFiles``, zarr's ``get_orthogonal_selection`` and the old loader's way (8 whole
chunks by ``zarrio.read_chunks``). Medians, ratios, machine and load average (start, end):
OUT/shards.json and OUT/shards.md (also printed).

    python benchmarks/shards.py ../shared/data/chest_xray_sample --replicate 6 --out /tmp/sb
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import machine, replicate, warm_cache  # noqa: E402

LAYOUTS = ("sharded", "whole-chunk")
ROWS, SPREAD = 32, 8  # random rows, over this many chunks


# --- ingest and verify, each in a fresh process -------------------------------------------


def child(spec: dict[str, Any]) -> None:
    """Run one ingest or verify (in this fresh process); print its times as JSON."""
    from zarr.codecs import Crc32cCodec

    import xraybatch
    from xraybatch.store import layout

    if spec["layout"] == "whole-chunk":
        layout._images_layout = lambda size, chunk, checksums: dict(
            chunks=(chunk, size, size), compressors=Crc32cCodec())
    # xraybatch imports its modules on first use: import them before the clock, both layouts.
    ingest, verify = xraybatch.ingest, xraybatch.verify
    t0, c0 = time.perf_counter(), _cpu(resource.RUSAGE_SELF)
    if spec["job"] == "ingest":
        n = ingest(spec["src"], spec["out"], size=spec["size"], chunk=spec["chunk"]).n_images
    else:
        result = verify(spec["out"])
        if not result.ok:
            raise SystemExit(f"verify failed on {spec['out']}: {result.problems[:3]}")
        n = result.images_checked
    print(json.dumps({"seconds": time.perf_counter() - t0, "n": n,
                      "cpu_seconds": _cpu(resource.RUSAGE_SELF) - c0}))


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def in_child(spec: dict[str, Any]) -> dict[str, float]:
    c0 = _cpu(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{spec['job']} ({spec['layout']}) failed:\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**result, "process_cpu_seconds": _cpu(resource.RUSAGE_CHILDREN) - c0}


def alternated(job: str, stores: dict[str, str], rounds: int, warmup: int, **spec: Any
               ) -> dict[str, Any]:
    """``job`` on each layout after ``warmup`` untimed rounds (page cache, first imports),
    the order swapped every round; medians and per-round ratios."""
    runs: dict[str, list[dict]] = {name: [] for name in LAYOUTS}
    for r in range(-warmup, rounds):
        for name in (LAYOUTS if r % 2 == 0 else LAYOUTS[::-1]):
            if job == "ingest":
                shutil.rmtree(stores[name], ignore_errors=True)
            result = in_child({"job": job, "layout": name, "out": stores[name], **spec})
            if r >= 0:
                runs[name].append(result)
    medians = {name: {k: statistics.median(x[k] for x in v) for k in v[0]}
               for name, v in runs.items()}
    ratios = [{k: s[k] / w[k] for k in ("seconds", "cpu_seconds")}
              for s, w in zip(runs["sharded"], runs["whole-chunk"], strict=True)]
    return {"medians": medians, "ratios": ratios, "runs": runs}


# --- in-process costs ----------------------------------------------------------------------


def timed(cases: dict[str, Any], repeat: int) -> dict[str, float]:
    """Milliseconds per call of each case, the cases interleaved in a new random order every
    round (a fixed order would always run the same case after a cache-flushing one), medians
    of ``repeat``."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    rng = np.random.default_rng(1)
    for r in range(repeat + 1):  # the first round warms up, untimed
        for name in rng.permutation(list(cases)).tolist():
            t0 = time.perf_counter()
            cases[name](r)
            if r:
                times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(v) for name, v in times.items()}


def chunk_cases(arrays: dict[str, Any]) -> dict[str, Any]:
    import zarr

    from xraybatch import zarrio

    rows = zarrio.rows_per_chunk(arrays["sharded"]._async_array)
    values = arrays["sharded"][:rows]

    def zarr_batched(_: int) -> Any:
        with zarr.config.set({"codec_pipeline.batch_size": rows}):
            return arrays["sharded"][:rows]

    cases: dict[str, Any] = {}
    for name, array in arrays.items():
        a = array._async_array
        cases[f"xraybatch encode (zarrio.encode_chunk)|{name}"] = (
            lambda _, a=a: zarrio.encode_chunk(a, 0, values))
        cases[f"xraybatch read + decode (zarrio.read_chunks)|{name}"] = (
            lambda _, a=a: zarrio.read_chunks([(a, (0, 0, 0))]))
        cases[f"zarr array[0:{rows}]|{name}"] = lambda _, array=array: array[:rows]
    cases[f"zarr array[0:{rows}], codec_pipeline.batch_size {rows}|sharded"] = zarr_batched
    return cases


def row_sets(n: int, rows: int, repeat: int) -> list[np.ndarray]:
    """``repeat + 1`` sorted sets of ROWS rows: ROWS / SPREAD in each of SPREAD chunks."""
    rng, per = np.random.default_rng(0), ROWS // SPREAD
    full = [c for c in range(-(-n // rows)) if min(rows, n - c * rows) >= per]
    return [np.sort(np.concatenate([
        c * rows + rng.choice(min(rows, n - c * rows), size=per, replace=False)
        for c in rng.choice(full, size=min(SPREAD, len(full)), replace=False)]))
        for _ in range(repeat + 1)]


def row_cases(arrays: dict[str, Any], sets: list[np.ndarray]) -> dict[str, Any]:
    from xraybatch import shards, zarrio

    sharded, plain = arrays["sharded"], arrays["whole-chunk"]
    rows = zarrio.rows_per_chunk(plain._async_array)
    kept = shards.RowFiles.of(sharded._async_array)
    out = np.empty((ROWS, *sharded.shape[1:]), np.uint8)

    def old_loader(r: int) -> np.ndarray:
        chunks = np.unique(sets[r] // rows).tolist()
        blocks = dict(zip(chunks, zarrio.read_chunks(
            [(plain._async_array, (c, 0, 0)) for c in chunks]), strict=True))
        for i, row in enumerate(sets[r].tolist()):
            out[i] = blocks[row // rows][row % rows]
        return out

    return {
        "shards.RowFiles.read_into, indexes kept (loader)|sharded":
            lambda r: kept.read_into(sets[r], out) or out,
        "shards.RowFiles.read_into, fresh reader (reads 8 indexes)|sharded":
            lambda r: shards.RowFiles.of(sharded._async_array).read_into(sets[r], out) or out,
        "zarr get_orthogonal_selection|sharded":
            lambda r: sharded.get_orthogonal_selection((sets[r], slice(None), slice(None))),
        "zarr get_orthogonal_selection|whole-chunk":
            lambda r: plain.get_orthogonal_selection((sets[r], slice(None), slice(None))),
        "old loader: 8 whole chunks (zarrio.read_chunks), 32 rows copied|whole-chunk":
            old_loader,
    }


def check(cases: dict[str, Any], expected: np.ndarray) -> dict[str, Any]:
    """``cases``, once each has read ``expected`` (the encode cases only run)."""
    for name, call in cases.items():
        got = call(0)
        if "encode" not in name and not np.array_equal(
                got[0] if isinstance(got, list) else got, expected):
            raise SystemExit(f"{name} read other values than zarr")
    return cases


def in_process(stores: dict[str, str], repeat: int) -> dict[str, Any]:
    import zarr

    arrays = {n: zarr.open_array(stores[n], path="images", mode="r") for n in LAYOUTS}
    assert arrays["sharded"].shards is not None and arrays["whole-chunk"].shards is None
    truth = arrays["whole-chunk"][:]
    if not np.array_equal(arrays["sharded"][:], truth):
        raise SystemExit("the two stores hold other images")
    rows = arrays["whole-chunk"].chunks[0]
    sets = row_sets(len(truth), rows, repeat)
    return {"chunk_ms": timed(check(chunk_cases(arrays), truth[:rows]), repeat),
            "rows_ms": timed(check(row_cases(arrays, sets), truth[sets[0]]), repeat)}


# --- report --------------------------------------------------------------------------------


def markdown(res: dict[str, Any]) -> str:
    m, load = res["machine"], lambda k: ", ".join(f"{x:.2f}" for x in res["machine"][k])
    lines = [f"{m['cores']} cores ({m['cpu']}), Python {m['python']}, zarr "
             f"{m['versions']['zarr']}; {m['date']}; {res['n']:,} images {res['size']}x"
             f"{res['size']}, chunks of {res['chunk']}; load average {load('load_avg_start')} "
             f"at the start, {load('load_avg_end')} at the end", ""]
    for job in ("ingest", "verify"):
        r, ratios = res[job]["medians"], res[job]["ratios"]
        lines += [f"**{job}** (fresh process each, median of {res['rounds']} alternating "
                  "rounds)", "", "| layout | s | CPU s (call) | CPU s (process) |",
                  "|---|--:|--:|--:|",
                  *(f"| {n} | {r[n]['seconds']:.2f} | {r[n]['cpu_seconds']:.2f} | "
                    f"{r[n]['process_cpu_seconds']:.2f} |" for n in LAYOUTS),
                  "", "sharded / whole-chunk per round: wall " + ", ".join(
                      f"{x['seconds']:.3f}" for x in ratios) + "; CPU " + ", ".join(
                      f"{x['cpu_seconds']:.3f}" for x in ratios), ""]
    for key, title in (("chunk_ms", "One chunk"), ("rows_ms", f"{ROWS} random rows over "
                                                              f"{SPREAD} chunks")):
        ops: dict[str, dict[str, float]] = {}
        for name, ms in res[key].items():
            op, layout = name.rsplit("|", 1)
            ops.setdefault(op, {})[layout] = ms
        lines += [f"**{title}** (ms, median of {res['repeat']}, interleaved)", "",
                  "| operation | sharded | whole-chunk | sharded / whole-chunk |",
                  "|---|--:|--:|--:|"]
        for op, v in ops.items():
            cells = [f"{v[k]:.2f}" if k in v else "-" for k in LAYOUTS]
            ratio = f"{v['sharded'] / v['whole-chunk']:.2f}" if len(v) == 2 else "-"
            lines.append(f"| {op} | {' | '.join(cells)} | {ratio} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(json.loads(argv[1]))
        return 0
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  python benchmarks/shards.py ../shared/data/chest_xray_sample "
               "--replicate 6 --out /tmp/shardbench")
    p.add_argument("src", help="folder of images in class folders")
    p.add_argument("--replicate", type=int, default=1, metavar="K",
                   help="link every file of SRC K times (1)")
    p.add_argument("--rounds", type=int, default=3, help="ingest and verify rounds (3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds before them (1)")
    p.add_argument("--repeat", type=int, default=51, help="repetitions in-process (51)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--chunk", type=int, default=128, help="images per chunk task (128)")
    p.add_argument("--out", default="bench-shards", help="folder for shards.json and .md")
    p.add_argument("--tmp", default=None, help="folder for the stores (default: a temp dir)")
    args = p.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="xrb-shards-", dir=args.tmp)
    try:
        src = args.src
        if args.replicate > 1:
            src = replicate(src, os.path.join(tmp, "replicated"), args.replicate)
        res = {"machine": machine(), "rounds": args.rounds, "repeat": args.repeat,
               "size": args.size, "chunk": args.chunk}
        warm_cache(src)
        stores = {n: os.path.join(tmp, f"{n}.zarr") for n in LAYOUTS}
        res["ingest"] = alternated("ingest", stores, args.rounds, args.warmup, src=src,
                                   size=args.size, chunk=args.chunk)
        res["n"] = res["ingest"]["medians"]["sharded"]["n"]
        res.update(in_process(stores, args.repeat))
        res["verify"] = alternated("verify", stores, args.rounds, args.warmup)
        res["machine"]["load_avg_end"] = os.getloadavg()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(args.out, exist_ok=True)
    Path(args.out, "shards.json").write_text(json.dumps(res, indent=1, default=str))
    Path(args.out, "shards.md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

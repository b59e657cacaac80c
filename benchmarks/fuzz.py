"""The long fuzzing run: >= 100,000 structure-aware cases over JPEG, PNG, DICOM, CSV and Parquet.

The same harness as the suite's smoke run (tests/fuzzing.py, tests/test_fuzz.py), with other
case numbers: one worker process, each case bounded by ``--timeout`` seconds. Prints the
figures of benchmarks/README.md ("Fuzzing"): cases per format, outcomes per reason code, how
many the reference decoders refuse, the slowest case, the worker's peak RSS, and the
tracebacks, hangs, crashes and invalid images stored as valid (all must be 0). A failing
case's bytes are written to ``--failures`` with a minimized copy (the regression-test input).

    python benchmarks/fuzz.py                       # 100,000 cases, seed 0
    python benchmarks/fuzz.py --cases 5000 --seed 3 --json fuzz.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import fuzzing  # noqa: E402  (tests/fuzzing.py: the harness the suite uses)


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _save_failure(runner: fuzzing.Runner, out: fuzzing.Outcome, seed: int, folder: Path
                  ) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{out.fmt}_{seed}_{out.case}"
    (folder / f"{name}.txt").write_text("\n\n".join(out.problems))
    if out.fmt not in fuzzing.IMAGE_FORMATS:  # tables: rerun the case by its number
        return
    maker_bytes = fuzzing.image_case(out.fmt, fuzzing.SEEDS[out.fmt](), fuzzing.RandomChooser(
        fuzzing._case_rng_seed(seed, out.fmt, out.case)))
    (folder / f"{name}.bin").write_bytes(maker_bytes)
    kind = out.problems[0].split(":")[0]
    if kind in ("hang", "crash"):  # each try would cost the timeout
        return
    small = fuzzing.minimize(maker_bytes, lambda d: any(
        p.split(":")[0] == kind for p in runner.run(out.fmt, -1, d).problems))
    (folder / f"{name}.min.bin").write_bytes(small)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0, help="first case index per format")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds per case")
    parser.add_argument("--formats", default=",".join(fuzzing.FORMATS))
    parser.add_argument("--image-turns", type=int, default=20,
                        help="cases of each image format per case of each table format")
    parser.add_argument("--failures", type=Path, default=Path("fuzz-failures"))
    parser.add_argument("--json", type=Path, help="write the figures here as well")
    args = parser.parse_args(argv)

    cases = fuzzing.schedule(args.cases, args.formats.split(","), args.start, args.image_turns)
    print(f"{len(cases)} cases, seed {args.seed}, timeout {args.timeout} s; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load {_load()}", flush=True)
    report = fuzzing.Report()
    t0 = time.perf_counter()
    with fuzzing.Runner(seed=args.seed, timeout=args.timeout) as runner:
        for i, (fmt, index) in enumerate(cases, 1):
            out = runner.run(fmt, index)
            report.add(out)
            if out.problems:
                print(f"FAILURE {fmt} case {index}: {out.problems[0][-300:]}", flush=True)
                try:
                    _save_failure(runner, out, args.seed, args.failures)
                except Exception as e:  # a harness error: the case is reported anyway
                    print(f"  (its bytes could not be saved: {e!r})", flush=True)
            if i % 5000 == 0:
                print(f"{i} cases in {time.perf_counter() - t0:.0f} s, {len(report.failures)} "
                      f"failures, load {_load()}", flush=True)
        report.peak_rss_mb = runner.peak_rss_mb
    figures = _figures(report, time.perf_counter() - t0)
    print(json.dumps(figures, indent=1))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 1 if report.failures else 0


def _figures(report: fuzzing.Report, seconds: float) -> dict:
    outcomes: dict[str, dict[str, int]] = {}
    for (fmt, outcome), n in sorted(report.outcomes.items()):
        outcomes.setdefault(fmt, {})[outcome] = n
    kinds = Counter(p.split(":")[0] for f in report.failures for p in f.problems)
    slow = report.slowest
    return {
        "cases": sum(report.cases.values()), "per_format": dict(report.cases),
        "outcomes": outcomes, "stored_checked_by_reference": dict(report.checked_by_reference),
        "failures": len(report.failures), "failure_kinds": dict(kinds),
        "tracebacks": sum(n for k, n in kinds.items() if "traceback" in k),
        "hangs": kinds.get("hang", 0), "crashes": kinds.get("crash", 0),
        "stored_but_refused": kinds.get("stored as valid, the reference refuses it", 0),
        "slowest": {"format": slow.fmt, "case": slow.case, "seconds": round(slow.seconds, 3),
                    "outcome": slow.ingest} if slow else None,
        "mean_ms_per_format": {f: round(1000 * sum(o.seconds for o in report.all
                                                   if o.fmt == f) / n, 2)
                               for f, n in report.cases.items()},
        "peak_rss_mb": round(report.peak_rss_mb, 1),
        "peak_rss_set_by": (f"{report.peak_case.fmt} case {report.peak_case.case} "
                            f"({report.peak_case.ingest})") if report.peak_case else None,
        "seconds": round(seconds, 1),
        "cases_per_second": round(sum(report.cases.values()) / seconds, 1),
        "load_after": _load(), "python": platform.python_version(),
    }


if __name__ == "__main__":
    sys.exit(main())

"""Shared fixtures: the real Kermany sample (skipped when absent) and small synthetic sets."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from xraybatch.synth import synth_dataset

REAL_SAMPLE = Path(__file__).resolve().parents[1].parent / "shared/data/chest_xray_sample"


def benchmark_module(name: str):
    """``benchmarks/NAME.py`` loaded as the module ``bench_NAME`` (a folder of scripts, not a
    package; nothing is added to ``sys.path``)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def real_sample() -> Path:
    """The 248 real chest X-rays in ../shared/data (never copied into the repository)."""
    if not REAL_SAMPLE.is_dir():
        pytest.skip(f"real Kermany sample not found at {REAL_SAMPLE} "
                    "(see ../shared/data/README.md)")
    return REAL_SAMPLE


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 synthetic X-rays at quarter size: fast, but with every quirk of the generator.

    Session-scoped and shared: tests must not modify it (copy it first, see ``synth_copy``).
    """
    root = tmp_path_factory.mktemp("synth") / "chest_xray"
    synth_dataset(root, n=60, seed=7, scale=0.25, workers=1)
    return root


@pytest.fixture
def synth_copy(synth_small: Path, tmp_path: Path) -> Path:
    """A private copy of ``synth_small`` that a test may damage."""
    dst = tmp_path / "chest_xray"
    shutil.copytree(synth_small, dst)
    return dst

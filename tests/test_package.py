"""The package's import surface: --help without heavy imports, lazy public names."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("dask", "distributed", "cv2", "zarr", "pandas")
PROBE = """
import json, sys
from xraybatch.cli import main
try:
    main({argv!r})
except SystemExit as e:
    assert e.code == 0, e.code
print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}})))
"""


@pytest.mark.parametrize("argv", [["--help"], ["ingest", "--help"], ["--version"]])
def test_help_does_not_import_heavy_modules(argv: list[str]) -> None:
    run = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    loaded = set(json.loads(run.stdout.splitlines()[-1]))
    assert "xraybatch" in loaded and not loaded & set(HEAVY)


def test_public_names_are_the_functions() -> None:
    """Importing the submodules xraybatch.ingest / .scan must not hide the functions."""
    import xraybatch
    import xraybatch.ingest
    import xraybatch.scan
    from xraybatch import ingest, scan

    assert callable(xraybatch.ingest) and xraybatch.ingest is ingest
    assert xraybatch.ingest.__module__ == "xraybatch.ingest"
    assert callable(xraybatch.scan) and xraybatch.scan is scan
    assert sys.modules["xraybatch.ingest"].ingest is ingest
    assert set(xraybatch.__all__) <= set(dir(xraybatch))
    for name in xraybatch.__all__:
        assert getattr(xraybatch, name) is not None
    with pytest.raises(AttributeError):
        xraybatch.no_such_name  # noqa: B018

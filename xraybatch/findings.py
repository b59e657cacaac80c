"""Multi-label findings: the values of a findings matrix and how a row of it reads as text.

Shared by the table reader (which makes the matrix) and the store (which keeps it), so that
neither imports the other.
"""

from __future__ import annotations

import numpy as np

#: Findings matrix values, as CF flags (``findings`` array attributes) and in statistics.
FINDING_FLAGS = {-2: "not_stated", -1: "uncertain", 0: "negative", 1: "positive"}


def joined(matrix: np.ndarray, classes: list[str]) -> np.ndarray:
    """The positive findings of each row as ``A|B`` ("" for none), for the manifest.

    Examples
    --------
    >>> joined(np.array([[1, 0, 1], [0, -1, -2]]), ["Edema", "Mass", "Nodule"]).tolist()
    ['Edema|Nodule', '']
    """
    names = np.asarray(classes, dtype=object)
    positive = matrix == 1
    if len(classes) < 63:  # each set of findings as one integer: join each distinct set once
        sets, inverse = np.unique(positive @ (1 << np.arange(len(classes), dtype=np.int64)),
                                  return_inverse=True)
        bits = (sets[:, None] >> np.arange(len(classes))) & 1 == 1
    else:
        bits, inverse = np.unique(positive, axis=0, return_inverse=True)
    return np.array(["|".join(names[b]) for b in bits], dtype=object)[inverse.ravel()]

"""Synthetic NIH ChestX-ray14 and CheXpert layouts: real column layouts, tiny images.

The tables are written with the public files' exact headers (NIH's quirky
``OriginalImage[Width,Height]`` header that splits into two columns included); the images
are small random grayscale PNGs (NIH) and JPEGs (CheXpert), so ingest stays fast.
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

NIH_FINDINGS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion",
                "Emphysema", "Fibrosis", "Hernia", "Infiltration", "Mass", "Nodule",
                "Pleural_Thickening", "Pneumonia", "Pneumothorax"]
NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
              "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")
CHEXPERT_FINDINGS = ["No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly",
                     "Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia",
                     "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
                     "Fracture", "Support Devices"]
CHEXPERT_HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_FINDINGS]


def image(rng: np.random.Generator, ext: str) -> bytes:
    h, w = (int(x) for x in rng.integers(40, 90, 2))
    base = rng.integers(0, 256)
    pixels = np.clip(base + rng.normal(0, 40, (h, w)), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(ext, pixels)
    assert ok
    return buf.tobytes()


def nih(root: Path, n: int = 48, seed: int = 0) -> Path:
    """``root/images_00K/images/*.png`` and ``root/Data_Entry_2017.csv``; the table path."""
    rng = np.random.default_rng(seed)
    lines = [NIH_HEADER]
    for i in range(n):
        patient = 1 + i // 3
        name = f"{patient:08d}_{i % 3:03d}.png"
        folder = root / f"images_{1 + i % 2:03d}" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(image(rng, ".png"))
        k = int(rng.integers(0, 4))
        labels = "|".join(sorted(rng.choice(NIH_FINDINGS, k, replace=False))) or "No Finding"
        view = "PA" if i % 2 else "AP"
        lines.append(f"{name},{labels},{i % 3},{patient},{40 + i % 30},M,{view},2500,2048,"
                     "0.143,0.143")
    table = root / "Data_Entry_2017.csv"
    table.write_text("\n".join(lines) + "\n")
    return table


def chexpert(parent: Path, n: int = 48, seed: int = 1, name: str = "train") -> Path:
    """``parent/CheXpert-v1.0-small/{name}/patientNNNNN/studyK/view1_frontal.jpg`` and its
    ``{name}.csv`` (paths start with the dataset folder, as in the real file)."""
    rng = np.random.default_rng(seed)
    top = parent / "CheXpert-v1.0-small"
    rows = []
    for i in range(n):
        rel = f"CheXpert-v1.0-small/{name}/patient{1 + i // 2:05d}/study{1 + i % 2}/" \
              "view1_frontal.jpg"
        (parent / rel).parent.mkdir(parents=True, exist_ok=True)
        (parent / rel).write_bytes(image(rng, ".jpg"))
        values = rng.choice(["1.0", "0.0", "-1.0", ""], len(CHEXPERT_FINDINGS),
                            p=[0.25, 0.2, 0.1, 0.45])
        rows.append([rel, "Female", str(50 + i % 20), "Frontal", "AP", *values])
    table = top / f"{name}.csv"
    with open(table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CHEXPERT_HEADER)
        writer.writerows(rows)
    return table

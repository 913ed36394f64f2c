"""CamVid, 11-class SegNet version: class names, colours and the void label, in one place."""

from __future__ import annotations

CLASSES = (
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree",
    "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
)  # fmt: skip
# Label value of unlabelled pixels in the annotation PNGs.
VOID = 11
# The dataset's usual colours (SegNet tutorial), one RGB triple per class.
PALETTE = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
    (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
)  # fmt: skip

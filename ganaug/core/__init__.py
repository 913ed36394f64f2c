"""Framework-free PyTorch building blocks (no detectron2 / mmseg imports here)."""

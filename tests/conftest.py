"""Shared fixtures: the real sample data under the data root (see ganaug.data_root)."""

from __future__ import annotations

import os

import pytest
import torch

from ganaug.data_root import dataset_dir

# Two cores: keep intra-op threads from oversubscribing when tests spawn processes.
torch.set_num_threads(int(os.environ.get("GANAUG_TEST_THREADS", "2")))


@pytest.fixture(scope="session")
def camvid_dir():
    return dataset_dir("camvid")


@pytest.fixture(scope="session")
def coco128_dir():
    return dataset_dir("coco128")


@pytest.fixture(scope="session")
def magnetic_tile_dir():
    return dataset_dir("magnetic-tile")

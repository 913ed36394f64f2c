"""ganaug.atomic: result files appear whole or not at all."""

from __future__ import annotations

import os

import pytest

from ganaug.atomic import write_text_atomic


def test_write_text_atomic_replaces_whole_file_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "metrics.json"
    assert write_text_atomic(path, '{"a": 1}') == path  # creates the parent folder
    write_text_atomic(path, '{"a": 2}')
    assert path.read_text() == '{"a": 2}'
    assert os.listdir(path.parent) == ["metrics.json"]  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as a plain open() would


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "metrics.json"
    write_text_atomic(path, "old")
    with pytest.raises(TypeError):
        write_text_atomic(path, None)  # not text: the write fails half-way
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["metrics.json"]

"""The ``ganaug`` CLI imports only the module of the command being run."""

from __future__ import annotations

import subprocess
import sys

from ganaug.cli import SUBCOMMANDS, SUMMARIES, _selected_command, build_parser


def test_help_imports_no_command_module():
    code = (
        "import sys\n"
        "from ganaug.cli import build_parser\n"
        "build_parser(None).format_help()\n"
        "heavy = [m for m in ('torch', 'mmengine', 'detectron2', 'timm') if m in sys.modules]\n"
        "print(','.join(heavy) or 'none')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "none"


def test_every_command_listed_and_importable():
    assert set(SUMMARIES) == set(SUBCOMMANDS)
    parser = build_parser("*")
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == set(SUBCOMMANDS)
    for name, p in sub.choices.items():
        # An import failure would leave the "(unavailable: ...)" placeholder without options.
        assert any(a.option_strings and a.dest != "help" for a in p._actions), name


def test_selected_command():
    assert _selected_command(["-v", "compare", "a", "b"]) == "compare"
    assert _selected_command(["--help"]) is None
    assert _selected_command(["nope", "compare"]) is None


def test_bad_input_is_one_line_without_traceback(tmp_path, capsys):
    from ganaug.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {variant: baseline, asdn_stage1_iter: 3}\n")
    assert main(["det-train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ganaug det-train: error: config ") and "asdn_stage1_iter" in err
    assert "Traceback" not in err
    missing = tmp_path / "missing.yaml"
    assert main(["det-train", "--config", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err

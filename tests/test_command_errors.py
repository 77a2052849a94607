"""A user's mistake is one line on stderr and exit code 2 from every hslm command, never a
traceback: each entry point is wrapped by `hslm.apps.common.command`, which reports it."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from hslm.apps import common

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_usage_error_is_one_line_and_exit_code_2(capsys):
    @common.command
    def main():
        raise common.UsageError("no such file: corpus.txt")

    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: no such file: corpus.txt\n"


def test_every_entry_point_is_a_command():
    tomllib = pytest.importorskip("tomllib")
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts
    for name, target in scripts.items():
        module, _, function = target.partition(":")
        entry = getattr(importlib.import_module(module), function)
        assert getattr(entry, "__wrapped__", None) is not None, f"{name} is not wrapped by command"


def test_a_bad_model_folder_via_the_entry_point_is_one_line(tmp_path, capsys):
    from hslm.apps import export

    with pytest.raises(SystemExit) as exit_info:
        export.main([str(tmp_path / "missing"), "--gguf", "q8_0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1

"""A missing optional package is a user's install choice: one line naming the extra, never a
traceback (the extras are in pyproject.toml)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from hslm.apps import common, data

REPO_ROOT = Path(__file__).resolve().parent.parent


def hide(monkeypatch, *modules: str) -> None:
    """Make `import module` fail as it does where the package is not installed."""
    for name in list(sys.modules):
        if name.partition(".")[0] in modules:
            monkeypatch.delitem(sys.modules, name)
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)


def test_command_without_its_extra_names_the_extra(monkeypatch, tmp_path, capsys):
    hide(monkeypatch, "datatrove")
    with pytest.raises(SystemExit) as exit_info:
        data.main(["prepare", str(REPO_ROOT / "data" / "sample"), "--output", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'hslm[data]'" in err and "datatrove" in err


def test_other_import_errors_are_not_hidden(monkeypatch):
    @common.command
    def main():
        import hslm_no_such_module  # noqa: F401

    with pytest.raises(ModuleNotFoundError):
        main()


def test_guided_decoding_without_llguidance_is_a_guide_error(monkeypatch):
    from hslm.runtime.guided import GuideError, grammar_for

    hide(monkeypatch, "llguidance")
    with pytest.raises(GuideError, match=r"hslm\[guided\]"):
        grammar_for(regex="[0-9]+")


def test_every_optional_module_maps_to_an_extra_that_exists():
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert set(common.EXTRA_OF_MODULE.values()) <= set(extras)
    assert "all" in extras

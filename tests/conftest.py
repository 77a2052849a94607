"""Fixtures shared by the test files: the real Hindi text and a tokenizer trained on it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds (deselect with "
                                       "-m 'not slow')")


@pytest.fixture(scope="session")
def hindi_data_dir() -> Path:
    """The folder of real Hindi / Hinglish *.txt files: ../shared/data/hindi beside the
    repository, or $HSLM_HINDI_DATA."""
    path = Path(os.environ.get("HSLM_HINDI_DATA", REPO_ROOT.parent / "shared" / "data" / "hindi"))
    if not any(path.glob("*.txt")):
        pytest.skip(f"no Hindi text (*.txt) in {path}; set HSLM_HINDI_DATA to such a folder")
    return path


@pytest.fixture(scope="session")
def trained_tokenizer_dir(hindi_data_dir, tmp_path_factory) -> Path:
    """A folder with an 8,000-token tokenizer trained on every 10th line of each data file
    (about 2 MB of text; under a second to train)."""
    from hslm.tokenizer import read_lines
    from hslm.tokenizer_train import train_tokenizer

    sample_dir = tmp_path_factory.mktemp("tokenizer-sample")
    for path in sorted(hindi_data_dir.glob("*.txt")):
        lines = list(read_lines(path))[::10]
        (sample_dir / path.name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    output_dir = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(sorted(sample_dir.glob("*.txt")), output_dir, vocab_size=8_000)
    return output_dir


@pytest.fixture(scope="session")
def trained_tokenizer(trained_tokenizer_dir):
    """The tokenizer of `trained_tokenizer_dir`, loaded."""
    from hslm.tokenizer import Tokenizer

    return Tokenizer.load(trained_tokenizer_dir)


@pytest.fixture(scope="session")
def shard_dir(trained_tokenizer, hindi_data_dir, tmp_path_factory) -> Path:
    """Token shards (train + 10% validation) of 800 real Hindi story sentences."""
    from hslm.data.shards import write_shards_from_texts

    lines = (hindi_data_dir / "stories_bhaav_sentences.txt").read_text("utf-8").splitlines()[:800]
    folder = tmp_path_factory.mktemp("shards")
    write_shards_from_texts(lines, trained_tokenizer, folder, val_fraction=0.1)
    return folder



def _built_programs(arch: str | None, programs: tuple[str, ...] | None = None) -> Path:
    from hslm import native

    try:
        native.runner(arch or native.host_arch())
        return native.build(arch, targets=programs or native.PROGRAMS, say=lambda line: None)
    except native.ToolMissing as err:
        pytest.skip(str(err))


@pytest.fixture(scope="session")
def native_programs() -> Path:
    """llama.cpp's own programs for this machine (hslm-native build, once per run; a finished
    build under $HSLM_LLAMA_CPP_DIR is reused). Skipped only without a compiler or cmake."""
    return _built_programs(None)


@pytest.fixture(scope="session")
def arm_programs() -> Path:
    """llama-server and llama-perplexity cross-compiled for aarch64 (the ones the ARM tests
    run: CI's time), run under qemu. Skipped only without the cross toolchain, cmake or
    qemu-user."""
    return _built_programs("aarch64", ("llama-server", "llama-perplexity"))

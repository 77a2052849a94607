"""Which tokenizers give hslm's ids, on normalised and on raw text.

hslm encodes with `Tokenizer.encode` (normalise, then SentencePiece). The same vocabulary is
read by SentencePiece alone (tokenizer.model), `tokenizers` and transformers (tokenizer.json,
which carries hslm's normaliser), onnxruntime-genai's own tokenizer (tokenizer.json through
onnxruntime-extensions, which reads no normaliser) and llama.cpp (the GGUF file's vocabulary;
llama-cpp-python's `tokenize` is llama.cpp's tokenizer, which has no normaliser). Every line of
every data file is encoded three ways:

- normalised: `normalize(line)`, what an app that normalises first hands over;
- raw: the line as it is in the file;
- held-out-like raw: the line as web text often arrives, changed at random (seeded) the way
  `normalize` undoes: precomposed nukta letters, curly quotes, no-break spaces, zero-width
  characters and a BOM, pipes for dandas, doubled and trailing spaces.

A line counts as different when its ids differ from hslm's; "ids differing" counts hslm's ids
outside the longest matching blocks. Differing raw lines are sorted into the normalisation
rules they need. Special token names are encoded as text everywhere (hslm's rule).

    python benchmarks/tokenizer_parity.py [--data-dir DIR] [--tokenizer DIR]
        [--transformers-js DIR]

Without --tokenizer, an 8,000-token tokenizer is trained on every 10th line (the tests' and
the demo's size). Writes benchmarks/results/tokenizer_parity.{json,md}.
"""

from __future__ import annotations

import argparse
import difflib
import json
import platform
import random
import shutil
import subprocess
import tempfile
import time
import unicodedata
from pathlib import Path

from hslm.config import ModelConfig
from hslm.export.gguf import write_gguf
from hslm.export.onnx import write_folder_files
from hslm.model import Gemma3
from hslm.normalize import normalize
from hslm.tokenizer import HF_TOKENIZER_FILE, Tokenizer, read_lines
from hslm.tokenizer_train import train_tokenizer

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"

NUKTA = "\u093c"
PRECOMPOSED_NUKTA = {unicodedata.normalize("NFD", chr(c)): chr(c) for c in range(0x0958, 0x0960)}
CURLY = {'"': "\u201c\u201d", "'": "\u2018\u2019"}
OTHER_SPACES = "\u00a0\u202f\u2009\u3000"
INVISIBLE = "\u200b\ufeff\u00ad\u2060\u200e"


def held_out_like(line: str, rng: random.Random) -> str:
    """`line` with the changes web text typically carries (each with some probability)."""
    for decomposed, precomposed in PRECOMPOSED_NUKTA.items():
        line = line.replace(decomposed, precomposed)
    for straight, (left, right) in CURLY.items():
        parts = line.split(straight)
        line = parts[0] + "".join((left if i % 2 else right) + part
                                  for i, part in enumerate(parts[1:], start=1))
    words = line.split(" ")
    line = "".join(word + (rng.choice(OTHER_SPACES) if rng.random() < 0.05 else
                           "  " if rng.random() < 0.03 else " ")
                   for word in words[:-1]) + words[-1]
    if rng.random() < 0.3:
        line = line.replace("।", "|")
    if line and rng.random() < 0.2:
        cut = rng.randrange(len(line))
        line = line[:cut] + rng.choice(INVISIBLE) + line[cut:]
    if rng.random() < 0.05:
        line = "\ufeff" + line
    if rng.random() < 0.2:
        line += " "
    return line


RULES = {  # the normalisation a differing line needs, by what it contains
    "precomposed nukta letters (NFC)": lambda t: any(c in t for c in PRECOMPOSED_NUKTA.values())
    or unicodedata.normalize("NFC", t) != t,
    "curly quotes": lambda t: any(c in t for c in "\u2018\u2019\u201a\u201b\u201c\u201d\u201e\u201f"),
    "no-break and other spaces": lambda t: any(unicodedata.category(c) == "Zs" and c != " "
                                               for c in t),
    "zero-width, control and bidi characters": lambda t: any(
        unicodedata.category(c) in ("Cc", "Cf") and c not in "\t\n" for c in t),
    "pipes as dandas": lambda t: "|" in t and normalize(t).count("|") < t.count("|"),
    "space runs, tabs, trailing spaces": lambda t: "  " in t or "\t" in t or t != t.rstrip(),
    "space-free run over 100 symbols": lambda t: max(map(len, normalize(t).split(" "))) > 100,
}


def classify(texts: list[str]) -> dict[str, int]:
    counts = {rule: 0 for rule in RULES} | {"other": 0}
    for text in texts:
        matched = [rule for rule, test in RULES.items() if test(text)]
        for rule in matched or ["other"]:
            counts[rule] += 1
    return {rule: count for rule, count in counts.items() if count}


def compare(name: str, ids_of: dict, encode, texts: list[str],
            expected: list[list[int]]) -> dict:
    """How `encode`'s ids for `texts` differ from `expected`; keeps the ids in `ids_of`."""
    start = time.perf_counter()
    ids = ids_of[name] = encode(texts)
    seconds = time.perf_counter() - start
    different = [i for i, (ours, theirs) in enumerate(zip(expected, ids, strict=True))
                 if ours != theirs]
    ids_differing = sum(
        len(expected[i]) - sum(block.size for block in difflib.SequenceMatcher(
            None, expected[i], ids[i], autojunk=False).get_matching_blocks())
        for i in different)
    print(f"  {name}: {len(different):,} of {len(texts):,} lines differ ({seconds:.0f} s)",
          flush=True)
    return {"lines": len(texts), "lines_differing": len(different),
            "ids": sum(map(len, expected)), "ids_differing": ids_differing,
            "tokens": sum(map(len, ids)), "seconds": round(seconds, 1),
            "classes": classify([texts[i] for i in different]),
            "examples": [texts[i][:120] for i in different[:3]]}


def transformers_js(folder: Path, package_dir: Path, work_dir: Path):
    """transformers.js's tokenizer under Node, from `package_dir` (where
    `npm install --ignore-scripts @huggingface/transformers` was run)."""
    script = package_dir / "transformers_js_encode.mjs"
    shutil.copy(Path(__file__).parent / script.name, script)

    def encode(texts: list[str]) -> list[list[int]]:
        (work_dir / "texts.json").write_text(json.dumps(texts), encoding="utf-8")
        subprocess.run(["node", str(script), str(folder), str(work_dir / "texts.json"),
                        str(work_dir / "ids.json")], check=True)
        return json.loads((work_dir / "ids.json").read_text())
    return encode


def tokenizers_under_test(tokenizer: Tokenizer, work_dir: Path,
                          transformers_js_dir: Path | None) -> dict:
    """name -> function from texts to lists of ids, each tool as an app would use it."""
    import onnxruntime_genai as og
    import sentencepiece
    import tokenizers
    import transformers
    from llama_cpp import Llama

    folder = work_dir / "onnx-folder"  # an ONNX folder's tokenizer files and genai_config
    folder.mkdir()
    model = Gemma3(ModelConfig.preset("tiny", vocab_size=tokenizer.vocab_size))
    write_folder_files(folder, model, tokenizer)
    write_gguf(model, tokenizer, work_dir / "vocab.gguf", "f32")

    sp = sentencepiece.SentencePieceProcessor(model_proto=tokenizer.model_bytes)
    hf = tokenizers.Tokenizer.from_file(str(folder / HF_TOKENIZER_FILE))
    hf.encode_special_tokens = True
    auto = transformers.AutoTokenizer.from_pretrained(folder)
    genai = og.Tokenizer(str(folder))
    llama = Llama(str(work_dir / "vocab.gguf"), vocab_only=True, verbose=False)
    js = {"transformers.js AutoTokenizer": transformers_js(folder, transformers_js_dir, work_dir)
          } if transformers_js_dir else {}
    return {
        "SentencePiece (tokenizer.model)": lambda texts: sp.encode(texts),
        "tokenizers (tokenizer.json)": lambda texts: [
            e.ids for e in hf.encode_batch(texts, add_special_tokens=False)],
        "transformers AutoTokenizer": lambda texts: auto(
            texts, add_special_tokens=False, split_special_tokens=True)["input_ids"],
        "onnxruntime-genai og.Tokenizer": lambda texts: [
            genai.encode(text).tolist() for text in texts],
        "llama.cpp (GGUF vocabulary)": lambda texts: [
            llama.tokenize(text.encode("utf-8"), add_bos=False, special=False) for text in texts],
        **js,
    }


def byte_share(tokenizer: Tokenizer, ids: list[list[int]]) -> float:
    byte_ids = {i for i, (_, _, kind) in enumerate(tokenizer.vocabulary()) if kind == 6}
    total = sum(map(len, ids))
    return sum(token in byte_ids for line in ids for token in line) / total


def write_markdown(result: dict, path: Path) -> None:
    out = ["# Tokenizer parity: who gives hslm's ids", "",
           f"{result['lines']:,} lines of `{result['data_dir']}`, tokenizer of "
           f"{result['vocab_size']:,} tokens. A line differs when its ids differ from "
           "`Tokenizer.encode` (normalise, then SentencePiece).", ""]
    sets = list(result["sets"])
    out += ["| tokenizer | " + " | ".join(f"{s}: lines differing (ids)" for s in sets) + " |",
            "|---|" + "---|" * len(sets)]
    for name in result["sets"][sets[0]]["tokenizers"]:
        cells = []
        for s in sets:
            r = result["sets"][s]["tokenizers"][name]
            cells.append(f"{r['lines_differing']:,} ({r['ids_differing']:,} of {r['ids']:,})")
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    out += ["", "Lines changed by `normalize`: " + ", ".join(
        f"{s} {result['sets'][s]['lines_changed_by_normalize']:,}" for s in sets), ""]
    for s in sets:
        for name, r in result["sets"][s]["tokenizers"].items():
            if r["classes"]:
                out.append(f"- {s}, {name}: " + "; ".join(
                    f"{rule} {count:,}" for rule, count in r["classes"].items()))
    held = result["held_out_like_effect"]
    out += ["", "Held-out-like raw text through a tokenizer without normaliser (llama.cpp): "
            f"{held['byte_share_raw']:.1%} byte-fallback tokens and "
            f"{held['tokens_per_word_raw']:.3f} tokens/word, against "
            f"{held['byte_share_normalised']:.1%} and {held['tokens_per_word_normalised']:.3f} "
            "normalised.", ""]
    path.write_text("\n".join(out), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path,
                        default=REPO_ROOT.parent / "shared" / "data" / "hindi")
    parser.add_argument("--tokenizer", type=Path, help="a tokenizer folder (default: train one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--transformers-js", type=Path, metavar="DIR",
                        help="also transformers.js, installed in DIR with npm")
    args = parser.parse_args()
    files = sorted(args.data_dir.glob("*.txt"))
    lines = [line for path in files for line in read_lines(path)]
    with tempfile.TemporaryDirectory(prefix="hslm-tokenizer-parity-") as tmp:
        work_dir = Path(tmp)
        if args.tokenizer:
            tokenizer = Tokenizer.load(args.tokenizer)
        else:
            sample = work_dir / "sample"
            sample.mkdir()
            for path in files:
                (sample / path.name).write_text(
                    "\n".join(list(read_lines(path))[::10]) + "\n", encoding="utf-8")
            tokenizer = train_tokenizer(sorted(sample.glob("*.txt")), work_dir / "tokenizer",
                                        vocab_size=8_000)
        under_test = tokenizers_under_test(tokenizer, work_dir, args.transformers_js)
        rng = random.Random(args.seed)
        text_sets = {"normalised": [normalize(line) for line in lines], "raw": lines,
                     "held-out-like raw": [held_out_like(line, rng) for line in lines]}
        result = {"data_dir": str(args.data_dir), "lines": len(lines),
                  "vocab_size": tokenizer.vocab_size, "tokenizer_sha256": tokenizer.sha256,
                  "machine": platform.machine(), "sets": {}}
        for set_name, texts in text_sets.items():
            print(f"{set_name}:", flush=True)
            expected, ids_of = tokenizer.encode_batch(texts), {}
            result["sets"][set_name] = {
                "lines_changed_by_normalize": sum(normalize(t) != t for t in texts),
                "tokenizers": {name: compare(name, ids_of, encode, texts, expected)
                               for name, encode in under_test.items()}}
        held = text_sets["held-out-like raw"]
        raw_ids = ids_of["llama.cpp (GGUF vocabulary)"]  # no normaliser
        ours = expected
        words = sum(len(normalize(t).split()) for t in held)
        result["held_out_like_effect"] = {
            "byte_share_raw": byte_share(tokenizer, raw_ids),
            "byte_share_normalised": byte_share(tokenizer, ours),
            "tokens_per_word_raw": sum(map(len, raw_ids)) / words,
            "tokens_per_word_normalised": sum(map(len, ours)) / words}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tokenizer_parity.json").write_text(json.dumps(result, indent=2,
                                                              ensure_ascii=False) + "\n")
    write_markdown(result, RESULTS / "tokenizer_parity.md")
    print(f"wrote {RESULTS / 'tokenizer_parity.md'}")


if __name__ == "__main__":
    main()

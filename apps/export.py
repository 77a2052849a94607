"""hslm-export: turn an hslm model folder into files other runtimes load (GGUF for llama.cpp,
ONNX folders for ONNX Runtime)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from hslm.apps.common import UsageError, command, load_model_folder

GGUF_CHOICES = ("f32", "f16", "bf16", "q8_0", "q4", "q4_0", "iq4_nl", "q4_k_m", "iq3_s",
                "iq3_xxs", "iq2_s", "iq2_xs", "iq2_xxs")
ONNX_CHOICES = ("fp32", "int8", "int4")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hslm-export",
        description="Export an hslm model folder. --gguf writes a llama.cpp GGUF file with the "
                    "tokenizer, chat template, sliding/global layer layout and both RoPE bases "
                    "inside. f32/f16/bf16 are written directly; q8_0 and the 4-bit types are "
                    "made by llama.cpp's own quantizer. 'q4' is IQ4_NL, the best 4-bit type for "
                    "640-wide rows (K-quants need rows that are multiples of 256 and fall back). "
                    "--calibration computes an importance matrix on Hindi text (llama.cpp's "
                    "llama-imatrix, from hslm-native build) that llama-quantize weighs the "
                    "rounding errors by; the 3- and 2-bit IQ types need it. "
                    "--onnx writes a folder for ONNX Runtime / onnxruntime-genai / "
                    "onnxruntime-web: model.onnx, the tokenizer and genai_config.json; int8 and "
                    "int4 are block-wise weight-only quantizations (MatMulNBits).",
        epilog="examples: hslm-export runs/demo/model --gguf q4 --output runs/demo/model-q4.gguf; "
               "hslm-export runs/demo/model --gguf iq3_xxs --calibration hindi.txt; "
               "hslm-export runs/demo/model --onnx int4 --output runs/demo/onnx-int4")
    parser.add_argument("model", help="model folder")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--gguf", choices=GGUF_CHOICES, metavar="TYPE",
                        help=f"GGUF type: {', '.join(GGUF_CHOICES)}")
    target.add_argument("--onnx", choices=ONNX_CHOICES, metavar="TYPE",
                        help=f"ONNX folder of type: {', '.join(ONNX_CHOICES)}")
    parser.add_argument("--output", help="output file (GGUF, default: MODEL/model-TYPE.gguf) or "
                                         "folder (ONNX, default: MODEL/onnx-TYPE)")
    parser.add_argument("--embedding-type", choices=("f32", "f16", "q8_0", "q4_0", "iq4_nl"),
                        help="type of the token embedding (quantized types only; default: "
                             "llama.cpp's choice)")
    parser.add_argument("--calibration", nargs="+", metavar="TEXT",
                        help="Hindi text files to calibrate 4-bit and lower quantization with "
                             "(GGUF: an importance matrix; ONNX int4: the algorithms that use data)")
    parser.add_argument("--algorithm", metavar="NAME",
                        help="ONNX int4: how the 4-bit values are chosen: rtn (default), "
                             "rtn-asym, hqq, k_quant, gptq (needs --calibration)")
    parser.add_argument("--block-size", type=int, metavar="N",
                        help="ONNX int4/int8: weights per scale, 16, 32 (default), 64 or 128")
    parser.add_argument("--head-bits", type=int, choices=(4, 8), metavar="BITS",
                        help="ONNX int4: bits of the output head, 8 (default, as llama.cpp "
                             "keeps it in its 4-bit files) or 4")
    parser.add_argument("--imatrix-out", metavar="PATH",
                        help="GGUF: keep the importance matrix computed from --calibration here")
    parser.add_argument("--imatrix", metavar="PATH",
                        help="GGUF: quantize with this importance matrix (llama.cpp's format, "
                             "e.g. from --imatrix-out) instead of computing one")
    parser.add_argument("--threads", type=int, default=0, help="quantizer threads (0 = all)")
    parser.add_argument("--ollama", action="store_true",
                        help="also write an Ollama Modelfile (chat template, stop tokens, "
                             "sampling defaults) beside the GGUF: `ollama create NAME -f Modelfile`")
    return parser


def export_gguf(args) -> None:
    calibration = gguf_calibration(args)
    model, tokenizer = load_model_folder(args.model)
    output = write_gguf_file(args, model, tokenizer, calibration)
    if args.ollama:
        from hslm.export.ollama import write_modelfile

        print(f"wrote {write_modelfile(output, model.config.context_length)}")


def gguf_calibration(args) -> str | None:
    """The normalised calibration text of a GGUF export (None without --calibration), after
    every check that needs no model: a type that uses an importance matrix, the programs
    built, the files readable."""
    from hslm import native
    from hslm.quant.imatrix import PROGRAMS, calibration_text
    from hslm.quant.llama_cpp import (ALIASES, IGNORES_IMATRIX, NEEDS_IMATRIX, QUANT_TYPES,
                                      QuantizeError)

    name = ALIASES.get(args.gguf, args.gguf)
    if args.calibration and args.imatrix:
        raise UsageError("give --calibration (compute an importance matrix) or --imatrix (use "
                         "one), not both")
    if args.imatrix_out and not args.calibration:
        raise UsageError("--imatrix-out keeps the importance matrix computed from "
                         "--calibration TEXT...: give the calibration text")
    if not (args.calibration or args.imatrix):
        if name in NEEDS_IMATRIX:
            raise UsageError(f"{args.gguf} needs an importance matrix: give --calibration "
                             "TEXT... (Hindi text files) or --imatrix FILE")
        return None
    if name not in QUANT_TYPES or name in IGNORES_IMATRIX:
        raise UsageError(f"{args.gguf} does not use an importance matrix: --calibration and "
                         "--imatrix are for the 4-, 3- and 2-bit types")
    if args.imatrix and not Path(args.imatrix).is_file():
        raise UsageError(f"importance matrix not found: {args.imatrix}")
    if native.programs(needed=PROGRAMS) is None:
        raise UsageError("an importance matrix needs llama.cpp's llama-imatrix and "
                         "llama-quantize: build them with hslm-native build")
    if args.imatrix:
        return None
    try:
        return calibration_text(args.calibration)
    except QuantizeError as err:
        raise UsageError(str(err)) from None


def write_gguf_file(args, model, tokenizer, calibration: str | None = None) -> Path:
    from hslm.export.gguf import FILE_TYPES, GGUFExportError, write_gguf
    from hslm.quant.imatrix import compute_imatrix
    from hslm.quant.llama_cpp import LOW_BIT_TYPES, QuantizeError, quantize_gguf

    output = Path(args.output or Path(args.model) / f"model-{args.gguf}.gguf")
    name = Path(args.model).resolve().name
    try:
        if args.gguf in FILE_TYPES and args.embedding_type is None:
            write_gguf(model, tokenizer, output, args.gguf, name=name)
            print(f"wrote {output} ({args.gguf}, {output.stat().st_size / 1e6:.1f} MB)")
            return output
        if not output.parent.is_dir():
            raise UsageError(f"output folder does not exist: {output.parent}")
        with tempfile.TemporaryDirectory(dir=output.parent) as scratch:
            source = write_gguf(model, tokenizer, Path(scratch) / "model-f32.gguf", "f32", name=name)
            imatrix = args.imatrix
            if calibration is not None:
                context = model.config.context_length
                print(f"computing an importance matrix on {len(calibration):,} characters of "
                      f"calibration text (llama-imatrix, chunks of {context} tokens)...",
                      file=sys.stderr, flush=True)
                imatrix = compute_imatrix(source, calibration, tokenizer,
                                          args.imatrix_out or Path(scratch) / "imatrix.gguf",
                                          context, args.threads, say=progress)
                if args.imatrix_out:
                    print(f"wrote {imatrix} (importance matrix)", file=sys.stderr)
            report = quantize_gguf(source, output, args.gguf, args.embedding_type, args.threads,
                                   imatrix=imatrix, say=progress)
    except (GGUFExportError, QuantizeError) as err:
        raise UsageError(str(err)) from None
    print(f"wrote {report.summary()} ({output.stat().st_size / 1e6:.1f} MB)")
    if report.fallbacks and report.requested in LOW_BIT_TYPES:
        print(f"note: {len(report.fallbacks)} tensor(s) use other types than {report.requested}: "
              "llama.cpp's mix for the type, and IQ4_NL where rows are not multiples of 256 "
              "(every matrix reading the hidden state)", file=sys.stderr)
    elif report.fallbacks:
        print(f"warning: {len(report.fallbacks)} tensor(s) could not use {report.requested} and "
              "fell back to other types; q4 (IQ4_NL) applies everywhere", file=sys.stderr)
    return output


def progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def export_onnx_folder(args) -> None:
    from hslm.export.onnx import OnnxExportError, export_onnx
    from hslm.quant.onnx import OnnxQuantizeError, quantize_onnx_folder

    output = Path(args.output or Path(args.model) / f"onnx-{args.onnx}")
    if output.exists() and not output.is_dir():
        raise UsageError(f"the output must be a folder, and {output} is a file")
    existing = next(p for p in [output.absolute(), *output.absolute().parents] if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise UsageError(f"cannot write the folder {output}: {existing} is not a writable folder")
    model, tokenizer = load_model_folder(args.model)
    options = onnx_quantize_options(args, tokenizer, model.config)
    print(f"exporting {args.model} to ONNX ({model.num_parameters() / 1e6:.0f}M parameters; "
          "about a minute for hindi-270m)...", file=sys.stderr, flush=True)
    try:
        if args.onnx == "fp32":
            path = export_onnx(model, tokenizer, output)
        else:
            output.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=output) as scratch:
                export_onnx(model, tokenizer, scratch)
                print(f"quantizing to {args.onnx}...", file=sys.stderr, flush=True)
                path = quantize_onnx_folder(scratch, output, options)
    except (OnnxExportError, OnnxQuantizeError) as err:
        raise UsageError(str(err)) from None
    method = f", {options.description}" if options else ""
    print(f"wrote {output} ({args.onnx}{method}, {path.stat().st_size / 1e6:.1f} MB)")


def onnx_quantize_options(args, tokenizer, config):
    """The checked QuantizeOptions of an int8/int4 export (None for fp32), before anything is
    exported."""
    from hslm.quant.onnx import (ALGORITHM, BLOCK_SIZE, HEAD_BITS, OnnxQuantizeError,
                                 QuantizeOptions, calibration_windows)

    asked = [flag for flag, value in (("--algorithm", args.algorithm),
                                      ("--block-size", args.block_size),
                                      ("--head-bits", args.head_bits),
                                      ("--calibration", args.calibration)) if value is not None]
    if args.onnx == "fp32":
        if asked:
            raise UsageError(f"{', '.join(asked)}: fp32 is not quantized (use --onnx int4)")
        return None
    algorithm = args.algorithm or ALGORITHM
    if args.calibration and algorithm != "gptq":
        raise UsageError(f"--calibration is used by --algorithm gptq only, not {algorithm}")
    try:
        calibration = calibration_windows(tokenizer, args.calibration, config.context_length) \
            if args.calibration else ()
        options = QuantizeOptions(args.onnx, algorithm, args.block_size or BLOCK_SIZE,
                                  calibration, args.head_bits or HEAD_BITS)
        options.check(config)
    except OnnxQuantizeError as err:
        raise UsageError(str(err)) from None
    return options


@command
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.onnx:
        export_onnx_folder(args)
    elif args.algorithm or args.block_size or args.head_bits:
        raise UsageError("--algorithm, --block-size and --head-bits are for --onnx int4/int8")
    else:
        export_gguf(args)


if __name__ == "__main__":
    main()

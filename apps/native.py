"""hslm-native: build llama.cpp's own programs (the llama.cpp llama-cpp-python was built from)
for this machine or for a phone's ARM CPU."""

from __future__ import annotations

import argparse
import sys

from hslm.apps.common import command, fail


def build_parser() -> argparse.ArgumentParser:
    from hslm.native import ARCHES, ARM_ARCH, PROGRAMS

    parser = argparse.ArgumentParser(
        prog="hslm-native",
        description="Build llama.cpp's own programs (" + ", ".join(PROGRAMS) + ") from the "
                    "llama.cpp source that the installed llama-cpp-python was built from: pip "
                    "downloads its source distribution, CMake builds the programs statically "
                    "into ~/.cache/hslm/llama.cpp/<llama-cpp-python version>/<arch>/bin "
                    "($HSLM_LLAMA_CPP_DIR replaces ~/.cache/hslm/llama.cpp). A finished build "
                    "is reused. The last line printed is the bin folder. Needs cmake and g++ "
                    f"(Debian); --arch aarch64 cross-compiles for {ARM_ARCH} (a current "
                    "phone CPU) with g++-aarch64-linux-gnu, and qemu-user runs the result here.",
        epilog="example: hslm-native build && $(hslm-native build | tail -1)/llama-server "
               "-m runs/demo/model-q4.gguf --jinja")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build the programs (or reuse a finished build)",
                                description="Build llama.cpp's programs; prints the bin "
                                            "folder last.")
    build.add_argument("--arch", choices=ARCHES, help="target CPU (default: this machine's)")
    build.add_argument("--jobs", "-j", type=int, metavar="N",
                       help="parallel compile jobs (default: all CPUs)")
    build.add_argument("--programs", nargs="+", choices=PROGRAMS, default=list(PROGRAMS),
                       metavar="PROGRAM", help="build only these (default: all)")
    return parser


@command
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from hslm.native import NativeBuildError, build

    if args.jobs is not None and args.jobs < 1:
        fail("--jobs must be >= 1")
    try:
        folder = build(args.arch, args.jobs, args.programs,
                       say=lambda line: print(line, file=sys.stderr, flush=True))
    except NativeBuildError as err:
        fail(str(err))
    print(folder)


if __name__ == "__main__":
    main()

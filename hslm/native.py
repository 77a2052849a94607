"""llama.cpp's own programs (llama-cli, llama-server, llama-bench, ...) built from the very
llama.cpp source the installed llama-cpp-python was built from, for this machine (x86-64) or
cross-compiled for a phone's CPU (aarch64).

llama-cpp-python's source distribution vendors its llama.cpp under `vendor/llama.cpp`; pip
downloads it (`pip download --no-binary :all:`), CMake builds the programs statically (no
llama.cpp shared library to carry around) into

    ~/.cache/hslm/llama.cpp/<llama-cpp-python version>/<arch>/bin     ($HSLM_LLAMA_CPP_DIR)

A finished build leaves `build.json` beside `bin` (written last) and is reused. aarch64
programs run here under qemu (`runner`).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

PROGRAMS = ("llama-cli", "llama-server", "llama-bench", "llama-perplexity", "llama-imatrix",
            "llama-quantize", "llama-tokenize")
ARCHES = ("x86_64", "aarch64")
ELF_MACHINE = {"x86_64": 62, "aarch64": 183}  # e_machine of an ELF header
# A current phone CPU: Armv8.2-A with the int8 dot-product (ggml's fast 4/8-bit kernels) and
# fp16 arithmetic, as every Cortex-A55/A76 and newer core has.
ARM_ARCH = "armv8.2-a+dotprod+fp16"
CROSS_PREFIX = {"aarch64": "aarch64-linux-gnu-"}
CROSS_SYSROOT = {"aarch64": Path("/usr/aarch64-linux-gnu")}
QEMU = {"aarch64": "qemu-aarch64"}
DONE_FILE = "build.json"


class NativeBuildError(RuntimeError):
    """A build that cannot run (message says why and what to install)."""


class ToolMissing(NativeBuildError):
    """A compiler, cmake or qemu this machine lacks (message names the Debian package)."""


@dataclass
class BuildInfo:
    """What `build.json` records about a finished build."""
    llama_cpp_python: str
    arch: str
    programs: list[str]
    cmake_options: list[str]
    seconds: float
    jobs: int


def llama_cpp_python_version() -> str:
    try:
        return metadata.version("llama_cpp_python")
    except metadata.PackageNotFoundError:
        raise NativeBuildError("llama-cpp-python is not installed (pip install "
                               "llama-cpp-python): its version says which llama.cpp to build"
                               ) from None


def host_arch() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def cache_root() -> Path:
    return Path(os.environ.get("HSLM_LLAMA_CPP_DIR")
                or Path.home() / ".cache" / "hslm" / "llama.cpp")


def arch_dir(arch: str, version: str | None = None) -> Path:
    return cache_root() / (version or llama_cpp_python_version()) / arch


def build_info(arch: str, version: str | None = None) -> BuildInfo | None:
    """The record of a finished build for `arch`, or None."""
    done = arch_dir(arch, version) / DONE_FILE
    if not done.is_file():
        return None
    try:
        return BuildInfo(**json.loads(done.read_text()))
    except (ValueError, TypeError):
        return None  # an unreadable record is an unfinished build


def programs(arch: str | None = None, needed: Sequence[str] = PROGRAMS) -> Path | None:
    """The `bin` folder of a finished build holding the `needed` programs, or None."""
    arch = arch or host_arch()
    try:
        info = build_info(arch)
    except NativeBuildError:
        return None
    folder = arch_dir(arch) / "bin"
    if info is None or not all(name in info.programs and (folder / name).is_file()
                               for name in needed):
        return None
    return folder


def elf_machine(path: Path) -> int | None:
    """The ELF header's machine field (62 x86-64, 183 aarch64), or None for a non-ELF file."""
    with open(path, "rb") as file:
        header = file.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return None
    return int.from_bytes(header[18:20], "little" if header[5] == 1 else "big")


def runner(arch: str) -> list[str]:
    """The command prefix that runs `arch` programs here: nothing on the same CPU, qemu's
    user-mode emulator (all CPU features on, the cross toolchain's libraries) otherwise."""
    if arch == host_arch():
        return []
    if arch not in QEMU:
        raise NativeBuildError(f"cannot run {arch} programs on {host_arch()}")
    qemu = shutil.which(QEMU[arch])
    if qemu is None:
        raise ToolMissing(f"{QEMU[arch]} not found: install Debian's qemu-user to run "
                               f"{arch} programs here (apt-get install qemu-user)")
    return [qemu, "-cpu", "max", "-L", str(CROSS_SYSROOT[arch])]


def command(program: str, *args: str, arch: str | None = None) -> list[str]:
    """The command line that runs a built program (raises NativeBuildError when not built)."""
    arch = arch or host_arch()
    folder = programs(arch, [program])
    if folder is None:
        raise NativeBuildError(f"{program} for {arch} is not built: run hslm-native build "
                               f"--arch {arch}")
    return [*runner(arch), str(folder / program), *args]


def compilers(arch: str) -> tuple[str, str]:
    """(C compiler, C++ compiler) for `arch`; NativeBuildError names the Debian packages."""
    if arch == host_arch():
        c, cxx = shutil.which("cc") or shutil.which("gcc"), shutil.which("c++") or \
            shutil.which("g++")
        if not (c and cxx):
            raise ToolMissing("no C/C++ compiler found: install Debian's g++ "
                                   "(apt-get install g++)")
        return c, cxx
    if arch not in CROSS_PREFIX:
        raise NativeBuildError(f"cannot build for {arch} on {host_arch()} (arches: "
                               f"{', '.join(ARCHES)})")
    c, cxx = (shutil.which(CROSS_PREFIX[arch] + name) for name in ("gcc", "g++"))
    if not (c and cxx):
        raise ToolMissing(f"no {arch} cross compiler ({CROSS_PREFIX[arch]}g++): install "
                               f"Debian's g++-{arch}-linux-gnu (apt-get install "
                               f"g++-{arch}-linux-gnu)")
    return c, cxx


def cmake_options(arch: str) -> list[str]:
    """Every program statically linked, no network, no multimodal tool, no web UI download."""
    c, cxx = compilers(arch)
    options = ["-DCMAKE_BUILD_TYPE=Release", f"-DCMAKE_C_COMPILER={c}",
               f"-DCMAKE_CXX_COMPILER={cxx}", "-DBUILD_SHARED_LIBS=OFF",
               "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
               "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_APP=OFF",
               "-DLLAMA_BUILD_MTMD=OFF", "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
               "-DLLAMA_OPENSSL=OFF", "-DGGML_CCACHE=OFF"]
    if arch == host_arch():
        return options + ["-DGGML_NATIVE=ON"]
    return options + ["-DCMAKE_SYSTEM_NAME=Linux", f"-DCMAKE_SYSTEM_PROCESSOR={arch}",
                      f"-DCMAKE_FIND_ROOT_PATH={CROSS_SYSROOT[arch]}",
                      "-DCMAKE_FIND_ROOT_PATH_MODE_PROGRAM=NEVER",
                      "-DCMAKE_FIND_ROOT_PATH_MODE_LIBRARY=ONLY",
                      "-DCMAKE_FIND_ROOT_PATH_MODE_INCLUDE=ONLY",
                      "-DGGML_NATIVE=OFF", f"-DGGML_CPU_ARM_ARCH={ARM_ARCH}"]


def fetch_source(version: str, say: Callable[[str], None] = print) -> Path:
    """`vendor/llama.cpp` of llama-cpp-python `version`'s source distribution, downloaded
    with pip and unpacked once (shared by every arch)."""
    source = cache_root() / version / "source"
    if (source / "CMakeLists.txt").is_file():
        return source
    download = cache_root() / version / "sdist"
    download.mkdir(parents=True, exist_ok=True)
    archives = sorted(download.glob("*.tar.gz"))
    if not archives:
        say(f"downloading llama-cpp-python {version}'s source distribution with pip ...")
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             "--dest", str(download), f"llama-cpp-python=={version}"],
            capture_output=True, text=True, check=False)
        archives = sorted(download.glob("*.tar.gz"))
        if done.returncode != 0 or not archives:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise NativeBuildError(f"pip could not download llama-cpp-python=={version}'s "
                                   f"source: {last}")
    say(f"unpacking {archives[0].name} (vendor/llama.cpp) ...")
    unpacked = Path(tempfile.mkdtemp(prefix="source-", dir=source.parent))
    try:
        with tarfile.open(archives[0]) as archive:
            members = [m for m in archive.getmembers()
                       if "/vendor/llama.cpp/" in m.name + "/"]
            archive.extractall(unpacked, members=members, filter="data")  # no escaping paths
    except (tarfile.TarError, OSError) as err:
        shutil.rmtree(unpacked, ignore_errors=True)
        raise NativeBuildError(f"cannot unpack {archives[0]}: {err}") from None
    try:
        vendored = next(unpacked.glob("*/vendor/llama.cpp"), None)
        if vendored is None or not (vendored / "CMakeLists.txt").is_file():
            raise NativeBuildError(f"{archives[0].name} holds no vendor/llama.cpp")
        vendored.rename(source)
    finally:
        shutil.rmtree(unpacked, ignore_errors=True)
    return source


def run_lines(args: Sequence[str], on_line: Callable[[str], None],
              keep: int = 30) -> tuple[int, list[str]]:
    """Run `args` with stdout and stderr merged, each output line passed to `on_line` as it
    comes; returns the exit status and the last `keep` lines (for the failure's reason)."""
    process = subprocess.Popen(list(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, errors="replace")
    assert process.stdout is not None
    tail: deque[str] = deque(maxlen=keep)
    for line in process.stdout:
        tail.append(line.rstrip())
        on_line(line)
    return process.wait(), list(tail)


def _run(args: list[str], log: Path, say: Callable[[str], None], what: str) -> None:
    """Run a build step, its output appended to `log`; progress lines ([n/N]) are passed on."""
    with open(log, "a") as out:
        out.write("$ " + " ".join(args) + "\n")
        out.flush()

        def on_line(line: str) -> None:
            out.write(line)
            if line.startswith("[") and "/" in line.split("]")[0]:
                say(line.rstrip()[:120])

        status, tail = run_lines(args, on_line, keep=20)
        if status != 0:
            errors = [t for t in tail if "error" in t.lower()] or tail[-1:] or ["(no output)"]
            raise NativeBuildError(f"{what} failed ({errors[-1].strip()[:300]}); full log: "
                                   f"{log}")


def build(arch: str | None = None, jobs: int | None = None,
          targets: Sequence[str] = PROGRAMS, say: Callable[[str], None] = print) -> Path:
    """Build llama.cpp's `targets` for `arch` (default: this machine's) and return their
    `bin` folder. A finished build with those programs is reused."""
    arch = arch or host_arch()
    if arch not in ARCHES:
        raise NativeBuildError(f"unknown arch {arch!r} (choose from {', '.join(ARCHES)})")
    unknown = sorted(set(targets) - set(PROGRAMS))
    if unknown:
        raise NativeBuildError(f"unknown programs {', '.join(unknown)} (choose from "
                               f"{', '.join(PROGRAMS)})")
    version = llama_cpp_python_version()
    done = programs(arch, targets)
    if done is not None:
        return done
    previous = build_info(arch, version)
    targets = sorted(set(targets) | set(previous.programs if previous else ()))
    if shutil.which("cmake") is None:
        raise ToolMissing("cmake not found: install Debian's cmake (apt-get install cmake)")
    options = cmake_options(arch)  # checks the compilers before anything is downloaded
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    jobs = jobs or os.cpu_count() or 1
    start = time.perf_counter()
    source = fetch_source(version, say)
    folder = arch_dir(arch, version)
    (folder / DONE_FILE).unlink(missing_ok=True)
    work, bin_dir = folder / "build", folder / "bin"
    work.mkdir(parents=True, exist_ok=True)
    log = folder / "build.log"
    log.write_text("")
    say(f"configuring llama.cpp for {arch} (log: {log}) ...")
    _run(["cmake", "-S", str(source), "-B", str(work), *generator, *options], log, say,
         "cmake configure")
    say(f"building {', '.join(targets)} with {jobs} jobs ...")
    _run(["cmake", "--build", str(work), "--parallel", str(jobs), "--target", *targets],
         log, say, "build")
    bin_dir.mkdir(exist_ok=True)
    for name in targets:
        built = work / "bin" / name
        if elf_machine(built) != ELF_MACHINE[arch]:
            raise NativeBuildError(f"{built} is not an {arch} program (ELF machine "
                                   f"{elf_machine(built)}, expected {ELF_MACHINE[arch]})")
        shutil.copy2(built, bin_dir / name)
    info = BuildInfo(version, arch, list(targets), options,
                     round(time.perf_counter() - start, 1), jobs)
    (folder / DONE_FILE).write_text(json.dumps(asdict(info), indent=2) + "\n")
    return bin_dir

#!/usr/bin/env python3
"""Build the DLPack module build/dlpack/paddle_gqa_cuda<ext> on a CUDA machine (no Paddle needed).

Runs scripts/gen_kernels.py, writes build/dlpack/build.ninja (nvcc for every .cu under csrc/kernels/,
the generated instantiations included; g++ for csrc/common/*.cc and csrc/dlpack/*.cc; cudart linked
statically) and runs ninja. Prints the build time and the number of generated instantiations.

Usage: python scripts/build_cuda.py [--subset full|ci] [--arch 90a[,80]] [--jobs N] [--lineinfo] [--ptxas-report]
                                    [--cudart static|shared] [-D NAME[=VALUE] ...]
"""
import argparse
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "dlpack"
MODULE = "paddle_gqa_cuda"


def cuda_home() -> pathlib.Path:
    for candidate in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if candidate and (pathlib.Path(candidate) / "bin" / "nvcc").exists():
            return pathlib.Path(candidate)
    nvcc = shutil.which("nvcc")
    if nvcc:
        return pathlib.Path(nvcc).resolve().parent.parent
    sys.exit("build_cuda.py: no CUDA toolkit found: set CUDA_HOME to a directory with bin/nvcc")


def nvcc_version(nvcc: pathlib.Path) -> tuple:
    text = subprocess.run([str(nvcc), "--version"], check=True, capture_output=True, text=True).stdout
    m = re.search(r"release (\d+)\.(\d+)", text)
    if not m:
        sys.exit(f"build_cuda.py: cannot read the nvcc version from:\n{text}")
    return int(m.group(1)), int(m.group(2))


def gencode_flags(arch: str) -> list:
    flags = []
    for a in arch.split(","):
        a = a.strip()
        if not re.fullmatch(r"\d+[af]?", a):
            sys.exit(f"build_cuda.py: --arch {arch!r}: expected compute capabilities like 90a or 90a,80")
        flags.append(f"-gencode=arch=compute_{a},code=sm_{a}")
    if any(a.strip() == "90a" for a in arch.split(",")):
        flags.append("-DPGQA_BUILD_SM90A")  # the Hopper prefill kernel is built (attention dispatch)
    return flags


def cudart_static(home: pathlib.Path) -> pathlib.Path:
    for d in (home / "lib64", home / "targets" / "x86_64-linux" / "lib", home / "lib"):
        if (d / "libcudart_static.a").exists():
            return d / "libcudart_static.a"
    sys.exit(f"build_cuda.py: libcudart_static.a not found under {home}")


# libstdc++ internals that must come from the shared libstdc++ the process loads: a private copy
# inside the module (its own, never-initialised std::locale::id objects) crashes on first use.
_LIBSTDCXX_PATTERN = re.compile(r"std::locale::id|::_M_insert<|std::codecvt<|std::num_put<")


def check_no_private_libstdcxx(target: pathlib.Path, objects_dir: pathlib.Path) -> None:
    """Fails the build when the module defines libstdc++ internals, naming the objects that do."""
    nm = subprocess.run(["nm", "-C", "--defined-only", str(target)], capture_output=True, text=True)
    if nm.returncode != 0:
        sys.exit(f"build_cuda.py: nm failed on {target}: {nm.stderr.strip()}")
    bad = sorted({line.split(" ", 2)[2] for line in nm.stdout.splitlines()
                  if len(line.split(" ", 2)) == 3 and _LIBSTDCXX_PATTERN.search(line.split(" ", 2)[2])})
    if not bad:
        return
    owners = []
    for obj in sorted(objects_dir.glob("*.o")):
        out = subprocess.run(["nm", "-C", "--defined-only", str(obj)], capture_output=True, text=True).stdout
        if _LIBSTDCXX_PATTERN.search(out):
            owners.append(obj.name)
    sys.exit(f"build_cuda.py: {target.name} defines {len(bad)} libstdc++ internals (e.g. {bad[0]}); "
             f"objects defining them: {', '.join(owners) or 'none (they come from a linked archive)'}")


def sources() -> tuple:
    cu = sorted(set((ROOT / "csrc" / "kernels").rglob("*.cu")))
    cc = sorted((ROOT / "csrc" / "common").glob("*.cc")) + sorted((ROOT / "csrc" / "dlpack").glob("*.cc"))
    return cu, cc


def object_name(src: pathlib.Path) -> str:
    rel = src.relative_to(ROOT / "csrc")
    return "obj/" + str(rel).replace(os.sep, "__") + ".o"


def ninja_escape(path) -> str:
    return str(path).replace("$", "$$").replace(" ", "$ ").replace(":", "$:")


def spill_report(log: str) -> str:
    """One line on ptxas's -v report: how many kernel entries it compiled (per target) and which
    spill (bytes of spill stores > 0), then one line per spilling entry."""
    entries, spilling, current = 0, [], None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '([^']+)' for '([^']+)'", line)
        if m:
            entries += 1
            current = f"{m.group(1)} ({m.group(2)})"
            continue
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and current is not None:
            if int(m.group(1)) or int(m.group(2)):
                spilling.append(f"  spills {m.group(1)}/{m.group(2)} B (stores/loads): {current}")
            current = None
    return "\n".join([f"ptxas: {entries} kernel entries compiled, {len(spilling)} spill"] + spilling)


def write_ninja(args, home: pathlib.Path, cu, cc) -> pathlib.Path:
    nvcc = home / "bin" / "nvcc"
    major, _ = nvcc_version(nvcc)
    includes = [f"-I{ROOT / 'csrc' / 'include'}"]
    pybind = subprocess.run([sys.executable, "-m", "pybind11", "--includes"], check=True, capture_output=True,
                            text=True).stdout.split()
    common = ["-O3", "-std=c++17", "-DNDEBUG"]
    nvcc_flags = common + gencode_flags(args.arch) + [
        "--expt-relaxed-constexpr", "-Xcompiler", "-fPIC", "-Xcompiler", "-fvisibility=hidden"] + includes
    if major >= 13:
        # nvcc 13 makes __global__ template stubs static by default, which breaks explicit
        # instantiations defined in one file and launched from another.
        nvcc_flags.append("-static-global-template-stub=false")
    if args.lineinfo:
        nvcc_flags.append("-lineinfo")
    if args.ptxas_report:
        nvcc_flags += ["-Xptxas", "-v"]
    nvcc_flags += [f"-D{d}" for d in args.define]
    cxx = os.environ.get("CXX", "g++")
    cxx_flags = common + ["-fPIC", "-fvisibility=hidden", "-Wall", f"-I{home / 'include'}"] + includes + pybind
    # The shared libstdc++ is named first, by soname: where only libstdc++.a answers g++'s implicit
    # -lstdc++ (seen on the device image), the module would carry a private libstdc++ whose locale
    # ids are never initialised and the first std::ostringstream number insertion crashes.
    # cudart_static by full path and no -L, so that no CUDA lib directory stands in front of the
    # system libraries; cudart's symbols stay hidden inside the module.
    if args.cudart == "static":
        cudart = [str(cudart_static(home)), "-Wl,--exclude-libs,libcudart_static.a"]
    else:
        lib = cudart_static(home).parent
        cudart = [f"-L{lib}", "-lcudart", f"-Wl,-rpath,{lib}"]
    ldflags = ["-l:libstdc++.so.6"] + cudart + ["-ldl", "-lrt", "-lpthread"]
    out_name = MODULE + sysconfig.get_config_var("EXT_SUFFIX")

    q = lambda flags: " ".join(shlex.quote(f) for f in flags)
    lines = [
        "# Generated by scripts/build_cuda.py; rerun it instead of editing.",
        f"nvcc = {shlex.quote(str(nvcc))}",
        f"cxx = {shlex.quote(cxx)}",
        f"nvcc_flags = {q(nvcc_flags)}",
        f"cxx_flags = {q(cxx_flags)}",
        f"ldflags = {q(ldflags)}",
        "rule nvcc",
        "  command = $nvcc $nvcc_flags -MD -MF $out.d -c $in -o $out",
        "  depfile = $out.d",
        "  deps = gcc",
        "  description = NVCC $in",
        "rule cxx",
        "  command = $cxx $cxx_flags -MD -MF $out.d -c $in -o $out",
        "  depfile = $out.d",
        "  deps = gcc",
        "  description = CXX $in",
        "rule link",
        "  command = $cxx -shared -o $out $in $ldflags",
        "  description = LINK $out",
    ]
    objects = []
    for rule, files in (("nvcc", cu), ("cxx", cc)):
        for src in files:
            obj = object_name(src)
            objects.append(obj)
            lines.append(f"build {ninja_escape(obj)}: {rule} {ninja_escape(src)}")
    lines.append(f"build {ninja_escape(out_name)}: link {' '.join(ninja_escape(o) for o in objects)}")
    lines.append(f"default {ninja_escape(out_name)}")
    BUILD.mkdir(parents=True, exist_ok=True)
    (BUILD / "build.ninja").write_text("\n".join(lines) + "\n")
    return BUILD / out_name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subset", choices=("full", "ci"), default="full",
                    help="which attention instantiations gen_kernels.py emits (default: full)")
    ap.add_argument("--arch", default="90a", help="compute capabilities, comma-separated (default: 90a)")
    ap.add_argument("--jobs", "-j", type=int, default=os.cpu_count() or 1, help="parallel compile jobs")
    ap.add_argument("--lineinfo", action="store_true", help="add -lineinfo (for compute-sanitizer reports)")
    ap.add_argument("--ptxas-report", action="store_true",
                    help="compile with -Xptxas -v, keep the report in build/dlpack/ptxas.log and print the "
                         "kernels that spill")
    ap.add_argument("--define", "-D", action="append", default=[],
                    help="an extra nvcc -D (A/B builds of a kernel change); repeatable")
    ap.add_argument("--cudart", choices=("static", "shared"), default="static",
                    help="link the CUDA runtime statically (default) or as libcudart.so with an rpath")
    args = ap.parse_args()

    start = time.monotonic()
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_kernels.py"), "--subset", args.subset], check=True)
    home = cuda_home()
    cu, cc = sources()
    instances = sorted((ROOT / "csrc" / "kernels" / "generated").glob("*.cu"))
    target = write_ninja(args, home, cu, cc)
    ninja = shutil.which("ninja")
    if ninja is None:
        sys.exit("build_cuda.py: ninja not found: pip install ninja")
    if args.ptxas_report:
        result = subprocess.run([ninja, "-C", str(BUILD), f"-j{args.jobs}"], capture_output=True, text=True)
        (BUILD / "ptxas.log").write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            print(result.stdout[-20000:], result.stderr[-20000:], sep="\n")
    else:
        result = subprocess.run([ninja, "-C", str(BUILD), f"-j{args.jobs}"])
    elapsed = time.monotonic() - start
    if result.returncode != 0:
        sys.exit(f"build_cuda.py: ninja failed (exit {result.returncode}) after {elapsed:.1f} s")
    if args.ptxas_report:
        print(spill_report((BUILD / "ptxas.log").read_text()))
    check_no_private_libstdcxx(target, BUILD / "obj")
    print(f"built {target.relative_to(ROOT)}: subset {args.subset}, arch {args.arch}, "
          f"{len(instances)} generated instantiation files, {len(cu)} .cu + {len(cc)} .cc sources, "
          f"{elapsed:.1f} s with -j{args.jobs}")


if __name__ == "__main__":
    main()

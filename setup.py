"""Builds paddle_gqa: one shared library holding the Paddle custom ops (C++ CPU path always, CUDA
kernels when a toolkit is found), loaded at run time by paddle_gqa/_load.py.

Environment:
  PADDLE_GQA_WITH_CUDA      0 | 1 | auto (default): compile csrc/kernels/**/*.cu. auto = when a CUDA
                            toolkit is found AND `nvidia-smi -L` lists a GPU (a CPU-only machine gets
                            the quick CPU build; build wheels for GPUs elsewhere with 1); 1 = compile,
                            fail if the toolkit or the sources are missing.
  PADDLE_GQA_CUDA_ARCHS     ";"-separated SM list, default "80;90a" ("90a" -> sm_90a, "80" -> sm_80).
  PADDLE_GQA_KERNEL_SUBSET  full (default) | ci: which instantiations scripts/gen_kernels.py writes.
  CUDA_HOME                 the toolkit root; found from nvcc when unset.
  MAX_JOBS                  parallel compile jobs (Paddle's BuildExtension reads it).
"""
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext as _setuptools_build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
EXT_NAME = "paddle_gqa._paddle_ops"
with open(os.path.join(ROOT, "paddle_gqa", "__init__.py")) as _f:
    VERSION = re.search(r'^__version__ = "([^"]+)"', _f.read(), re.M).group(1)


def _env_choice(name, default, choices):
    value = os.environ.get(name, default).strip().lower()
    if value not in choices:
        raise SystemExit(f"{name}={value!r} is not valid; expected one of {', '.join(choices)}")
    return value


def _nvcc_reported_root(nvcc):
    """The toolkit root nvcc itself reports (its _HERE_ directory), so a wrapper script such as
    /usr/local/bin/nvcc that execs the real one resolves to the real toolkit."""
    probe = os.path.join(ROOT, "build", "nvcc_probe.cu")
    os.makedirs(os.path.dirname(probe), exist_ok=True)
    with open(probe, "w") as f:
        f.write("\n")
    try:
        out = subprocess.run([nvcc, "--dryrun", "-c", probe, "-o", os.devnull],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"^#\$ _HERE_=(\S+)", out.stdout + out.stderr, re.M)
    return os.path.dirname(m.group(1)) if m else None


def find_cuda_home():
    """CUDA_HOME / CUDA_PATH, else the root nvcc reports, else /usr/local/cuda; None when absent."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home:
            if not os.path.isfile(os.path.join(home, "bin", "nvcc")):
                raise SystemExit(f"{var}={home} has no bin/nvcc; point it at a CUDA toolkit root")
            return home
    nvcc = shutil.which("nvcc")
    if nvcc:
        home = _nvcc_reported_root(nvcc)
        if home and os.path.isfile(os.path.join(home, "bin", "nvcc")):
            return home
    if os.path.isfile("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda"
    return None


def nvcc_version(cuda_home):
    out = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--version"],
                         capture_output=True, text=True, check=True).stdout
    m = re.search(r"release (\d+)\.(\d+)", out)
    if not m:
        raise SystemExit(f"cannot read the nvcc version from:\n{out}")
    return int(m.group(1)), int(m.group(2))


def gencode_flags(archs_text):
    """'80;90a' -> -gencode flags producing SASS for each listed SM."""
    flags = []
    for arch in [a.strip() for a in re.split(r"[;,\s]+", archs_text) if a.strip()]:
        if not re.fullmatch(r"\d{2,3}[af]?", arch):
            raise SystemExit(f"PADDLE_GQA_CUDA_ARCHS entry {arch!r} is not an SM such as 80 or 90a")
        flags.append(f"-gencode=arch=compute_{arch},code=sm_{arch}")
    if not flags:
        raise SystemExit("PADDLE_GQA_CUDA_ARCHS is empty; expected e.g. '80;90a'")
    return flags


def rel(paths):
    return sorted(os.path.relpath(p, ROOT) for p in paths)


# gen_kernels.py writes csrc/include/paddle_gqa/generated/supported.h, which every build needs, and
# the CUDA instantiations of the chosen subset.
SUBSET = _env_choice("PADDLE_GQA_KERNEL_SUBSET", "full", ("full", "ci"))
subprocess.check_call([sys.executable, os.path.join(ROOT, "scripts", "gen_kernels.py"), "--subset", SUBSET])

WITH_CUDA_CHOICE = _env_choice("PADDLE_GQA_WITH_CUDA", "auto", ("0", "1", "auto"))
CU_SOURCES = rel(set(glob.glob(os.path.join(ROOT, "csrc/kernels/**/*.cu"), recursive=True)))
CUDA_HOME = find_cuda_home() if WITH_CUDA_CHOICE != "0" else None
if WITH_CUDA_CHOICE == "1" and CUDA_HOME is None:
    raise SystemExit("PADDLE_GQA_WITH_CUDA=1 but no CUDA toolkit was found; set CUDA_HOME")
if WITH_CUDA_CHOICE == "1" and not CU_SOURCES:
    raise SystemExit("PADDLE_GQA_WITH_CUDA=1 but csrc/kernels has no .cu files")


def gpu_visible():
    """Whether this machine shows an NVIDIA GPU (auto builds the CUDA kernels only then)."""
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return listed.returncode == 0 and "GPU" in listed.stdout


WITH_CUDA = (CUDA_HOME is not None and bool(CU_SOURCES)
             and (WITH_CUDA_CHOICE == "1" or (WITH_CUDA_CHOICE == "auto" and gpu_visible())))
if CUDA_HOME is not None:
    # Paddle's cpp_extension reads CUDA_HOME when it is imported (below) and otherwise guesses the
    # root from `which nvcc`, which is wrong for wrapper scripts.
    os.environ["CUDA_HOME"] = CUDA_HOME

# Imported only now: see CUDA_HOME above.
from paddle.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402
import paddle.utils.cpp_extension.cpp_extension as _pd_ext_impl  # noqa: E402

CC_SOURCES = rel(glob.glob(os.path.join(ROOT, "csrc/common/*.cc"))
                 + glob.glob(os.path.join(ROOT, "csrc/cpu/*.cc"))
                 + glob.glob(os.path.join(ROOT, "csrc/paddle/*.cc")))
HEADERS = rel(glob.glob(os.path.join(ROOT, "csrc/**/*.h"), recursive=True)
              + glob.glob(os.path.join(ROOT, "csrc/**/*.cuh"), recursive=True))

# PADDLE_NO_PYTHON keeps paddle/extension.h from including pybind headers, which under
# PADDLE_WITH_CUDA pull cuBLAS/cuDNN headers a plain toolkit may lack; the ops need no Python API.
common_defines = ["-DPADDLE_NO_PYTHON"] + (["-DPADDLE_GQA_WITH_CUDA"] if WITH_CUDA else [])
cxx_flags = ["-O3", "-std=c++17", "-fvisibility-inlines-hidden"] + common_defines
include_dirs = [os.path.join(ROOT, "csrc", "include")]

if WITH_CUDA:
    major, _minor = nvcc_version(CUDA_HOME)
    archs = gencode_flags(os.environ.get("PADDLE_GQA_CUDA_ARCHS", "80;90a"))
    # The same code-generation flags as scripts/build_cuda.py (the DLPack module), so both builds
    # run identical kernels.
    nvcc_flags = ["-O3", "-std=c++17", "-DNDEBUG", "--expt-relaxed-constexpr"] + common_defines + archs
    if any(f.endswith("code=sm_90a") for f in archs):
        nvcc_flags.append("-DPGQA_BUILD_SM90A")  # the Hopper prefill kernel is built (attention dispatch)
    if len(archs) > 1:
        nvcc_flags.append(f"--threads={len(archs)}")
    if major >= 13:
        # nvcc 13 otherwise emits static stubs for __global__ templates, which breaks explicit
        # instantiations defined in one translation unit and launched from another.
        nvcc_flags.append("-static-global-template-stub=false")
    extension = CUDAExtension(
        name=EXT_NAME,
        sources=CC_SOURCES + CU_SOURCES,
        include_dirs=include_dirs,
        depends=HEADERS,
        extra_compile_args={"cxx": list(cxx_flags), "nvcc": nvcc_flags},
    )
    # Link the CUDA runtime statically so the library loads where no libcudart exists (CI runs
    # the CPU tests through a CUDA-enabled build on a machine without a GPU).
    extension.extra_link_args = [a for a in extension.extra_link_args if a != "-lcudart"]
    extension.extra_link_args += ["-l:libcudart_static.a", "-ldl", "-lrt", "-lpthread"]
else:
    extension = CppExtension(
        name=EXT_NAME,
        sources=CC_SOURCES,
        include_dirs=include_dirs,
        depends=HEADERS,
        extra_compile_args={"cxx": list(cxx_flags), "nvcc": []},
    )


class CompileFailed(subprocess.CalledProcessError):
    """A failed compiler or linker command whose message carries the tool's own output."""

    def __str__(self):
        return f"exit code {self.returncode}: {' '.join(map(str, self.cmd))}\n{self.output}"


def _run_capturing(cmd, env=None, **_kwargs):
    """Runs one compiler or linker command, keeping its output so a failure carries the
    compiler's own message (Paddle's compile wrapper prints and swallows compile errors)."""
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    if proc.stdout:
        sys.stdout.write(proc.stdout)
        sys.stdout.flush()
    if proc.returncode != 0:
        raise CompileFailed(proc.returncode, cmd, output=proc.stdout)


class build_ext(BuildExtension):
    """Paddle's BuildExtension (flags, nvcc dispatch, parallel compile) with three changes:
    a failed compile fails the build with the compiler's message; no Python stub is generated and
    nothing is renamed (paddle_gqa/_load.py loads the library itself); and a change of flags or
    sources forces a rebuild instead of reusing a stale library."""

    def build_extensions(self):
        failures = []
        compiler_cls = type(self.compiler)
        original_compile = compiler_cls._compile

        def compile_one(compiler, obj, src, ext, cc_args, extra_postargs, pp_opts):
            try:
                original_compile(compiler, obj, src, ext, cc_args, extra_postargs, pp_opts)
            except Exception as e:  # noqa: BLE001 - recorded, re-raised after all jobs finish
                failures.append((src, str(e)))
                raise

        # Instance attributes survive the copy.copy(compiler) each Paddle compile worker makes;
        # _compile is patched on the class because each worker calls it on its own copy. Newer
        # setuptools runs commands through `call`, older through `spawn`.
        self.compiler.call = _run_capturing
        self.compiler.spawn = _run_capturing
        compiler_cls._compile = compile_one
        self._force_rebuild_if_config_changed()
        try:
            super().build_extensions()
        except Exception:
            if failures:
                self._raise_compile_failures(failures)
            raise
        finally:
            compiler_cls._compile = original_compile
        if failures:
            self._raise_compile_failures(failures)

    @staticmethod
    def _raise_compile_failures(failures):
        text = "\n\n".join(f"compile failed: {src}\n{msg}" for src, msg in failures)
        raise SystemExit(f"\n{'=' * 78}\npaddle_gqa: {len(failures)} source file(s) failed to compile\n"
                         f"{text}\n{'=' * 78}")

    def _force_rebuild_if_config_changed(self):
        ext = self.extensions[0]
        signature = hashlib.sha256(json.dumps({
            "sources": ext.sources,
            "args": ext.extra_compile_args,
            "link": ext.extra_link_args,
            "cuda_home": CUDA_HOME if WITH_CUDA else None,
        }, sort_keys=True, default=str).encode()).hexdigest()
        os.makedirs(self.build_temp, exist_ok=True)
        stamp = os.path.join(self.build_temp, "paddle_gqa_build_signature")
        old = open(stamp).read() if os.path.exists(stamp) else None
        if old != signature:
            self.force = True
            with open(stamp, "w") as f:
                f.write(signature)

    def run(self):
        # setuptools' run: compile and link only (no Paddle stub module, no *_pd_.so rename, no
        # deletion of intermediate objects).
        _setuptools_build_ext.run(self)


# Paddle's version.txt bookkeeping writes next to the library (into the source tree for editable
# installs); the signature above replaces it.
_pd_ext_impl.clean_object_if_change_cflags = lambda *args, **kwargs: None

if WITH_CUDA:
    print(f"paddle_gqa build: CUDA on ({CUDA_HOME}, archs "
          f"{os.environ.get('PADDLE_GQA_CUDA_ARCHS', '80;90a')}, {len(CU_SOURCES)} .cu files, subset {SUBSET})")
else:
    print(f"paddle_gqa build: CUDA off (PADDLE_GQA_WITH_CUDA={WITH_CUDA_CHOICE}, toolkit "
          f"{CUDA_HOME or 'not found'}, {len(CU_SOURCES)} .cu files)")

setup(
    name="paddle_gqa",
    version=VERSION,
    description="PaddlePaddle custom ops for paged-KV-cache append attention (GQA, SWA, D != Dv, sinks)",
    packages=find_packages(include=["paddle_gqa", "paddle_gqa.*"]),
    python_requires=">=3.9",
    install_requires=["numpy"],
    ext_modules=[extension],
    cmdclass={"build_ext": build_ext},
    zip_safe=False,
)

"""Finds and loads the compiled op library (paddle_gqa/_paddle_ops.so) once, on first use.

Loading registers the Paddle custom ops with Paddle's op registry (so `_C_ops._run_custom_op` and
static graphs know them) and opens the same library through ctypes for its plain C entry points.
"""
import ctypes
import functools
import os
import threading

LIBRARY_NAME = "_paddle_ops.so"
OP_NAMES = ("append_attention", "rope_write_cache", "paged_attention", "plan")

_lock = threading.Lock()


def library_path() -> str:
    """The op library next to this file (installed wheel or in-place/editable build)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), LIBRARY_NAME)


class OpLibrary:
    """The loaded library: Paddle op names it registered and its C entry points."""

    def __init__(self, path: str):
        from paddle.utils.cpp_extension.extension_utils import load_op_meta_info_and_register_op

        self.path = path
        registered = set(load_op_meta_info_and_register_op(path))
        missing = [name for name in OP_NAMES if name not in registered]
        if missing:
            raise ImportError(f"{path} registered ops {sorted(registered)}, missing {missing}; "
                              f"rebuild with `pip install --no-build-isolation .`")
        self._c = ctypes.CDLL(path)
        self._c.paddle_gqa_built_with_cuda.restype = ctypes.c_int
        self._c.paddle_gqa_check_errors.restype = ctypes.c_int
        self._c.paddle_gqa_check_errors.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int)
        self.built_with_cuda = bool(self._c.paddle_gqa_built_with_cuda())

    def check_errors(self, device_id: int) -> None:
        """Raises the first device-side input error recorded on `device_id` under graph capture."""
        buf = ctypes.create_string_buffer(4096)
        code = self._c.paddle_gqa_check_errors(int(device_id), buf, len(buf))
        if code == 1:
            raise ValueError(buf.value.decode(errors="replace"))
        if code != 0:
            raise RuntimeError(buf.value.decode(errors="replace"))


@functools.lru_cache(maxsize=None)
def _load(path: str) -> OpLibrary:
    return OpLibrary(path)


def library() -> OpLibrary:
    """The op library, loaded on the first call. Raises ImportError with the build command when the
    package was installed without building it."""
    path = library_path()
    if not os.path.exists(path):
        raise ImportError(
            f"paddle_gqa's op library {path} does not exist: the package is not built. Build it "
            f"with `pip install --no-build-isolation .` (or `-e .`) from the repository root.")
    with _lock:
        return _load(path)

"""The one table of what paddle_gqa compiles: head-dim pairs, block sizes, fast group sizes, dtypes.

`scripts/gen_kernels.py` turns it into the C++ supported-set header and the CUDA explicit
instantiations; the tests and the Python backends read it to build their parameter lists and
`validate(spec)` answers. Edit this table, never the generated files.
"""

# (D, Dv): query/key head dim, value head dim. Dv is its own template parameter everywhere.
HEAD_DIMS = ((64, 64), (96, 96), (128, 128), (192, 128), (256, 256), (128, 64))

# Tokens per paged-cache block.
BLOCK_SIZES = (16, 32, 64, 128)

# GQA group sizes with a templated CUDA fast path; every other group size Hq/Hkv runs on the
# runtime-G path (any G >= 1 is valid).
FAST_GROUP_SIZES = (1, 2, 3, 4, 5, 6, 7, 8, 12, 16)

# Element types of qkv and the caches. fp32 is CPU-only (the CUDA ops refuse it).
CPU_DTYPES = ("float32", "float16", "bfloat16")
CUDA_DTYPES = ("float16", "bfloat16")

# The subset CI compiles on 2 cores: every kernel template instantiated at least once.
CI_HEAD_DIMS = ((128, 128), (192, 128))
CI_GROUP_SIZES = (3,)
CI_DTYPES = ("bfloat16",)

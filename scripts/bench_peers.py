"""Peers of scripts/bench.py: torch SDPA (flash, cuDNN backends) and compiled flex_attention.

Each peer turns a case into `prepare(case, groups) -> run(set) -> [out per group]` over the
contiguous tensors of an input set ([B, H, L, D]); one call of `run` is one step (the mixed case
runs its two groups as two calls). A peer that cannot express something says so in `notes`, and
a shape it refuses raises from `prepare` or the first `run`: the caller reports the error.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import signal
import warnings
from typing import List

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right

from bench_cases import Case


# Where block masks and attention masks are built; "cuda" unless a dry run sets "cpu" (see bench.DEVICE).
DEVICE = "cuda"


class PeerTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int, what: str):
    """Raises PeerTimeout inside the block after `seconds` (flex compilation can take minutes)."""
    def on_alarm(signum, frame):
        raise PeerTimeout(f"{what} took longer than {seconds} s")
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def first_error_line(e: BaseException, caught=()) -> str:
    """`Type: message` cut to one readable line, with the reasons SDPA gave as warnings."""
    msg = str(e).strip().splitlines()
    text = f"{type(e).__name__}: {msg[0] if msg else ''}"
    reasons = []
    for w in caught:
        line = str(w.message).strip().splitlines()[0].split(" (Triggered internally")[0].strip()
        # SDPA warns once per backend it considered; keep the lines that give a reason.
        if not line or "not used because" in line or "runtime disabled" in line or line in reasons:
            continue
        reasons.append(line)
    if reasons:
        text += " | " + " | ".join(reasons[:4])
    return text[:600]


def _window_mask(n_q: int, n_kv: int, offset: int, window: int, device) -> torch.Tensor:
    """Bool [n_q, n_kv], True = visible: key j for query i at position offset + i, causal + window."""
    p = torch.arange(n_q, device=device)[:, None] + offset
    j = torch.arange(n_kv, device=device)[None, :]
    m = j <= p
    if window > 0:
        m &= j > p - window
    return m


class SdpaPeer:
    """torch SDPA restricted to one backend, enable_gqa=True, on contiguous [B, H, L, D] tensors."""

    def __init__(self, name: str, backend):
        self.name = name
        self.backend = backend

    def context(self):
        return sdpa_kernel([self.backend])

    def prepare(self, case: Case, groups):
        """Returns (run, notes, with_sinks)."""
        notes = []
        if case.sinks:
            notes.append("no sinks (SDPA cannot add a sink logit)")
        plans = []
        for g in groups:
            if g.n_new == 1 and case.window > 0:
                # Decode over the window only: the W keys a real engine would hand SDPA.
                lo = max(g.kv_len - case.window, 0)
                plans.append(dict(lo=lo, mask=None, causal=False))
                notes.append(f"decode reads only the last {case.window} keys (sliced, contiguous)")
            elif g.n_new == 1:
                plans.append(dict(lo=0, mask=None, causal=False))
            elif case.window > 0:
                mask = _window_mask(g.n_new, g.kv_len, g.cache_len, case.window, DEVICE)
                plans.append(dict(lo=0, mask=mask, causal=False))
                notes.append("window as a boolean attn_mask")
            elif g.cache_len == 0:
                plans.append(dict(lo=0, mask=None, causal=True))
            else:
                plans.append(dict(lo=0, mask=causal_lower_right(g.n_new, g.kv_len), causal=False))
                notes.append("chunk causal via causal_lower_right")

        def run(s) -> List[torch.Tensor]:
            outs = []
            for gi, pl in enumerate(plans):
                k, v = s.k[gi], s.v[gi]
                if pl["lo"]:
                    k, v = k[:, :, pl["lo"]:], v[:, :, pl["lo"]:]
                outs.append(F.scaled_dot_product_attention(
                    s.q[gi], k, v, attn_mask=pl["mask"], is_causal=pl["causal"], enable_gqa=True))
            return outs

        return run, sorted(set(notes)), not case.sinks


_FLEX = {}


def _flex_fns():
    """Compiled flex_attention, plain and with sinks applied from the returned log-sum-exp."""
    if _FLEX:
        return _FLEX["plain"], _FLEX["sinks"]
    from torch.nn.attention.flex_attention import flex_attention
    params = inspect.signature(flex_attention).parameters
    if "return_aux" in params:
        from torch.nn.attention.flex_attention import AuxRequest

        def with_lse(q, k, v, bm):
            out, aux = flex_attention(q, k, v, block_mask=bm, enable_gqa=True, return_aux=AuxRequest(lse=True))
            return out, aux.lse
    else:
        def with_lse(q, k, v, bm):
            return flex_attention(q, k, v, block_mask=bm, enable_gqa=True, return_lse=True)

    def plain(q, k, v, bm):
        return flex_attention(q, k, v, block_mask=bm, enable_gqa=True)

    def sinks(q, k, v, bm, sink):
        # A sink adds e^{sink} to the denominator only: out * S / (S + e^{sink}) with S = e^{lse}
        # (flex's lse is natural-log) = out * sigmoid(lse - sink). Exact, fused by inductor.
        out, lse = with_lse(q, k, v, bm)
        return (out.float() * torch.sigmoid(lse - sink[None, :, None])[..., None]).to(out.dtype)

    _FLEX["plain"] = torch.compile(plain, dynamic=False)
    _FLEX["sinks"] = torch.compile(sinks, dynamic=False)
    return _FLEX["plain"], _FLEX["sinks"]


class FlexPeer:
    """torch.compile(flex_attention) with a BlockMask for causal / window, enable_gqa=True."""

    name = "flex"

    def context(self):
        return contextlib.nullcontext()

    def prepare(self, case: Case, groups):
        from torch.nn.attention.flex_attention import create_block_mask
        # Compiled code is cached per shape, and a later case of the same shapes but another
        # window reused the earlier case's mask_mod (seen on torch 2.11: wrong output). Start clean.
        importlib.import_module("torch._dynamo").reset()
        plain, with_sinks = _flex_fns()
        notes = []
        if case.sinks:
            notes.append("sinks via returned lse: out*sigmoid(lse-sink), compiled with the call")
        masks = []
        for g in groups:
            if g.n_new == 1 and case.window == 0:
                masks.append(None)  # a decode query sees every key: no mask
                continue
            off, w = g.cache_len, case.window

            def mask_mod(b, h, q_idx, kv_idx, off=off, w=w):
                vis = kv_idx <= q_idx + off
                if w > 0:
                    vis = vis & (kv_idx > q_idx + off - w)
                return vis
            masks.append(create_block_mask(mask_mod, None, None, g.n_new, g.kv_len, device=DEVICE))

        def run(s) -> List[torch.Tensor]:
            outs = []
            for gi, bm in enumerate(masks):
                if case.sinks:
                    outs.append(with_sinks(s.q[gi], s.k[gi], s.v[gi], bm, s.sinks))
                else:
                    outs.append(plain(s.q[gi], s.k[gi], s.v[gi], bm))
            return outs

        return run, notes, True


PEERS = (
    SdpaPeer("SDPA-flash", SDPBackend.FLASH_ATTENTION),
    SdpaPeer("SDPA-cuDNN", SDPBackend.CUDNN_ATTENTION),
    FlexPeer(),
)


def try_first_call(peer, case, groups, s, compile_timeout: int):
    """prepare + one call: (run, outs, notes, with_sinks) or raises with a readable message."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with peer.context(), time_limit(compile_timeout, f"{peer.name} first call (compile)"):
                run, notes, with_sinks = peer.prepare(case, groups)
                outs = run(s)
                if DEVICE == "cuda":
                    torch.cuda.synchronize()
            return run, outs, notes, with_sinks
        except Exception as e:  # a refusal: reported with its reason, never skipped silently
            raise RuntimeError(first_error_line(e, caught)) from e


#!/usr/bin/env python3
"""Where a decode launch's slow CTAs run: reads the raw CTA records that
`decode_flush_probe.py --cta-times --cta-dump DIR` writes (a -D PGQA_CTA_TIMES build) and prints, per
file, how alike the calls are (correlation of each CTA's end, and of each SM's latest end, between
calls) and every SM's mean CTA duration against the median SM (µs; "/n": CTAs per call on it).

A CTA that ends late in every call while the CTAs move between SMs points at its data; an SM whose
CTAs are fast in every call whatever they hold points at its place on the chip (H100, session 9:
the latter, about 24 SMs 20% faster on decode_g3, see BENCHMARKS.md).

Usage: python3 scripts/cta_dump_report.py DIR_OR_FILES...  (numpy only; runs anywhere)
"""
from __future__ import annotations

import glob
import json
import os
import sys

import numpy as np

REAL_CTA_US = 50.0  # CTAs that streamed keys last far longer than the exiting ones (extra columns)


def load(path):
    """Per call: arrays (cta id, start µs, end µs, smid) of the CTAs that streamed keys."""
    calls = []
    for r in json.load(open(path)):
        a = np.array(r, dtype=np.float64)
        t0 = a[:, 1].min()
        start, end = (a[:, 1] - t0) / 1e3, (a[:, 2] - t0) / 1e3
        real = end - start > REAL_CTA_US
        calls.append((a[real, 0].astype(int), start[real], end[real], a[real, 3].astype(int)))
    return calls


def report(path):
    calls = load(path)
    print(f"== {os.path.basename(path)}: {len(calls)} calls, {len(calls[0][0])} CTAs streaming keys")
    common = sorted(set.intersection(*[set(c[0].tolist()) for c in calls]))
    by_cta = np.array([[dict(zip(c[0].tolist(), c[2]))[i] for i in common] for c in calls])
    n_sm = 1 + max(int(c[3].max()) for c in calls)
    by_sm = np.full((len(calls), n_sm), np.nan)
    lasted = np.zeros(n_sm)
    count = np.zeros(n_sm)
    for k, (_, start, end, sm) in enumerate(calls):
        np.fmax.at(by_sm[k], sm, end)  # NaN stays where an SM ran none
        np.add.at(lasted, sm, end - start)
        np.add.at(count, sm, 1)
    ok = ~np.isnan(by_sm).any(axis=0)
    corr = lambda m: np.corrcoef(m - m.mean(axis=1, keepdims=True))  # noqa: E731
    same_sm = np.mean([np.array_equal(c[3][np.argsort(c[0])], calls[0][3][np.argsort(calls[0][0])]) for c in calls])
    print(f"   CTAs on the same SMs as in call 0: {same_sm:.0%} of calls")
    print(f"   end of each CTA, correlation between calls: {np.round(corr(by_cta)[0, 1:], 2).tolist()}")
    print(f"   latest end on each SM, correlation between calls: {np.round(corr(by_sm[:, ok])[0, 1:], 2).tolist()}")
    mean = np.where(count > 0, lasted / np.maximum(count, 1), np.nan)
    dev = mean - np.nanmedian(mean)
    cells = [f"{s:3d}:{dev[s]:6.1f}/{count[s] / len(calls):.0f}" for s in range(n_sm) if count[s] > 0]
    for i in range(0, len(cells), 11):
        print("   " + "  ".join(cells[i:i + 11]))
    ends = by_cta.max(axis=1)
    print(f"   latest end per call {np.round(ends, 1).tolist()}")


def main():
    paths = []
    for arg in sys.argv[1:] or ["."]:
        paths += sorted(glob.glob(os.path.join(arg, "cta_*.json"))) if os.path.isdir(arg) else [arg]
    if not paths:
        sys.exit("cta_dump_report.py: no cta_*.json given or found")
    for p in paths:
        report(p)


if __name__ == "__main__":
    main()

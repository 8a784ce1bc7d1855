#!/usr/bin/env python3
"""The decode launch's DRAM stream over time, from when each KV tile landed: reads the npz files that
`decode_flush_probe.py --cta-times --tile-dump DIR` writes (a -D PGQA_CTA_TIMES -D PGQA_TILE_TIMES
build; rows [cta, tile, ns]) and prints, per file, the stream's plateau rate and the time lost
against it at the start and at the end (`call_summary`); with --curve every call's landed TB/s per
bin and the CTAs still streaming.

The question it answers: when the CTAs of the fast SMs finish early (BENCHMARKS.md, session 9), does
the stream's rate hold (DRAM the shared limit) or drop (a tail that finer work could fill)?

Usage: python3 scripts/tile_times_report.py [--tile-bytes 32768] FILES...  (numpy only; runs anywhere)
"""
from __future__ import annotations

import argparse
import os

import numpy as np


def call_summary(t, tile_bytes):
    """(span µs, plateau TB/s, start loss µs, tail loss µs) of one call's tile landings t (µs from
    the first).

    plateau: the landed rate between 40 µs after the first landing and 40 µs before the last;
    start loss: 30 µs minus the plateau time of what landed in the first 30 µs; tail loss: the same
    over the last 20 µs."""
    span = float(t.max())
    mid = (t > 40) & (t < span - 40)
    plateau = mid.sum() * tile_bytes / ((span - 80) * 1e-6) / 1e12
    at_plateau = lambda n: n * tile_bytes / 1e12 / plateau * 1e6  # noqa: E731  (µs)
    return span, plateau, 30 - at_plateau((t < 30).sum()), 20 - at_plateau((t > span - 20).sum())


def report(path, tile_bytes, bin_us, curve):
    calls = np.load(path)
    rows = []
    for key in sorted(calls.files, key=lambda k: int(k.split("_")[1])):
        a = calls[key].astype(np.float64)
        if not len(a):
            continue
        t = (a[:, 2] - a[:, 2].min()) / 1e3  # µs from the first landing
        rows.append(call_summary(t, tile_bytes))
        if not curve:
            continue
        cta = a[:, 0].astype(int)
        edges = np.arange(0.0, t.max() + bin_us, bin_us)
        landed, _ = np.histogram(t, bins=edges)
        rate = landed * tile_bytes / (bin_us * 1e-6) / 1e12  # TB/s per bin
        last = np.zeros(cta.max() + 1)
        np.maximum.at(last, cta, t)
        ctas = np.unique(cta)
        streaming = [(last[ctas] >= e).sum() for e in edges[:-1]]
        print(f"   {key}: " + " ".join(f"{e:.0f}:{r:.2f}/{n}" for e, r, n in zip(edges[:-1], rate, streaming)) +
              "   (µs: TB/s landed / CTAs streaming)")
    r = np.array(rows)
    med = np.median(r, axis=0)
    print(f"== {os.path.basename(path)}: {len(r)} calls; median span {med[0]:.1f} µs, plateau {med[1]:.3f} TB/s, "
          f"start loss {med[2]:.1f} µs (first 30), tail loss {med[3]:.1f} µs (last 20); per call tail "
          + " ".join(f"{x:.1f}" for x in r[:, 3]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+")
    ap.add_argument("--tile-bytes", type=int, default=32768,
                    help="K + V bytes of one KV tile (64 keys, D 128 / Dv 128: 32768)")
    ap.add_argument("--bin", type=float, default=10.0, help="bin width of --curve, µs")
    ap.add_argument("--curve", action="store_true", help="also every call's landed rate per bin")
    args = ap.parse_args()
    for f in args.files:
        report(f, args.tile_bytes, args.bin, args.curve)


if __name__ == "__main__":
    main()

"""Run metrics: per-stage meters, latency, drops, the progress bar, the summary and `--stats`.

Each stage process keeps a `StageMeter` and sends `meter.report()` to the supervisor when it
ends; the sink also sends its latencies. `build_stats` folds the reports into the JSON that
`--stats FILE` writes (keys: frames_in, frames_out, dropped, fps, latency_ms, stages, wall_s,
plus partial, skipped and sources).
"""
from __future__ import annotations

import json
import signal
import sys
import time
from array import array
from collections import Counter
from typing import Optional

import numpy as np

from vidseg.pipelines.outputs import write_whole


class StageMeter:
    """Frames handled and time spent working (not waiting) in one stage process."""

    def __init__(self, name: str):
        self.name = name
        self.frames = 0
        self.busy_s = 0.0
        self.dropped: Counter = Counter()
        self.latencies_ms = array("f")  # sink only: capture→sink per frame
        self.extra: dict = {}
        self._t0: Optional[float] = None

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def stop(self, frames: int = 1) -> None:
        self.busy_s += time.perf_counter() - self._t0
        self.frames += frames

    def report(self) -> dict:
        return dict(name=self.name, frames=self.frames, busy_s=self.busy_s, dropped=dict(self.dropped),
                    latencies_ms=self.latencies_ms.tobytes(), extra=self.extra)


def latency_summary(latencies_ms: np.ndarray) -> dict:
    """float ms [N] → {"p50", "p95", "max"} (zeros when empty)."""
    if len(latencies_ms) == 0:
        return {"p50": 0.0, "p95": 0.0, "max": 0.0}
    ordered = np.sort(latencies_ms)
    # np.percentile's default (linear) method; np.percentile itself loads numpy.ma (~25 ms
    # at the end of every run)
    p50, p95 = np.interp([0.50, 0.95], np.linspace(0.0, 1.0, len(ordered)), ordered)
    return {"p50": round(float(p50), 1), "p95": round(float(p95), 1), "max": round(float(ordered[-1]), 1)}


def build_stats(reports: list[dict], source_names: list[str], wall_s: float, partial: bool) -> dict:
    """Fold stage reports (name like "capture[0]", "infer", "render[0]", "sink[0]") into stats."""
    stages: dict = {}
    dropped: Counter = Counter()
    frames_in = frames_out = skipped = 0
    latencies = []
    sources = {name: {"frames_in": 0, "frames_out": 0, "dropped": {}} for name in source_names}
    for r in reports:
        busy = r["busy_s"]
        stages[r["name"]] = {"frames": r["frames"], "busy_s": round(busy, 3),
                             "fps": round(r["frames"] / busy, 2) if busy > 0 else 0.0}
        kind, _, sid = r["name"].partition("[")
        src = sources[source_names[int(sid.rstrip("]"))]] if sid else None
        if kind == "capture":
            frames_in += r["frames"]
            skipped += r["extra"].get("skipped", 0)
            dropped.update(r["dropped"])
            src["frames_in"] = r["frames"]
            src["dropped"] = dict(r["dropped"])
            src.update({k: v for k, v in r["extra"].items()})
        elif kind == "sink":
            frames_out += r["frames"]
            src["frames_out"] = r["frames"]
            lat = np.frombuffer(r["latencies_ms"], np.float32)
            src["latency_ms"] = latency_summary(lat)
            if r["frames"] > 1:  # throughput once frames flow (startup excluded)
                span = r["extra"]["last_out"] - r["extra"]["first_out"]
                src["steady_fps"] = round((r["frames"] - 1) / span, 2) if span > 0 else 0.0
            latencies.append(lat)
    if partial:  # a second stop or a failure abandons the frames still between capture and sink (all
        # of them if the sink was killed before it reported): interrupted too
        for i, name in enumerate(source_names):
            src = sources[name]
            lost = src["frames_in"] - src["frames_out"] - sum(src["dropped"].values())
            if lost > 0 and f"capture[{i}]" in stages:
                src["dropped"]["interrupted"] = src["dropped"].get("interrupted", 0) + lost
                dropped["interrupted"] += lost
    lat = np.concatenate(latencies) if latencies else np.zeros(0, np.float32)
    return {
        "frames_in": frames_in,
        "frames_out": frames_out,
        "dropped": dict(dropped),
        "skipped": skipped,
        "fps": round(frames_out / wall_s, 2) if wall_s > 0 else 0.0,
        "latency_ms": latency_summary(lat),
        "stages": stages,
        "wall_s": round(wall_s, 3),
        "partial": partial,
        "sources": sources,
    }


def summary(stats: dict) -> str:
    """Human-readable end-of-run summary (a few lines)."""
    dropped = ", ".join(f"{k} {v}" for k, v in stats["dropped"].items()) or "none"
    lines = [
        f"frames: in {stats['frames_in']}, out {stats['frames_out']}, dropped {dropped}"
        + (f", undecodable packets skipped {stats['skipped']}" if stats.get("skipped") else ""),
        f"wall {stats['wall_s']:.1f} s, {stats['fps']:.1f} fps; latency capture→sink ms: "
        f"p50 {stats['latency_ms']['p50']:.0f}, p95 {stats['latency_ms']['p95']:.0f}, max {stats['latency_ms']['max']:.0f}",
        "stages (fps when busy): " + ", ".join(f"{k} {v['fps']:.1f}" for k, v in stats["stages"].items()),
    ]
    if stats.get("partial"):
        lines.append("interrupted: a partial run; the counts above, and any output, cover the frames done so far")
    return "\n".join(lines)


def write_stats(path: str, stats: dict, overwrite: bool) -> str:
    """`stats` as indented JSON in `path`, written whole or not at all, an existing file
    replaced only with `overwrite` (see put_in_place; returns where it went); an OSError names
    the path (a full disk reports itself on write, where Python gives no file name)."""
    return write_whole(path, json.dumps(stats, indent=2) + "\n", "stats file", overwrite)


class Progress:
    """tqdm bar (frames done / total, fps) on a TTY; nothing otherwise or when disabled."""

    def __init__(self, total: Optional[int], enabled: bool, desc: str = "vidseg"):
        self._bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit="frame", dynamic_ncols=True, leave=False)
        self._done = 0

    def update(self, done: int) -> None:
        if self._bar is not None and done > self._done:
            self._bar.update(done - self._done)
        self._done = done

    def stopping(self, signum: int) -> None:
        """After a Ctrl-C, on a terminal: that the run drains, and how not to wait for it (a
        model's in-flight frames can take seconds; a stalled stage, until Ctrl-C again)."""
        if signum == signal.SIGINT and sys.stderr.isatty():
            line = "stopping after the frames in flight (Ctrl-C again to stop now)"
            if self._bar is not None:
                self._bar.write(line, file=sys.stderr)
            else:
                print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

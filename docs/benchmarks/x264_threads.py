"""libx264 through PyAV: CPU and wall time by thread mode and count, on raw I420 frames.

usage: python docs/benchmarks/x264_threads.py RAW.yuv WIDTH HEIGHT SLICE|AUTO THREADS  (0 = x264's auto)
  (RAW.yuv from: ffmpeg -i IN.mp4 -frames:v N -f rawvideo -pix_fmt yuv420p RAW.yuv)
Compare with: ffmpeg -f rawvideo -pix_fmt yuv420p -s WxH -r 30 -i RAW.yuv -c:v libx264 -preset veryfast -crf 23 OUT.mp4
"""
from __future__ import annotations

import resource
import sys
import tempfile
import time

import av
import numpy as np


def main(path: str, width: int, height: int, thread_type: str, threads: int) -> None:
    frames = np.fromfile(path, np.uint8).reshape(-1, height * 3 // 2, width)
    with tempfile.NamedTemporaryFile(suffix=".mp4") as tmp:
        out = av.open(tmp.name, "w")
        v = out.add_stream("libx264", rate=30, options={"preset": "veryfast", "crf": "23"})
        v.width, v.height, v.pix_fmt = width, height, "yuv420p"
        v.codec_context.thread_count = threads
        v.codec_context.thread_type = thread_type
        t0, r0 = time.time(), resource.getrusage(resource.RUSAGE_SELF)
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_numpy_buffer(image, format="yuv420p")
            frame.pts = i
            out.mux(v.encode(frame))
        out.mux(v.encode(None))
        out.close()
        r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime
    print(f"{thread_type} x{threads}: {len(frames)} frames, wall {time.time() - t0:.1f} s, cpu {cpu:.1f} s")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5]))

"""Frame sinks: MP4 (PyAV/libx264), window (OpenCV), null (benchmarks)."""
from vidseg.sinks.base import FrameSink

__all__ = ["FrameSink"]

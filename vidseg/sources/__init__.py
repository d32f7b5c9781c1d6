"""Frame sources: video files (PyAV), RTSP cameras (PyAV), webcams (OpenCV)."""
from vidseg.sources.base import FrameSource, SourceFrame

__all__ = ["FrameSource", "SourceFrame"]

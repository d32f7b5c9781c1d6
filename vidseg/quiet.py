"""Keep native libraries' chatter (TensorFlow's start-up, image decoders) off the user's terminal.

TF_CPP_MIN_LOG_LEVEL does not silence what TensorFlow's C++ code logs through Abseil before
Abseil's logging is initialised ("WARNING: All log messages before absl::InitializeLog() ...",
oneDNN and CUDA-probe lines), so a one-line error would arrive under half a dozen lines of
noise. `native_stderr_filtered()` sets TF_CPP_MIN_LOG_LEVEL=2 (unless the user set it) and
sends file descriptor 2 to a temporary file while a model is built, then writes back only the
lines that are not such log lines. `native_stderr_captured()` is the same capture for any
native call whose messages the caller reads (an image decoder's warnings, for one).
"""
from __future__ import annotations

import os
import re
import sys
import tempfile
from contextlib import contextmanager

# Abseil/glog line prefix "I0000 00:00:1795454799.856700   18371 file.cc:31] ...", its
# pre-initialisation banner, and the continuation line of TF's CPU-feature notice.
NOISE = re.compile(r"(WARNING: All log messages before absl::InitializeLog\(\)"
                   r"|[IWE]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\]"
                   r"|To enable the following instructions:)")


@contextmanager
def native_stderr_captured(keep=lambda line: False):
    """Within the block fd 2 (Python's and C++'s stderr) goes to a temporary file; on exit the
    lines for which keep(line) is true are written to the real stderr, in order. Yields a
    list that holds, once the block has ended, one str: all that was written to the file."""
    sys.stderr.flush()
    saved = os.dup(2)
    said: list[str] = []
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield said
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            said.append(capture.read().decode("utf8", "replace"))
            sys.stderr.write("".join(line for line in said[0].splitlines(True) if keep(line)))
            sys.stderr.flush()


@contextmanager
def native_stderr_filtered():
    """Within the block fd 2 goes to a temporary file; on exit the lines not matching NOISE
    are written to the real stderr, in order. TensorFlow loaded inside the block logs only
    its errors (TF_CPP_MIN_LOG_LEVEL=2 unless already set)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with native_stderr_captured(keep=lambda line: not NOISE.match(line)):
        yield

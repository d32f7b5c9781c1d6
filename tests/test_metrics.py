"""The latency summary every run prints and writes to --stats."""
import numpy as np
import pytest

from vidseg.metrics import latency_summary


@pytest.mark.parametrize("n", [1, 2, 3, 10, 1000, 12345])
def test_latency_summary_matches_numpy_percentiles(n):
    latencies = np.random.default_rng(n).exponential(50.0, n).astype(np.float32)
    p50, p95 = np.percentile(latencies, [50, 95])
    summary = latency_summary(latencies)
    assert summary["p50"] == pytest.approx(float(p50), abs=0.051)
    assert summary["p95"] == pytest.approx(float(p95), abs=0.051)
    assert summary["max"] == round(float(latencies.max()), 1)


def test_latency_summary_of_no_frames_is_zeros():
    assert latency_summary(np.zeros(0, np.float32)) == {"p50": 0.0, "p95": 0.0, "max": 0.0}

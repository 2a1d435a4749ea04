"""The README's first command: `otel-podnet demo` prints every figure beside the ground truth
it produced, they all match, and it leaves nothing behind."""

from __future__ import annotations

import subprocess
import sys


def test_demo_matches_its_ground_truth() -> None:
    before = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())
    r = subprocess.run([sys.executable, "-m", "otel_podnet", "demo"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "every figure matches the ground truth" in r.stdout
    assert "MISMATCH" not in r.stdout
    assert r.stdout.count("  ok") == 3 * 7  # three pods, seven compared rows each
    after = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())
    assert after <= before

"""The defaults fix the incident out of the box: with the filter's default configuration (no
tuning), every client of the idle-death matrix gets through idle spells of 1.5 × a NAT's idle
cutoff (silent drop and reset), for every cutoff the defaults cover. Scaled down ten times here (a 3 s cutoff, 4.5 s
spells, the defaults × 0.1); `make matrix` runs the 30 s one with the plain defaults, `{}`.
Each fault must bite plain tcp_proxy in the same run (the matrix reports VACUOUS otherwise, and
--strict fails on it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.needs_root


def test_defaults_cover_a_cutoff_of_twice_the_keepalive_for_every_client(module, tmp_path):
    matrix = Path(__file__).resolve().parents[1] / "lab" / "matrix.py"
    proc = subprocess.run(
        [sys.executable, str(matrix), "--defaults", "3", "--faults", "ab", "--short", "--strict",
         "--module", str(module), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900)
    print(proc.stdout[-12000:])
    print(proc.stderr[-4000:])
    assert proc.returncode == 0, "a client failed with the defaults (table above)"
    for fault in ("(a)", "(b)"):
        assert fault in proc.stdout, f"fault {fault} did not run"
    assert "VACUOUS" not in proc.stdout

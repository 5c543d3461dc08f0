"""The fault-injection bench, small: ``bench/fault_inject.py`` with 2 kills at random steps and 2 kills inside
checkpoint saves (seeded), on the tiny recipe under torchrun (2 gloo ranks, CP=2), per registered backend.

Every kill leaves ``latest`` naming a complete checkpoint (or none); every resumed run ends bit-identical to the
uninterrupted one (metric rows, final state.json, sha256 of every checkpoint file). The full run (20 + 20 kills)
is ``python bench/fault_inject.py --backend deepspeed --kills 20 --save-kills 20 --seed 0``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.reliability.conftest import REPO, lcr_env

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def _bench(tmp: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp / "result.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "fault_inject.py"), "--work", str(tmp / "work"),
                           "--json", str(out), *args], cwd=REPO, env=lcr_env(), capture_output=True, text=True,
                          timeout=1500)  # fmt: skip
    return proc, json.loads(out.read_text()) if out.exists() else {}


@pytest.mark.parametrize("backend", ["deepspeed", "megatron"])
def test_small_fault_injection_finds_no_difference(tmp_path, backend) -> None:
    from lcrecipes.train.backends import BACKENDS

    if backend not in BACKENDS:
        proc, report = _bench(tmp_path, "--backend", backend)
        assert proc.returncode == 0 and report["available"] is False, proc.stdout + proc.stderr[-2000:]
        pytest.skip(f"backend {backend!r} is not registered: the bench reports it as not available")
    proc, report = _bench(tmp_path, "--backend", backend, "--kills", "2", "--save-kills", "2", "--steps", "4",
                          "--kills-per-trial", "2", "--seed", "0", "--no-repeat")  # fmt: skip
    assert "reference_failed" not in report, report.get("reference_failed")
    summary = {row["faults"]: row for row in report["summary"]}
    assert summary["step kills"]["kills"] >= 2 and summary["save kills"]["kills"] >= 2, summary
    for row in summary.values():
        assert row["failures"] == 0 and row["differences"] == 0, json.dumps(report["trials"], indent=1)[-6000:]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| backend | faults |" in proc.stdout

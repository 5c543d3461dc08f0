"""The fault trainer's job kill stays inside its own torchrun job.

A worker whose torchrun agent is already gone is re-parented to init or to a subreaper (a CI runner). Looking the
"agent" up as the current parent then and killing its children would kill every process on the machine: this is
what took a CI run down. Here a subreaper (``PR_SET_CHILD_SUBREAPER``) with a bystander child stands in for the CI
runner; an orphaned worker calls ``kill_job("all")``, and the bystander and the subreaper must survive.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.reliability.conftest import REPO, lcr_env

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_CHILD_SUBREAPER is Linux-only")

WORKER = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, sys.argv[1])
    import fault_trainer                      # records the agent (our parent) at start-up
    agent = os.getppid()
    os.write(1, b"ready\\n")
    while os.getppid() == agent:              # wait until the agent is gone and we are re-parented
        time.sleep(0.01)
    fault_trainer.kill_job("all")
    """
)

AGENT = textwrap.dedent(
    """
    import os, subprocess, sys
    env = dict(os.environ, TORCHELASTIC_RUN_ID="scope-test")
    worker = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]], env=env, stdout=subprocess.PIPE)
    worker.stdout.readline()                  # the worker has imported fault_trainer: exit, orphaning it
    os._exit(0)
    """
)

REAPER = textwrap.dedent(
    """
    import ctypes, os, signal, subprocess, sys
    assert ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0   # PR_SET_CHILD_SUBREAPER
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    agent = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2], sys.argv[3]])
    agent.wait()
    while True:                               # reap the orphaned worker once it has killed itself
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if pid != bystander.pid:
            print("worker", "killed" if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL else status)
            break
    print("bystander", "alive" if bystander.poll() is None else f"dead {bystander.returncode}", flush=True)
    bystander.kill()
    """
)


def test_orphaned_worker_kills_only_itself() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", REAPER, AGENT, WORKER, str(REPO / "bench")],
        env=lcr_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"the subreaper was killed ({proc.returncode}): {proc.stdout}{proc.stderr[-2000:]}"
    assert "worker killed" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert "bystander alive" in proc.stdout, proc.stdout + proc.stderr[-2000:]

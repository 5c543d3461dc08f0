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


# A rank that forked a helper (Megatron-Core's checkpoint writers are forked processes, and the save hooks fire in
# them): the helper's kill must take down the job ("all") or its rank ("self"), not only the helper, which would
# leave the rank waiting for it until the peers' collective timeout.
RANK = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, sys.argv[1])
    import fault_trainer
    os.write(1, b"ready\\n")
    if sys.argv[2] == "forks":
        sys.stdin.readline()
        if os.fork() == 0:                    # the forked writer hits the fault point
            fault_trainer.kill_job(sys.argv[3])
    time.sleep(120)
    """
)

LAUNCHER = textwrap.dedent(
    """
    import json, os, subprocess, sys, time
    env = dict(os.environ, TORCHELASTIC_RUN_ID="scope-test")
    ranks = [subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2], role, sys.argv[3]], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE) for role in ("forks", "peer")]
    for r in ranks:
        r.stdout.readline()
    print(json.dumps([r.pid for r in ranks]), flush=True)
    ranks[0].stdin.write(b"go\\n"); ranks[0].stdin.flush()
    time.sleep(120)                           # no wait(): killed ranks stay zombies for the subreaper to reap
    """
)

JOB_REAPER = textwrap.dedent(
    """
    import ctypes, json, os, signal, subprocess, sys, time
    assert ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0   # PR_SET_CHILD_SUBREAPER
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    agent = subprocess.Popen([sys.executable, "-c", *sys.argv[1:]], stdout=subprocess.PIPE, text=True)
    forks, peer = json.loads(agent.stdout.readline())
    ended = {}

    def end(pid):                             # a zombie not ours to reap still shows how it ended in /proc
        if pid in ended:
            return ended[pid]
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            return "gone"
        status = int(fields[-1])
        if fields[0] != "Z":
            return "alive"
        return "killed" if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL else status

    deadline = time.time() + 20
    while time.time() < deadline and "alive" in (end(forks), end(agent.pid) if sys.argv[4] == "all" else None):
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            time.sleep(0.01)
        else:
            ended[pid] = "killed" if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL else status
    time.sleep(0.5)                           # anything else that was going to die has died by now
    print("agent", end(agent.pid))
    print("forking rank", end(forks))
    print("peer rank", end(peer))
    print("bystander", "alive" if bystander.poll() is None else f"dead {bystander.returncode}", flush=True)
    for pid in (peer, forks, agent.pid, bystander.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    """
)


@pytest.mark.parametrize(("victim", "agent", "peer"), [("all", "killed", "killed"), ("self", "alive", "alive")])
def test_a_forked_writer_kills_its_job_or_its_rank(victim, agent, peer) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", JOB_REAPER, LAUNCHER, RANK, str(REPO / "bench"), victim],
        env=lcr_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout + proc.stderr[-2000:]
    assert proc.returncode == 0, f"the subreaper was killed ({proc.returncode}): {out}"
    assert f"agent {agent}" in proc.stdout, out
    assert "forking rank killed" in proc.stdout, out
    assert f"peer rank {peer}" in proc.stdout, out
    assert "bystander alive" in proc.stdout, out

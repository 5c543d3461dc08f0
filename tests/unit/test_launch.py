"""``lcr launch`` without a cluster: sbatch command lines and submitit's sbatch file from a recipe's launch section,
quoting of hostile user values, option parsing, the job callable's exit-code handling, and the shell helper that
slurm/train_1m.sh reads. The real submissions are in tests/slurm/ (marker ``slurm``)."""

from __future__ import annotations

import pickle
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from lcrecipes.cli import main as lcr
from lcrecipes.config import load_recipe
from lcrecipes.launch import sbatch
from lcrecipes.launch.job import JobFailed, LcrJob, run_lcr
from lcrecipes.launch.submitit_launch import SubmititLauncher, executor_params

REPO = Path(__file__).resolve().parents[2]
RECIPE = "recipes/tiny_cpu/pretrain_1.yaml"
SMALL = ["train.steps=6", "train.warmup_steps=1"]
# Spaces, both quotes, a command substitution, a backtick and a glob: none may be interpreted by a shell.
HOSTILE = "a b 'c' \"d\" $(touch PWNED) `touch PWNED2` *"
LAUNCH = ["launch.partition=gpu part", "launch.account=acct's", "launch.qos=q$(x)", "launch.constraint=a100|h100",
          "launch.nodes=2", "launch.gpus_per_node=4", "launch.cpus_per_task=12", "launch.time_min=90",
          "launch.mem_gb=200", "launch.signal_s=300", "parallel.cp=2"]


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def test_train_command_maps_every_launch_key_and_keeps_user_values_whole() -> None:
    overrides = [*SMALL, *LAUNCH, f"name={HOSTILE}"]
    cfg = load_recipe(RECIPE, overrides).cfg
    cmd = sbatch.train_command(cfg, RECIPE, overrides, cpu=False)
    assert cmd[:2] == ["sbatch", "--parsable"]
    flags = cmd[2:cmd.index(sbatch.TRAIN_SCRIPT)]
    assert flags == ["--job-name=lcr-a_b__c___d____touch_PWNED___touch_PWNED2___", "--nodes=2",
                     "--ntasks-per-node=4", "--gpus-per-node=4", "--cpus-per-task=12", "--time=90", "--mem=200G",
                     "--partition=gpu part", "--account=acct's", "--qos=q$(x)", "--constraint=a100|h100",
                     "--signal=USR1@300", "--requeue"]  # fmt: skip
    assert cmd[cmd.index(sbatch.TRAIN_SCRIPT) + 1:] == [RECIPE, *overrides]
    assert shlex.split(shlex.join(cmd)) == cmd  # what --dry-run prints is the same argv


def test_cpu_asks_for_no_gpus_and_requeue_off_is_explicit() -> None:
    cfg = load_recipe(RECIPE, [*SMALL, "launch.requeue=false", "launch.signal_s=0"]).cfg
    cmd = sbatch.train_command(cfg, RECIPE, [], cpu=True)
    assert "--gpus-per-node=0" in cmd and "--ntasks-per-node=2" in cmd
    assert "--no-requeue" in cmd and not any(c.startswith("--signal") for c in cmd)
    assert not any(c.startswith(("--partition", "--account", "--qos", "--constraint", "--mem")) for c in cmd)


def test_dry_run_prints_the_argv_and_nothing_runs(capsys) -> None:
    recipe = str(REPO / RECIPE)
    assert lcr(["launch", recipe, "--dry-run", *SMALL, "--cpu", f"name={HOSTILE}", "launch.partition=debug"]) == 0
    argv = shlex.split(capsys.readouterr().out)
    assert argv[argv.index(recipe):] == [recipe, *SMALL, f"name={HOSTILE}", "launch.partition=debug"]
    assert "--gpus-per-node=0" in argv and "--partition=debug" in argv
    assert not list(REPO.glob("PWNED*"))  # a shell that ran $(touch PWNED) would have created it here


def test_options_may_follow_the_recipe_and_mix_with_overrides(capsys) -> None:
    assert lcr(["launch", RECIPE, "train.steps=6", "--dry-run", "train.warmup_steps=1", "--cpu",
                "--sbatch-arg=--output=x.out"]) == 0
    argv = shlex.split(capsys.readouterr().out)
    assert argv[-3:] == [RECIPE, "train.steps=6", "train.warmup_steps=1"]
    assert "--output=x.out" in argv and "--gpus-per-node=0" in argv


def test_bad_override_is_a_config_error_naming_the_key(capsys) -> None:
    assert lcr(["launch", RECIPE, "--dry-run", "launch.nodes=0"]) == 2
    assert "launch.nodes" in capsys.readouterr().err


def test_submitit_sbatch_file_from_its_own_builder(tmp_path) -> None:
    overrides = [*SMALL, *LAUNCH, f"run_dir={tmp_path}/r"]
    launcher = SubmititLauncher.from_recipe(RECIPE, overrides)
    text = launcher.sbatch_text()
    for line in ["#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --cpus-per-task=12", "#SBATCH --time=90", "#SBATCH --mem=200GB",
                 "#SBATCH --partition='gpu part'", "#SBATCH --account='acct'\"'\"'s'", "#SBATCH --qos='q$(x)'",
                 "#SBATCH --constraint='a100|h100'", "#SBATCH --signal=USR1@300", "#SBATCH --requeue",
                 "export SUBMITIT_PREEMPT_SIGNAL=USR1", f"-m submitit.core._submit {tmp_path}/r/submitit"]:  # fmt: skip
        assert line in text, line
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0
    array = launcher.sbatch_text(launcher.eval_params(), array_size=3)
    assert "#SBATCH --array=0-2%3" in array and "#SBATCH --ntasks-per-node=1" in array


def test_submitit_dry_run_from_the_cli_names_the_command_safely(capsys, tmp_path) -> None:
    newline = "name=x\ntouch PWNED"  # a line break in a value must not end the comment that shows the command
    assert lcr(["launch", RECIPE, "--submitit", "--dry-run", "--cpu", *SMALL, f"run_dir={tmp_path}", newline]) == 0
    out = capsys.readouterr().out
    assert out.startswith("#!/bin/bash") and "#SBATCH --gpus-per-node=0" in out
    timeout = sbatch.collective_timeout_s(load_recipe(RECIPE).cfg.data.seq_len)
    assert f"# each task runs (pickled): lcr train {RECIPE} parallel.timeout_s={timeout} train.steps=6" in out
    assert "\ntouch PWNED" not in out and "name=x\\ntouch PWNED" in out


def test_executor_params_are_accepted_by_submitit(tmp_path) -> None:
    from submitit.slurm.slurm import _make_sbatch_string

    cfg = load_recipe(RECIPE, [*SMALL, *LAUNCH]).cfg
    params = executor_params(cfg.launch, name="x", cpu=True)
    assert params["ntasks_per_node"] == 4 and params["gpus_per_node"] == 0 and params["nodes"] == 2
    _make_sbatch_string(command="true", folder=tmp_path, **params)  # raises on an unknown key


def test_train_job_carries_the_sized_timeout_before_the_user_overrides() -> None:
    long = ["data.seq_len=1048576", "model.max_position_embeddings=1048576"]
    launcher = SubmititLauncher.from_recipe(RECIPE, [*SMALL, *long])
    job = launcher.train_job()
    assert job.argv[:3] == ["train", RECIPE, "parallel.timeout_s=2648"]
    assert job.argv[3:] == launcher.overrides
    assert job.env["TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC"] == "2648" and job.max_requeues == 10
    clone = pickle.loads(pickle.dumps(job))
    resubmit = clone.checkpoint()
    assert resubmit.function.argv == job.argv and resubmit.args == ()


def test_job_runs_an_lcr_command_and_raises_on_failure(tmp_path, capsys) -> None:
    assert run_lcr(["config", "get", RECIPE, "data.seq_len"]) == 0
    assert capsys.readouterr().out.strip() == str(load_recipe(RECIPE).cfg.data.seq_len)
    assert LcrJob(["config", "get", RECIPE, "data.seq_len"], REPO)() == 0
    with pytest.raises(JobFailed, match=r"rank 0: `lcr config` exited with code 2: .*no.such.key: no such key"):
        LcrJob(["config", "get", RECIPE, "no.such.key"], REPO)()
    assert run_lcr(["no-such-verb"]) == 2  # argparse's SystemExit becomes an exit code


def test_requeue_refused_past_max_requeues(monkeypatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    with pytest.raises(JobFailed, match="launch.max_requeues"):
        LcrJob(["train", RECIPE], REPO, max_requeues=2)._requeue(rank=0)


def test_vars_helper_for_train_1m_is_nul_separated_and_exact(tmp_path) -> None:
    run_dir = f"{tmp_path}/{HOSTILE}"
    proc = subprocess.run([sys.executable, "-m", "lcrecipes.launch.sbatch", "vars", RECIPE, f"run_dir={run_dir}",
                           "data.seq_len=4096"], capture_output=True, cwd=REPO, check=True)
    assert proc.stdout.split(b"\0") == [run_dir.encode(), b"608", b"10", b""]
    bad = subprocess.run([sys.executable, "-m", "lcrecipes.launch.sbatch", "vars", RECIPE, "launch.nodes=x"],
                         capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and "launch.nodes" in bad.stderr and bad.stdout == ""


def test_collective_timeout_matches_the_formula() -> None:
    assert [sbatch.collective_timeout_s(n) for n in (0, 511, 512, 32768, 1 << 20)] == [600, 600, 601, 664, 2648]


def test_eval_array_command() -> None:
    cfg = load_recipe(RECIPE, SMALL).cfg
    cmd = sbatch.eval_array_command(cfg, "m dir", "s.yaml", "doc_ids", "o $(x)", 5, cpu=True)
    assert "--array=0-4" in cmd and "--ntasks-per-node=1" in cmd and "--nodes=1" in cmd
    assert "--signal=B:USR1@120" in cmd and "--requeue" in cmd  # eval.sh runs Python in the batch shell
    assert cmd[-5:] == [sbatch.EVAL_SCRIPT, "m dir", "s.yaml", "doc_ids", "o $(x)"]
    with pytest.raises(sbatch.LaunchError, match="no .task, setting. slice"):
        sbatch.eval_array_command(cfg, "m", "s.yaml", "doc_ids", "o", 0, cpu=True)


def test_eval_dry_runs_from_the_recipe(capsys, tmp_path) -> None:
    recipe = "recipes/tiny_cpu/answer_only.yaml"
    args = [recipe, "--eval", "--dry-run", "--cpu", *SMALL, f"run_dir={tmp_path}/{HOSTILE}"]
    assert lcr(["launch", *args]) == 0
    argv = shlex.split(capsys.readouterr().out)
    run_dir = f"{tmp_path}/{HOSTILE}"
    assert argv[-5:] == [f"{run_dir}/hf", "eval/suites/tiny_cpu.yaml", "answer_only", f"{run_dir}/eval/tiny_cpu",
                         "tiny_cpu-answer_only"]  # the label `lcr eval RECIPE` gives
    from lcrecipes.eval.suite import load_suite
    from lcrecipes.launch.eval_array import eval_slices

    n = len(eval_slices(load_suite("eval/suites/tiny_cpu.yaml")))  # one array task per (task, setting)
    assert n > 1 and f"--array=0-{n - 1}" in argv
    assert lcr(["launch", *args, "--submitit", "--model", "m"]) == 0
    assert f"#SBATCH --array=0-{n - 1}%{n}" in capsys.readouterr().out

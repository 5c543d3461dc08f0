"""Distributed environment from torchrun or Slurm variables; world-size check; Slurm node lists."""

from __future__ import annotations

import pytest

from lcrecipes.launch.env import DistEnvError, check_world_size, detect_env, first_host


@pytest.mark.parametrize("nodelist, host", [
    ("gpu07", "gpu07"),
    ("gpu[07-09,12]", "gpu07"),
    ("gpu[007-009],cpu1", "gpu007"),
    ("a-b-1,a-b-2", "a-b-1"),
    ("node-[3,5-6]", "node-3"),
])
def test_first_host_of_slurm_nodelist(nodelist: str, host: str) -> None:
    assert first_host(nodelist) == host


def test_torchrun_variables_win_over_slurm() -> None:
    env = detect_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h0", "MASTER_PORT": "1234",
                      "SLURM_PROCID": "0", "SLURM_NTASKS": "1"})
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port, env.source) == \
        (3, 4, 1, "h0", 1234, "torchrun")


def test_slurm_variables_give_rank_and_first_host_master() -> None:
    env = detect_env({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
                      "SLURM_JOB_NODELIST": "gpu[12-15]", "SLURM_JOB_ID": "20042"})
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.source) == (5, 8, 1, "gpu12", "slurm")
    assert env.master_port == 20000 + 20042 % 20000
    explicit = detect_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_NODELIST": "n1",
                           "MASTER_ADDR": "login", "MASTER_PORT": "4000"})
    assert (explicit.master_addr, explicit.master_port, explicit.local_rank) == ("login", 4000, 0)


def test_no_launcher_is_one_local_process() -> None:
    env = detect_env({})
    assert (env.rank, env.world_size, env.source, env.master_addr) == (0, 1, "single", "127.0.0.1")
    assert env.master_port > 0


def test_bad_values_are_named() -> None:
    with pytest.raises(DistEnvError, match="RANK='x'"):
        detect_env({"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(DistEnvError, match="outside"):
        detect_env({"RANK": "2", "WORLD_SIZE": "2"})


def test_world_size_must_match_the_recipe() -> None:
    env = detect_env({"RANK": "0", "WORLD_SIZE": "2"})
    check_world_size(env, 2)
    with pytest.raises(DistEnvError, match=r"started 2 rank\(s\).*launch.nodes x launch.gpus_per_node = 4"):
        check_world_size(env, 4)

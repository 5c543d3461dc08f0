"""Shared fixtures. Tests run on CPU; `gpu` tests are skipped without CUDA, `slurm` tests without a cluster."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(os.path.dirname(__file__), "..", ".torch_extensions"))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_collection_modifyitems(config, items):
    no_cuda = pytest.mark.skip(reason="needs CUDA (marker gpu)")
    no_slurm = pytest.mark.skip(reason="needs the local Slurm (bash slurm/dev/start.sh; marker slurm)")
    have_slurm = shutil.which("sinfo") is not None
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_cuda)
        if "slurm" in item.keywords and not have_slurm:
            item.add_marker(no_slurm)


@pytest.fixture
def repo_root() -> str:
    return REPO

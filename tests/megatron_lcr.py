"""TEST ENTRY POINT: the ``lcr`` command with Megatron-Core's CUDA placement redirected to the CPU
(``tests/megatron_cpu.py``), so that ``parallel.backend=megatron`` runs on CPU-only machines over gloo. Tests start
it; the ``lcrecipes`` package never imports the redirection.

    torchrun --standalone --nproc_per_node 2 tests/megatron_lcr.py train recipes/tiny_cpu/pretrain_1.yaml \\
        parallel.backend=megatron root=/tmp/lcr train.steps=4
"""

import sys
from pathlib import Path

if __name__ == "__main__":  # guarded: dist_checkpointing starts a helper process that re-imports this module
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root (`tests`, `lcrecipes`)
    from tests.megatron_cpu import redirect_cuda_to_cpu

    redirect_cuda_to_cpu(type_as_cuda=True)
    from lcrecipes.cli import main

    sys.exit(main())

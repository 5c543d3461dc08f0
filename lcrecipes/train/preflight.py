"""Preflight: a few optimizer steps at CP=1 and at the recipe's CP, on the recipe's own data and ranks, compared.

    torchrun --nproc_per_node 2 -m lcrecipes.cli preflight recipes/tiny_cpu/pretrain_1.yaml

Both runs start from the same weights and read the same sequences. The CP=1 reference runs the recipe with
``parallel.cp=1`` on the same ranks (each CP group's ranks become data-parallel ranks of the backend, TP and PP
unchanged), while the data keeps the recipe's layout: every rank of a CP group holds the whole sequence (reference
attention ``sdpa``) and only the group's first rank keeps its targets, so the group computes exactly what one rank
would, and no backend sees a CP layout it was not built for (Megatron's RoPE slices positions by its CP group).
Token counts and losses are summed over the data ranks (DP x CP) of one TP / PP position, never over TP or PP
replicas. The verdict passes when every step's loss and gradient norm agree within the tolerances (relative;
defaults by dtype). Nothing is written to the run directory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import torch

from lcrecipes.config import Recipe
from lcrecipes.train.backends import get_backend
from lcrecipes.train.data import TrainBatches, open_split
from lcrecipes.train.loss import global_target_tokens, loss_weight, reduce_sums
from lcrecipes.train.mesh import Mesh, build_mesh
from lcrecipes.train.schedule import lr_at

log = logging.getLogger("lcrecipes.train")
# (loss, grad norm) relative tolerances per training dtype
TOLERANCES = {"fp32": (1e-5, 1e-4), "bf16": (2e-2, 5e-2)}


@dataclass
class PreflightReport:
    """Per-step global losses (nats/token) and grad norms of the CP=1 reference and of the recipe's CP."""

    cp: int
    attention: str
    loss_tol: float
    grad_tol: float
    ref_loss: list[float] = field(default_factory=list)
    cp_loss: list[float] = field(default_factory=list)
    ref_grad: list[float] = field(default_factory=list)
    cp_grad: list[float] = field(default_factory=list)

    @staticmethod
    def _rel(a: list[float], b: list[float]) -> list[float]:
        return [abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a, b)]

    @property
    def loss_diff(self) -> float:
        return max(self._rel(self.ref_loss, self.cp_loss), default=0.0)

    @property
    def grad_diff(self) -> float:
        return max(self._rel(self.ref_grad, self.cp_grad), default=0.0)

    @property
    def passed(self) -> bool:
        finite = all(torch.isfinite(torch.tensor(self.cp_loss + self.cp_grad)).tolist())
        return finite and self.loss_diff <= self.loss_tol and self.grad_diff <= self.grad_tol

    def table(self) -> str:
        lines = [f"{'step':>4}  {'loss cp=1':>12}  {f'loss cp={self.cp}':>12}  {'rel diff':>9}  "
                 f"{'grad cp=1':>11}  {f'grad cp={self.cp}':>11}  {'rel diff':>9}"]
        rows = zip(self.ref_loss, self.cp_loss, self._rel(self.ref_loss, self.cp_loss), self.ref_grad,
                   self.cp_grad, self._rel(self.ref_grad, self.cp_grad))
        for i, (a, b, da, g, h, dg) in enumerate(rows, 1):
            lines.append(f"{i:>4}  {a:>12.6f}  {b:>12.6f}  {da:>9.2e}  {g:>11.6f}  {h:>11.6f}  {dg:>9.2e}")
        verdict = "PASS" if self.passed else "FAIL"
        lines.append(f"{verdict}: CP={self.cp} ({self.attention}) vs CP=1: max loss diff {self.loss_diff:.2e} "
                     f"(tol {self.loss_tol:.0e}), max grad-norm diff {self.grad_diff:.2e} (tol {self.grad_tol:.0e})")
        return "\n".join(lines)


def _run(recipe: Recipe, mesh: Mesh, device: torch.device, attention: str, replicate: bool, steps: int,
         backend_mesh: Mesh | None = None) -> tuple[list[float], list[float]]:
    """``steps`` optimizer steps from the initial weights; returns (global losses, grad norms). The data follows
    ``mesh`` (the recipe's layout); the backend runs on ``backend_mesh`` (default ``mesh``)."""
    cfg = recipe.cfg
    backend = get_backend(cfg.parallel.backend)(recipe, backend_mesh or mesh, device, attention)
    backend.setup()
    batches = TrainBatches(open_split(cfg, "train"), cfg, mesh, replicate=replicate)
    losses, norms = [], []
    try:
        for step in range(steps):
            mbs = batches.next_step()
            tokens = global_target_tokens(mbs, mesh.data_group)
            res = backend.train_step(mbs, loss_weight(tokens), lr_at(step, cfg.train))
            losses.append(reduce_sums([res.loss_sum], mesh.data_group)[0] / max(tokens, 1))
            norms.append(res.grad_norm)
    finally:
        backend.close()
    return losses, norms


def cp1_reference(recipe: Recipe, mesh: Mesh) -> tuple[Recipe, Mesh]:
    """The reference's recipe (``parallel.cp=1``) and backend mesh (the same ranks, CP folded into DP; collective:
    builds process groups when ``mesh.cp > 1``)."""
    if mesh.cp == 1:
        return recipe, mesh
    cfg = replace(recipe.cfg, parallel=replace(recipe.cfg.parallel, cp=1))
    return replace(recipe, cfg=cfg), build_mesh(1, mesh.tp, mesh.pp)


def preflight(recipe: Recipe, steps: int = 3, attention: str | None = None, loss_tol: float | None = None,
              grad_tol: float | None = None, mesh: Mesh | None = None,
              device: torch.device | None = None) -> PreflightReport:
    """Run the comparison on this rank (collective). ``attention`` overrides ``parallel.sp`` (e.g. to check a
    new implementation); ``mesh``/``device`` default to starting the process group from the environment."""
    cfg = recipe.cfg
    if mesh is None or device is None:
        from lcrecipes.train.run import start_process

        mesh, device = start_process(recipe)
    attention = attention or cfg.parallel.sp
    ltol, gtol = TOLERANCES[cfg.train.dtype]
    report = PreflightReport(cp=mesh.cp, attention=attention, loss_tol=loss_tol or ltol, grad_tol=grad_tol or gtol)
    if mesh.cp == 1:
        log.warning("parallel.cp=1: the recipe does not split sequences; comparing sdpa with itself")
        attention = "sdpa"
    log.info("preflight: %d steps at CP=1 (reference)", steps)
    ref_recipe, ref_mesh = cp1_reference(recipe, mesh)
    report.ref_loss, report.ref_grad = _run(ref_recipe, mesh, device, "sdpa", True, steps, backend_mesh=ref_mesh)
    log.info("preflight: %d steps at CP=%d (%s)", steps, mesh.cp, attention)
    report.cp_loss, report.cp_grad = _run(recipe, mesh, device, attention, False, steps)
    return report

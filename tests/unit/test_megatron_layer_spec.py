"""The long-context recipes validate (``lcr config validate``) and the Megatron layer-spec factory picks Transformer
Engine only where it can run: ``auto`` is ``te`` with CUDA and ``transformer_engine`` importable, ``local``
otherwise (checked here on CPU; the TE branch by the ``gpu`` test). ``te`` asked for explicitly without Transformer
Engine fails with a message that names the fix. The package never imports the CPU test fixture.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from lcrecipes.cli import main as lcr
from lcrecipes.config import load_recipe

REPO = Path(__file__).resolve().parents[2]
LONG_RECIPES = sorted(str(p.relative_to(REPO)) for d in ("qwen2.5-7b-1m", "llama3.1-8b")
                      for p in (REPO / "recipes" / d).glob("[!_]*.yaml"))
HAVE_TE = importlib.util.find_spec("transformer_engine") is not None


def test_lcr_config_validate_passes_on_the_long_context_recipes(capsys, monkeypatch) -> None:
    monkeypatch.chdir(REPO)  # recipes name eval suites relative to the repository
    assert len(LONG_RECIPES) == 6
    assert lcr(["config", "validate", *LONG_RECIPES]) == 0
    assert capsys.readouterr().out.count("ok ") == len(LONG_RECIPES)


@pytest.mark.parametrize("path", LONG_RECIPES)
def test_megatron_layout_of_the_long_context_recipes_is_valid(path: str, monkeypatch) -> None:
    """qwen2.5-7b-1m asks for the TE spec itself; llama3.1-8b (a deepspeed recipe) still fits Megatron's TE spec
    (llama3 RoPE scaling, TP/CP layout) when switched to ``parallel.backend=megatron``."""
    from lcrecipes.models.megatron import resolve_layer_spec_kind, transformer_config
    from lcrecipes.train.backends.megatron import DTYPES, config_overrides

    monkeypatch.chdir(REPO)
    cfg = load_recipe(path, ["parallel.backend=megatron", "parallel.layer_spec=te"]).cfg
    assert resolve_layer_spec_kind(cfg.parallel.layer_spec) == "te"
    config = transformer_config(cfg.model.to_spec(), cfg.parallel, DTYPES[cfg.train.dtype],
                                **config_overrides(cfg, "te"))
    assert (config.tensor_model_parallel_size, config.context_parallel_size) == (cfg.parallel.tp, cfg.parallel.cp)
    if Path(path).parent.name == "qwen2.5-7b-1m":
        assert load_recipe(path).cfg.parallel.layer_spec == "te" and config.cp_comm_type == "a2a+p2p"


@pytest.mark.skipif(torch.cuda.is_available() and HAVE_TE, reason="CUDA and Transformer Engine present")
def test_auto_is_the_local_spec_without_cuda_or_transformer_engine() -> None:
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    from lcrecipes.models.megatron import layer_spec, resolve_layer_spec_kind

    assert resolve_layer_spec_kind("auto") == "local"
    spec = layer_spec("auto")
    assert spec.submodules.self_attention.submodules.core_attention is DotProductAttention


@pytest.mark.skipif(HAVE_TE, reason="Transformer Engine installed")
def test_te_without_transformer_engine_names_the_fix() -> None:
    from lcrecipes.models.megatron import layer_spec

    with pytest.raises(RuntimeError, match="Transformer Engine.*layer_spec 'local'"):
        layer_spec("te")


@pytest.mark.gpu
def test_auto_is_the_te_spec_with_cuda_and_transformer_engine() -> None:
    pytest.importorskip("transformer_engine")
    from megatron.core.extensions.transformer_engine import TEDotProductAttention

    from lcrecipes.models.megatron import layer_spec, resolve_layer_spec_kind

    assert resolve_layer_spec_kind("auto") == "te"
    assert layer_spec("auto").submodules.self_attention.submodules.core_attention is TEDotProductAttention


def test_the_package_never_imports_the_cpu_fixture() -> None:
    offenders = [str(p) for p in (REPO / "lcrecipes").rglob("*.py")
                 if "tests.megatron_cpu" in p.read_text() or "import megatron_cpu" in p.read_text()]
    assert not offenders, offenders

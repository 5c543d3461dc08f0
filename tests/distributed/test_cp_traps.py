"""Trap: DeepSpeed's HF Ulysses wrapper with `sdpa` drops the per-document mask of a packed sequence.

DeepSpeed shards the sequence contiguously and, after its all-to-all, calls HF's sdpa with the mask HF built for
the *local* chunk (none, for sdpa), so attention runs causally over the whole packed sequence and document 1 sees
document 0. Our ulysses (lcrecipes.parallel, zigzag layout, per-document masks) must not leak on the same input.
If this test ever fails on the DeepSpeed half, DeepSpeed fixed the wrapper: revisit the note in DESIGN.md.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from tests.distributed._spawn import run_distributed

BOUNDS = [0, 6, 16]  # two documents of 6 and 10 tokens, 16 tokens total (8 per rank)


def _tiny_llama():
    from transformers import AutoModelForCausalLM

    from lcrecipes.models import get_family, hf_config_from_spec

    torch.manual_seed(0)
    spec = get_family("llama").tiny_spec(num_kv_heads=2)
    return AutoModelForCausalLM.from_config(hf_config_from_spec(spec), attn_implementation="sdpa").eval()


def _tokens(first_doc_offset: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 500, (BOUNDS[-1],), generator=g)
    ids[: BOUNDS[1]] = (ids[: BOUNDS[1]] + first_doc_offset) % 500
    return ids


def _positions() -> torch.Tensor:
    return torch.cat([torch.arange(b - a) for a, b in zip(BOUNDS[:-1], BOUNDS[1:])])


def _deepspeed_logits(model, ids: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Doc-1 logits through DeepSpeed's UlyssesSPAttentionHF(sdpa), contiguous sharding as DeepSpeed does."""
    local = BOUNDS[-1] // world
    sl = slice(rank * local, (rank + 1) * local)
    with torch.no_grad():
        out = model(input_ids=ids[None, sl], position_ids=_positions()[None, sl], use_cache=False).logits[0]
    pieces = [torch.empty_like(out) for _ in range(world)]
    dist.all_gather(pieces, out)
    return torch.cat(pieces)[BOUNDS[1]:]


def _ours_logits(model, ids: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    from lcrecipes.parallel import layout
    from lcrecipes.parallel.hf import cp_forward_kwargs, hf_name, register_hf_attentions

    register_hf_attentions()
    model.set_attn_implementation(hf_name("ulysses"))
    cu = torch.tensor(BOUNDS, dtype=torch.int32)
    meta = layout.make_cp_meta(cu, world, rank)
    with torch.no_grad():
        out = model(input_ids=layout.shard(ids, cu, world, rank)[None], **cp_forward_kwargs(meta)).logits[0]
    pieces = [torch.empty_like(out) for _ in range(world)]
    dist.all_gather(pieces, out)
    return layout.unshard(pieces, cu)[BOUNDS[1]:]


def _worker(rank: int, world: int) -> tuple[float, float]:
    import deepspeed
    from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    deepspeed.init_distributed(dist_backend="gloo")  # wraps the process group run_distributed created
    model = _tiny_llama()
    cfg = model.config
    wrapper = UlyssesSPAttentionHF(attn=ALL_ATTENTION_FUNCTIONS["sdpa"], batch_size=1,
                                   attn_head_count=cfg.num_attention_heads, attn_head_size=cfg.head_dim,
                                   kv_head_count=cfg.num_key_value_heads, num_hidden_layers=cfg.num_hidden_layers,
                                   process_group=dist.group.WORLD, seq_length_is_variable=True)
    AttentionInterface.register("ds_ulysses_sdpa", wrapper)
    model.set_attn_implementation("ds_ulysses_sdpa")
    ds = [_deepspeed_logits(model, _tokens(k), rank, world) for k in (0, 7)]
    ours = [_ours_logits(model, _tokens(k), rank, world) for k in (0, 7)]
    return (ds[0] - ds[1]).abs().max().item(), (ours[0] - ours[1]).abs().max().item()


@pytest.mark.distributed
def test_deepspeed_hf_ulysses_with_sdpa_leaks_and_ours_does_not():
    (ds_change, ours_change), _ = run_distributed(_worker, 2)
    assert ds_change > 1e-3, "DeepSpeed's wrapper no longer leaks across documents: the trap is gone"
    assert ours_change < 1e-6, f"our ulysses leaks across documents (max change {ours_change})"

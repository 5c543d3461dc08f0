"""Context-parallel attention (ring, ulysses, allgather) against the single-rank sdpa reference.

Multi-process tests use real gloo ranks (``_spawn.run_distributed``); each spawn runs several cases to keep the
number of process start-ups (torch + transformers imports) small. Tolerances: fp32 1e-5, bf16 2e-2 (abs and rel).
"""

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

import lcrecipes.parallel.attention as attention_pkg
from lcrecipes.parallel.attention import ATTENTIONS, available_attentions, get_attention
from lcrecipes.parallel.attention.kernels import block_forward, merge_into
from lcrecipes.parallel.comm import gather_unshard
from lcrecipes.parallel.layout import TokenInfo, make_cp_meta, shard, unshard
from tests.distributed._spawn import run_distributed

CP_IMPLS = ["ring", "ulysses", "allgather"]
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}
HEAD_DIM = 8


def _cu(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)


def _attend(impl, inputs, cu, dtype, cp_size, cp_rank, group, device="cpu"):
    """Run ``impl`` on this rank's shard of the packed ``inputs`` = (q, k, v, dout); return out, dq, dk, dv
    gathered back to the original packed layout (fp32, CPU)."""
    meta = make_cp_meta(cu, cp_size, cp_rank, device=device)
    inputs = [x.to(device) for x in inputs]
    q, k, v = (shard(x.to(dtype), cu, cp_size, cp_rank).requires_grad_() for x in inputs[:3])
    out = get_attention(impl)(q, k, v, meta, group)
    (out.float() * shard(inputs[3], cu, cp_size, cp_rank)).sum().backward()
    return [gather_unshard(t.float(), meta, group).cpu() for t in (out, q.grad, k.grad, v.grad)]


def _compare_case(impl, case, dtype, group) -> list[str]:
    """Mismatches (as messages) of ``impl`` on ``group`` against sdpa at CP=1 for one case."""
    cu = _cu(case["lengths"])
    gen = torch.Generator().manual_seed(case.get("seed", 0))
    t, h, hkv = int(cu[-1]), case["heads"], case["kv_heads"]
    inputs = [torch.randn(t, n, HEAD_DIM, generator=gen) for n in (h, hkv, hkv, h)]
    size, rank = dist.get_world_size(group), dist.get_rank(group)
    want = _attend("sdpa", inputs, cu, dtype, 1, 0, None)
    got = _attend(impl, inputs, cu, dtype, size, rank, group)
    errors = []
    for what, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        try:
            torch.testing.assert_close(a, b, atol=TOL[dtype], rtol=TOL[dtype])
        except AssertionError as e:
            errors.append(f"{impl} cp={size} {case} {dtype} {what}: {e}")
    return errors


def _attention_worker(rank, world_size, cases, dtypes, subgroups):
    errors = []
    groups = [dist.new_group(ranks) for ranks in subgroups]  # every rank creates every group
    mine = [g for g, ranks in zip(groups, subgroups) if rank in ranks]
    for group in [None, *mine]:
        for case in cases if group is None else cases[:1]:
            for dtype in dtypes if group is None else dtypes[:1]:
                for impl in CP_IMPLS:
                    errors += _compare_case(impl, case, dtype, group)
    assert not errors, "\n".join(errors)


CASES_CP2 = [
    {"lengths": [13, 5, 22], "heads": 4, "kv_heads": 4},  # uneven lengths, none a multiple of 4
    {"lengths": [3, 1, 17, 7], "heads": 4, "kv_heads": 2, "seed": 1},  # documents shorter than 2*CP, GQA
]
CASES_CP4 = [{"lengths": [5, 2, 19, 11], "heads": 4, "kv_heads": 2, "seed": 2}]  # short docs, GQA (H_kv < cp)


@pytest.mark.distributed
def test_cp2_matches_sdpa_reference():
    run_distributed(_attention_worker, 2, CASES_CP2, [torch.float32, torch.bfloat16], [])


@pytest.mark.distributed
def test_cp4_and_cp2_subgroups_match_sdpa_reference():
    # CP over the whole world (4), and CP=2 over the non-contiguous subgroups {0, 2} and {1, 3}
    run_distributed(_attention_worker, 4, CASES_CP4, [torch.float32, torch.bfloat16], [[0, 2], [1, 3]])


# ---------------------------------------------------------------- HF end to end: tiny Llama, packed batch


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).float()


def _packed_batch(lengths, seed=0):
    """Token ids ``[T]``, next-token labels ``[T]`` (-100 at each document's last token), cu_seqlens."""
    cu = _cu(lengths)
    tokens = torch.randint(0, 96, (int(cu[-1]),), generator=torch.Generator().manual_seed(seed))
    labels = torch.cat([tokens[1:], tokens[:1]])
    labels[cu[1:].long() - 1] = -100
    return tokens, labels, cu


def _hf_step(model, impl, tokens, labels, cu, cp_size, cp_rank, group):
    """One forward/backward at CP ``cp_size``; returns logits ``[T, V]`` (original layout) and summed grads."""
    from lcrecipes.parallel.hf import cp_forward_kwargs, hf_name

    model.zero_grad(set_to_none=True)
    model.set_attn_implementation(hf_name(impl))
    meta = make_cp_meta(cu, cp_size, cp_rank)
    ids = shard(tokens, cu, cp_size, cp_rank)[None]
    local_labels = shard(labels, cu, cp_size, cp_rank, pad_value=-100)
    logits = model(input_ids=ids, **cp_forward_kwargs(meta, group)).logits[0]  # [T_local, V]
    loss = F.cross_entropy(logits, local_labels, ignore_index=-100, reduction="sum") / (labels != -100).sum()
    loss.backward()  # loss = sum over this rank's targets / global target count
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    for g in grads.values() if cp_size > 1 else []:
        dist.all_reduce(g, group=group)
    return gather_unshard(logits.detach(), meta, group), grads


def _hf_worker(rank, world_size):
    from lcrecipes.parallel.hf import register_hf_attentions

    register_hf_attentions()
    model = _tiny_llama()
    tokens, labels, cu = _packed_batch([11, 3, 18])
    ref_logits, ref_grads = _hf_step(model, "sdpa", tokens, labels, cu, 1, 0, None)
    changed = tokens.clone()
    changed[: int(cu[1])] = (changed[: int(cu[1])] + 7) % 96  # new tokens in document 0 only
    errors = []
    for impl in CP_IMPLS:
        logits, grads = _hf_step(model, impl, tokens, labels, cu, world_size, rank, None)
        other, _ = _hf_step(model, impl, changed, labels, cu, world_size, rank, None)
        checks = [("logits", logits, ref_logits, 1e-5, 1e-5)]
        checks += [(f"grad {n}", grads[n], ref_grads[n], 1e-5, 1e-4) for n in ref_grads]
        # no leak: documents 1 and 2 do not see document 0 (DeepSpeed's HF Ulysses + sdpa fails this)
        checks.append(("docs 1-2 after changing doc 0", other[int(cu[1]) :], logits[int(cu[1]) :], 1e-6, 0))
        for what, a, b, atol, rtol in checks:
            try:
                torch.testing.assert_close(a, b, atol=atol, rtol=rtol)
            except AssertionError as e:
                errors.append(f"{impl} {what}: {e}")
        if torch.allclose(other[: int(cu[1])], logits[: int(cu[1])]):
            errors.append(f"{impl}: changing document 0 did not change its logits")
    assert not errors, "\n".join(errors)


@pytest.mark.distributed
def test_hf_llama_cp2_matches_cp1_and_does_not_leak():
    run_distributed(_hf_worker, 2)


def _fail_on_rank_1(rank, world_size):
    if rank == 1:
        raise ValueError("rank 1 says boom")
    dist.barrier()  # rank 0 is stuck here until the helper terminates it


@pytest.mark.distributed
def test_run_distributed_reports_the_failing_rank():
    with pytest.raises(RuntimeError, match=r"(?s)failed on rank 1 of 2.*ValueError: rank 1 says boom"):
        run_distributed(_fail_on_rank_1, 2, timeout=60)


# ---------------------------------------------------------------- single-process checks


def test_registry_is_complete():
    folder = Path(attention_pkg.__file__).parent
    plugins = {p.stem for p in folder.glob("*.py")} - {"__init__", "base", "registry", "kernels"}
    assert set(available_attentions()) == plugins == {"sdpa", "ring", "ulysses", "allgather"}
    for name, cls in ATTENTIONS.items():
        assert cls.__module__ == f"lcrecipes.parallel.attention.{name}"
    with pytest.raises(KeyError, match="registered"):
        get_attention("flash_ring")


@pytest.mark.parametrize("impl", CP_IMPLS)
def test_cp1_equals_sdpa(impl):
    inputs = [torch.randn(21, n, HEAD_DIM) for n in (4, 2, 2, 4)]
    cu = _cu([6, 1, 14])
    got, want = (_attend(i, inputs, cu, torch.float32, 1, 0, None) for i in (impl, "sdpa"))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ring_math_kernels_on_cuda_equal_cpu_sdpa(dtype):
    inputs = [torch.randn(37, n, HEAD_DIM) for n in (4, 2, 2, 4)]
    cu = _cu([6, 1, 30])
    got = _attend("ring", inputs, cu, dtype, 1, 0, None, device="cuda")
    want = _attend("sdpa", inputs, cu, dtype, 1, 0, None)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=TOL[dtype], rtol=TOL[dtype])


def _tokens(doc: int, positions: range) -> TokenInfo:
    n = len(positions)
    return TokenInfo(torch.full((n,), doc), torch.tensor(list(positions)), torch.ones(n, dtype=torch.bool))


def test_cpu_flash_kernel_handles_fully_masked_rows_and_blocks():
    q, k, v = torch.randn(6, 4, HEAD_DIM), torch.randn(6, 2, HEAD_DIM), torch.randn(6, 2, HEAD_DIM)
    queries, keys = _tokens(0, range(0, 6)), _tokens(0, range(3, 9))  # queries 0..2 see no key
    # the trap: the raw CPU op returns lse 0 (not -inf) for a fully masked row
    bias = torch.zeros(6, 6).masked_fill(~queries.mask_for(keys), float("-inf"))
    rep = [x.repeat_interleave(2, dim=1).transpose(0, 1)[None] for x in (k, v)]
    _, raw_lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q.transpose(0, 1)[None], *rep, attn_mask=bias
    )
    assert torch.equal(raw_lse[0, :, :3], torch.zeros(4, 3))
    flash, math = (block_forward(q, k, v, queries, keys, True, 0.3, kernel=n) for n in ("cpu_flash", "math"))
    assert torch.isneginf(flash[1][:3]).all() and not flash[0][:3].any()
    for a, b in zip(flash, math):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    # a block from another document is masked entirely and leaves a merged result unchanged
    out, lse = block_forward(q, k, v, queries, queries, True, 0.3)
    before = out.clone()
    merge_into(out, lse, *block_forward(q, k, v, queries, _tokens(1, range(6)), True, 0.3))
    assert torch.equal(out, before)
    # merging the partial block with the rest gives full attention over both blocks
    both = TokenInfo.cat([queries, keys])
    full = block_forward(q, torch.cat([k, k]), torch.cat([v, v]), queries, both, True, 0.3, kernel="math")
    part = block_forward(q, k, v, queries, keys, True, 0.3)
    merge_into(out, lse, *part)
    torch.testing.assert_close(out, full[0], atol=1e-6, rtol=1e-6)


def test_hf_packed_position_ids_need_use_cache_false():
    """transformers' own sdpa honours packed position_ids only without a cache; ours never needs it."""
    from lcrecipes.parallel.hf import cp_forward_kwargs, hf_name, register_hf_attentions

    register_hf_attentions()
    model = _tiny_llama().eval()
    tokens, _, cu = _packed_batch([7, 4, 9])
    bounds = cu.tolist()
    with torch.no_grad():
        per_doc = torch.cat([model(input_ids=tokens[a:b][None]).logits[0] for a, b in zip(bounds, bounds[1:])])
        positions = torch.cat([torch.arange(b - a) for a, b in zip(bounds, bounds[1:])])[None]
        leaky = model(input_ids=tokens[None], position_ids=positions).logits[0]
        packed = model(input_ids=tokens[None], position_ids=positions, use_cache=False).logits[0]
        model.set_attn_implementation(hf_name("sdpa"))
        meta = make_cp_meta(cu, 1, 0)
        ours = model(input_ids=shard(tokens, cu, 1, 0)[None], **cp_forward_kwargs(meta)).logits[0]
    assert not torch.allclose(leaky[bounds[1] :], per_doc[bounds[1] :], atol=1e-3)  # the trap is real
    torch.testing.assert_close(packed, per_doc, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(unshard([ours], cu), per_doc, atol=1e-5, rtol=1e-5)


def test_hf_attention_rejects_missing_meta_and_wrong_positions():
    from lcrecipes.parallel.hf import hf_name, register_hf_attentions

    register_hf_attentions()
    model = _tiny_llama()
    model.set_attn_implementation(hf_name("ring"))
    tokens, _, cu = _packed_batch([5, 6])
    meta = make_cp_meta(cu, 1, 0)
    ids = shard(tokens, cu, 1, 0)[None]
    with pytest.raises(ValueError, match="cp_meta"):
        model(input_ids=ids, use_cache=False)
    with pytest.raises(ValueError, match="position_ids"):  # forgot position_ids: RoPE would see 0..T-1
        model(input_ids=ids, use_cache=False, cp_meta=meta)

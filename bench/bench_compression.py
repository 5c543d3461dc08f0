"""Benchmark of the KV-cache compression methods on a tiny random Llama (CPU, one thread).

    .venv/bin/python bench/bench_compression.py [--context 1024 4096] [--budget 0.25] [--repeats 5]

    .venv/bin/python bench/bench_compression.py --context 8192 --repeats 3   # a longer context

Prints, for each --context (the default: 1,024 tokens, where per-op overhead dominates a decode step of this
2-layer model, and 4,096, the shortest context the study evaluates), three tables:
  1. each method and mode: prefill and decode time (fastest of --repeats), total time relative to `none` in the
     same mode (target <= 1.1x), the time spent in the method's own scoring (a kvpress press's `score`; top-k
     retrieval's selection, `boundary_scores`) and the ratio to `none` without it (what our adapter, kernel glue
     and hooks cost), and measured kept bytes relative to (1 - ratio) x full (target within 1%; masking methods
     are checked against full instead);
  2. our adapter vs kvpress's own `KVPressTextGenerationPipeline` on the same press (query-agnostic, as the
     pipeline compresses the context alone): time ratio and whether the answers are identical;
  3. top-k retrieval's selection, per row of context scores: `torch.topk` vs `boundary_scores` (what the kernel
     uses), over 512 random rows: too many for the branch predictor to learn, as it learns a loop over a few.
The numbers are recorded by hand in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from kvpress import KVPressTextGenerationPipeline  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

from lcrecipes.eval.compression import METHODS, MODES, get_method, memory_claim_holds, topk_retrieval  # noqa: E402
from lcrecipes.eval.compression.base import expected_kept_fraction, n_kept_tokens  # noqa: E402
from lcrecipes.eval.compression.press import PressMethod, press_ratio  # noqa: E402

VOCAB = 256


def tiny_model(max_positions: int = 8192) -> LlamaForCausalLM:
    """2 layers, hidden 64, 4 heads, 2 KV heads, fp32, random init (seed 0); no end-of-sequence token, so
    every method generates exactly --new-tokens tokens."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=max(8192, max_positions), bos_token_id=0, eos_token_id=None,
        attn_implementation="sdpa",
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over "t0".."t255" ("t0" is BOS), so ids and text map one to one."""
    tok = Tokenizer(models.WordLevel(vocab={f"t{i}": i for i in range(VOCAB)}, unk_token="t1"))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.WhitespaceSplit(), decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="t0")


def timed(calls: dict, repeats: int) -> dict:
    """{key: (result, seconds)} for the fastest of `repeats` calls of each callable, after one warm-up each.
    Calls are interleaved round-robin so that load from other processes hits every entry alike; the minimum is
    the time least disturbed by them."""
    best = {key: (fn(), float("inf")) for key, fn in calls.items()}
    for _ in range(repeats):
        for key, fn in calls.items():
            start = time.perf_counter()
            result = fn()
            elapsed = time.perf_counter() - start
            if elapsed < best[key][1]:
                best[key] = (result, elapsed)
    return best


class ScoreClock:
    """Seconds spent inside each method's own scoring (as opposed to our adapter, the hooks and the model): the
    kvpress presses' `score`, and top-k retrieval's selection (`boundary_scores`, looked up by the kernel in its
    module). Wraps each (owner, attribute) while active; `seconds` is reset by `start()`."""

    def __init__(self, targets: list[tuple[object, str]]) -> None:
        self.targets, self.seconds, self.saved = list(dict.fromkeys(targets)), 0.0, {}

    def start(self) -> None:
        self.seconds = 0.0

    def __enter__(self) -> ScoreClock:
        for owner, attr in self.targets:
            self.saved[owner, attr] = vars(owner).get(attr)
            setattr(owner, attr, self._timed(getattr(owner, attr)))
        return self

    def __exit__(self, *exc) -> None:
        for (owner, attr), original in self.saved.items():
            if original is None:
                delattr(owner, attr)  # it was inherited
            else:
                setattr(owner, attr, original)

    def _timed(self, score):
        def timed_score(*args, **kwargs):
            start = time.perf_counter()
            try:
                return score(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return timed_score


def method_table(model, context, question, args) -> None:
    print(f"\n## methods: context {len(context)} tokens, question {len(question)}, budget {args.budget}, "
          f"{args.new_tokens} new tokens, fastest of {args.repeats}")  # fmt: skip
    print(f"{'method':20s} {'mode':15s} {'prefill ms':>10s} {'decode ms':>10s} {'x none':>7s} {'score ms':>9s} "
          f"{'x none w/o score':>16s} {'kept/exp':>9s} {'claim':>6s}")  # fmt: skip
    methods = {name: get_method(name) for name in METHODS}
    clock = ScoreClock([(m.press_cls, "score") for m in methods.values() if isinstance(m, PressMethod)]
                       + [(topk_retrieval, "boundary_scores")])

    def call(method, mode):
        clock.start()
        res = method.generate(model, None, context, question, args.budget, mode, args.new_tokens)
        return res, clock.seconds

    calls = {
        (name, mode): lambda m=method, md=mode: call(m, md)
        for mode in MODES for name, method in methods.items() if mode in method.modes
    }  # fmt: skip
    with clock:
        results = timed(calls, args.repeats)
    for (name, mode), ((res, score_s), total) in results.items():
        method, none_s = methods[name], results["none", mode][1]
        frac = expected_kept_fraction(args.budget, len(context)) if method.frees_memory else 1.0
        score = f"{score_s * 1e3:9.2f} {(total - score_s) / none_s:16.2f}" if score_s else \
            f"{'-':>9s} {'-':>16s}"
        print(f"{name:20s} {mode:15s} {res.prefill_s * 1e3:10.2f} {res.decode_s * 1e3:10.2f} {total / none_s:7.2f} "
              f"{score} {res.kv_bytes_kept / (frac * res.kv_bytes_full):9.4f} "
              f"{'ok' if memory_claim_holds(method, res, args.budget) else 'FLAG':>6s}")  # fmt: skip


def pipeline_table(model, context, question, args) -> None:
    tok = tiny_tokenizer()
    pipe = KVPressTextGenerationPipeline(model=model, tokenizer=tok)
    text = lambda ids: " " + tok.decode(ids)  # the pipeline prepends BOS ("t0") to the context text
    full_context = [0] + context
    n_keep = n_kept_tokens(args.budget, len(full_context))
    print(f"\n## adapter vs KVPressTextGenerationPipeline (query_agnostic, {n_keep}/{len(full_context)} kept)")
    print(f"{'press':20s} {'ours ms':>9s} {'kvpress ms':>10s} {'ratio':>6s} {'identical':>9s}")
    calls = {}
    for name, cls in METHODS.items():
        if issubclass(cls, PressMethod):
            method = get_method(name)
            press = method.make_press(press_ratio(len(full_context), n_keep))
            calls[name, "ours"] = lambda m=method: (
                m.generate(model, tok, full_context, question, args.budget, "query_agnostic", args.new_tokens).text
            )
            calls[name, "kvpress"] = lambda p=press: pipe(
                text(context), question=text(question), press=p, max_new_tokens=args.new_tokens
            )["answer"]
    results = timed(calls, args.repeats)
    for name in dict.fromkeys(key[0] for key in calls):
        (ours, t_ours), (theirs, t_theirs) = results[name, "ours"], results[name, "kvpress"]
        print(f"{name:20s} {t_ours * 1e3:9.2f} {t_theirs * 1e3:10.2f} {t_ours / t_theirs:6.2f} "
              f"{str(ours == theirs):>9s}")  # fmt: skip


def selection_table(n_context: int, args) -> None:
    k = n_kept_tokens(args.budget, n_context)
    rows = torch.randn(512, n_context, generator=torch.Generator().manual_seed(2))
    calls = {
        "torch.topk (values, indices)": lambda: rows.topk(k, dim=-1, sorted=False),
        "boundary_scores (kernel)": lambda: topk_retrieval.boundary_scores(rows, k),
    }
    results = timed(calls, args.repeats)
    print(f"\n## top-k selection: {len(rows)} random rows of {n_context} scores, k = {k}")
    print(f"{'selection':30s} {'us/row':>8s} {'x topk':>7s}")
    for name, (_, seconds) in results.items():
        per_row = seconds / len(rows)
        print(f"{name:30s} {per_row * 1e6:8.2f} {seconds / results[next(iter(calls))][1]:7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", type=int, nargs="+", default=[1024, 4096], help="context tokens (each)")
    parser.add_argument("--question", type=int, default=16, help="question tokens")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated per example")
    parser.add_argument("--budget", type=float, default=0.25, help="fraction of the context KV kept")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (fastest kept)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = tiny_model(max(args.context) + args.question + args.new_tokens)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device cpu, fp32")
    for n_context in args.context:
        gen = torch.Generator().manual_seed(1)
        ids = torch.randint(2, VOCAB, (n_context + args.question,), generator=gen).tolist()
        context, question = ids[:n_context], ids[n_context:]
        method_table(model, context, question, args)
        pipeline_table(model, context, question, args)
        selection_table(n_context, args)


if __name__ == "__main__":
    main()

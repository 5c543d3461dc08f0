"""Does a tiny model learn to read its context? A one-process probe of in-context lookup during pretraining.

    python bench/lookup_probe.py recipes/tiny_cpu/pretrain_1.yaml --steps 800 --every 100 \\
        --set data.synthetic.lm_doc_passages=3 data.synthetic.lm_doc_questions=8 data.synthetic.lm_doc_recall=4

Prepares the recipe's LM data with the overrides (``lcr prepare``, skipped when its shards exist), trains the
recipe's model from a seeded random init in this one process (AdamW, the recipe's lr schedule, loss on every token,
``--tokens`` tokens per step, documents never attending across each other), and every ``--every`` steps measures
on the eval shards how often the greedy next token is right where only reading the document can tell it:

- ``Q:``/``A:`` lines (``data.synthetic.lm_doc_questions``): the first content token of each answer, per question
  kind (born, year, profession, mentor, country, revenue, income). Years all start with "1", so the "year" column
  is not evidence of reading; the others have 8-40 possible values.
- ``Notes:`` lines (``data.synthetic.lm_doc_recall``): the last word of each restated sentence when it is a name,
  city, profession, hobby or animal (the copy target), not "books" or a digit (``note_other``).

With ``data.synthetic.fresh_facts`` (the tiny_cpu default) nothing can be recalled from memorised facts, so these
accuracies above their chance level measure in-context lookup. This is much cheaper than the full pipeline for
finding a pretraining set-up in which the lookup forms (issue 8).
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lcrecipes.config import load_recipe  # noqa: E402
from lcrecipes.data.prepare import manifest_tokenizer  # noqa: E402
from lcrecipes.data.shards import ShardDataset  # noqa: E402
from lcrecipes.models import hf_config_from_spec  # noqa: E402
from lcrecipes.train.hf_model import special_token_ids  # noqa: E402
from lcrecipes.train.schedule import lr_at  # noqa: E402

KINDS = (("birth year", "year"), ("born", "born"), ("profession", "profession"), ("mentor", "mentor"),
         ("country", "country"), ("revenue", "revenue"), ("income", "income"))  # fmt: skip
NOT_COPIED = {"dollars", "letters", "books", "employees", "years", "it", "river"}


def documents(ds: ShardDataset) -> list[torch.Tensor]:
    """Every packed document of a split, as its token ids."""
    out = []
    for i in range(len(ds)):
        item = ds[i]
        cu = item["cu_seqlens"].tolist()
        out += [item["input_ids"][a:b] for a, b in zip(cu[:-1], cu[1:]) if b > a]
    return out


class Targets:
    """Positions whose next token only reading the document predicts, with their kind."""

    def __init__(self, tok):
        self.tok = tok
        ids = tok.convert_tokens_to_ids
        self.nl, self.a, self.q, self.colon, self.dot, self.space = (
            ids("<0x0A>"), ids("A"), ids("Q"), ids(":"), ids("."), ids("\u2581"))  # fmt: skip
        self.notes = tok.encode("\nNotes:", add_special_tokens=False)[-3:]

    def __call__(self, x: list[int]) -> list[tuple[int, str]]:
        out, in_notes = [], False
        for p in range(1, len(x) - 2):
            if x[p - 1 : p + 2] == self.notes:
                in_notes = True
            if x[p - 1] == self.nl and x[p] == self.a and x[p + 1] == self.colon:
                in_notes = False
                j = p - 2
                while j > 0 and not (x[j] == self.q and x[j + 1] == self.colon):
                    j -= 1
                question = self.tok.decode(x[j + 2 : p - 1])
                kind = next((k for key, k in KINDS if key in question), "other")
                out.append((p + 1 + (x[p + 2] == self.space), kind))
            elif in_notes and x[p] == self.dot:
                word = self.tok.convert_ids_to_tokens(x[p - 1])
                copied = word.startswith("\u2581") and word[1:2].isalpha() and word[1:] not in NOT_COPIED
                out.append((p - 2, "note" if copied else "note_other"))
        return out


def batches(docs: list[torch.Tensor], tokens: int, gen: torch.Generator):
    """Endless padded batches of whole documents, about ``tokens`` tokens each (seeded order)."""
    while True:
        order = torch.randperm(len(docs), generator=gen).tolist()
        batch, size = [], 0
        for i in order:
            batch.append(docs[i])
            size += len(docs[i])
            if size >= tokens:
                yield pad(batch)
                batch, size = [], 0


def pad(batch: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(d) for d in batch)
    ids = torch.zeros(len(batch), n, dtype=torch.long)
    mask = torch.zeros(len(batch), n, dtype=torch.long)
    for r, d in enumerate(batch):
        ids[r, : len(d)], mask[r, : len(d)] = d, 1
    return ids, mask


@torch.no_grad()
def evaluate(model, docs: list[torch.Tensor], targets: Targets) -> dict[str, tuple[int, int]]:
    model.eval()
    hit, tot = Counter(), Counter()
    for d in docs:
        logits = model(input_ids=d[None]).logits[0]
        for p, kind in targets(d.tolist()):
            hit[kind] += int(logits[p].argmax() == d[p + 1])
            tot[kind] += 1
    model.train()
    return {k: (hit[k], tot[k]) for k in sorted(tot)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipe")
    p.add_argument("--set", nargs="*", default=[], dest="overrides", help="recipe overrides (key=value)")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--tokens", type=int, default=None, help="tokens per step (default: data.seq_len)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--save", default=None, help="save the model (HF format) here after each evaluation")
    p.add_argument("--init", default=None, help="start from this HF model directory (e.g. an earlier --save)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    overrides = [*args.overrides, f"train.steps={max(args.steps, 1)}"]  # the lr schedule's length
    cfg = load_recipe(args.recipe, overrides).cfg
    if cfg.data.kind != "lm":
        p.error(f"{args.recipe}: data.kind is {cfg.data.kind!r}; the probe pretrains on kind=lm documents")
    if not (Path(cfg.data.out_dir) / "train" / "manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "lcrecipes.cli", "prepare", args.recipe, *overrides], check=True)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(manifest_tokenizer(Path(cfg.data.out_dir) / "train"))
    train = documents(ShardDataset(Path(cfg.data.out_dir) / "train"))
    held_out = documents(ShardDataset(Path(cfg.data.out_dir) / "eval"))
    from transformers import AutoModelForCausalLM

    torch.manual_seed(cfg.train.seed)  # the recipe's init, with plain sdpa attention (one process, no CP)
    if args.init:
        model = AutoModelForCausalLM.from_pretrained(args.init, attn_implementation="sdpa", dtype=torch.float32)
    else:
        hf_cfg = hf_config_from_spec(cfg.model.to_spec(), use_cache=False, **special_token_ids(cfg))
        model = AutoModelForCausalLM.from_config(hf_cfg, attn_implementation="sdpa", dtype=torch.float32)
    targets = Targets(tok)
    print(f"{sum(t.numel() for t in model.parameters()):,} parameters; {len(train)} train / {len(held_out)} eval "
          f"documents from {cfg.data.out_dir}", flush=True)  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.optim.weight_decay,
                            betas=(cfg.optim.beta1, cfg.optim.beta2), eps=cfg.optim.eps)
    stream = batches(train, args.tokens or cfg.data.seq_len, torch.Generator().manual_seed(cfg.train.seed))
    t0, seen = time.time(), 0
    header = None
    for step in range(args.steps + 1):
        if step % args.every == 0:
            res = evaluate(model, held_out, targets)
            if header is None:
                header = list(res)
                print("| step | tokens | s | " + " | ".join(header) + " |", flush=True)
                print("|---" * (3 + len(header)) + "|")
            cells = [f"{100 * res[k][0] / res[k][1]:.0f}% of {res[k][1]}" if k in res else "-" for k in header]
            print(f"| {step} | {seen:,} | {time.time() - t0:.0f} | " + " | ".join(cells) + " |", flush=True)
            if args.save:
                model.save_pretrained(args.save)
                tok.save_pretrained(args.save)
        if step == args.steps:
            break
        ids, mask = next(stream)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg.train)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip or float("inf"))
        opt.step()
        seen += int(mask.sum())
        if math.isnan(loss.item()):
            print(f"step {step}: loss is NaN", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

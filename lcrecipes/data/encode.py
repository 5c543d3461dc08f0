"""Token ids and loss masks for one training document.

QA (``kind=qa``): the user message is ``strategy.prompt(example)``, the assistant message is
``strategy.build_target(example)``. With a chat template, the prompt is the template applied to the user turn
with the generation prompt, and the target is the rest of the full conversation; the loss covers the target up to
and including its last special token (the end-of-turn/eos token) and not the template's trailing newline.
Without a chat template the prompt is ``user + "\\n"`` and the target is ``assistant`` followed by eos.
LM (``kind=lm``): the document followed by eos, loss on every token.

Arrays: ``ids`` uint32 ``[n_tokens]``, ``mask`` uint8 ``[n_tokens]`` (1 = token is a loss target).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lcrecipes.data.example import RetrievalExample


@dataclass(eq=False)
class Encoded:
    doc_id: str
    ids: np.ndarray
    mask: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


class Encoder:
    def __init__(self, tokenizer, strategy=None):
        self.tok, self.strategy = tokenizer, strategy
        self.backend = getattr(tokenizer, "backend_tokenizer", None)
        self.eos = tokenizer.eos_token_id
        if self.eos is None:
            raise ValueError("the tokenizer has no eos token; documents and targets could not be terminated")
        added = getattr(tokenizer, "added_tokens_decoder", {})
        self.special = set(tokenizer.all_special_ids) | {i for i, t in added.items() if t.special}

    def _ids(self, texts: list[str]) -> list[list[int]]:
        if self.backend is not None:
            return [e.ids for e in self.backend.encode_batch_fast(texts, add_special_tokens=False)]
        return self.tok(texts, add_special_tokens=False)["input_ids"]

    def chat_texts(self, ex: RetrievalExample) -> tuple[str, str, bool]:
        """``(prompt_text, target_text, templated)`` for one example."""
        user, answer = self.strategy.prompt(ex), self.strategy.build_target(ex)
        if not self.tok.chat_template:
            return user + "\n", answer, False
        msgs = [{"role": "user", "content": user}]
        prompt = self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        full = self.tok.apply_chat_template(msgs + [{"role": "assistant", "content": answer}], tokenize=False)
        if not full.startswith(prompt):
            raise ValueError(
                f"example {ex.qid!r}: the chat template's conversation does not start with its "
                "generation prompt, so prompt and target tokens cannot be separated"
            )
        return prompt, full[len(prompt) :], True

    def encode_examples(self, examples: list[RetrievalExample]) -> list[Encoded]:
        """Encode a batch (one tokenizer call, so the backend can use its threads)."""
        texts = [self.chat_texts(ex) for ex in examples]
        ids = self._ids([t for p, a, _ in texts for t in (p, a)])
        return [self._qa(ex.qid, ids[2 * k], ids[2 * k + 1], texts[k][2]) for k, ex in enumerate(examples)]

    def _qa(self, doc_id: str, prompt: list[int], target: list[int], templated: bool) -> Encoded:
        specials = [j for j, t in enumerate(target) if t in self.special] if templated else []
        if specials:
            n_loss = specials[-1] + 1
        else:
            target = [*target, self.eos]
            n_loss = len(target)
        ids = np.asarray(prompt + target, dtype=np.uint32)
        mask = np.zeros(len(ids), dtype=np.uint8)
        mask[len(prompt) : len(prompt) + n_loss] = 1
        return Encoded(doc_id, ids, mask)

    def encode_documents(self, docs: list[tuple[str, str]]) -> list[Encoded]:
        """Plain documents ``(doc_id, text)``: text + eos, loss on every token."""
        out = []
        for (doc_id, _), ids in zip(docs, self._ids([text for _, text in docs])):
            arr = np.asarray([*ids, self.eos], dtype=np.uint32)
            out.append(Encoded(doc_id, arr, np.ones(len(arr), dtype=np.uint8)))
        return out

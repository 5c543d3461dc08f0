"""Data preparation config: one typed dataclass (OmegaConf structured) with defaults for the tiny CPU demo.

``DataConfig.validate()`` returns ``(key, message)`` problems instead of raising, so the config system can report
every problem of a recipe at once, each under its dotted key (prefix ``data.`` is added by the caller).
"""

from __future__ import annotations

from dataclasses import dataclass, field

SOURCES = ("synthetic", "hotpotqa", "2wiki")
KINDS = ("qa", "lm")
NEGATIVES = ("bm25", "dense")
OVERLONG = ("error", "split")
ON_BAD_RECORD = ("error", "skip")
SYNTHETIC_DOMAINS = ("in_domain", "out_of_domain", "mixed")
MAX_SEQ_LEN = 1 << 20


def _default_question_types() -> list[str]:
    return [
        "birthplace",
        "mentor_birthplace",
        "mentor_profession",
        "birth_country",
        "revenue",
        "net_income_mc",
        "compare_revenue",
    ]


@dataclass
class SyntheticConfig:
    """The synthetic world (no downloads): people/places (in-domain) and company filings (out-of-domain)."""

    # Number of invented people (in-domain entities). Names come from small fixed lists, so at most 1600.
    entities: int = 120
    # Number of invented companies, each with one filing per year in ``years``.
    companies: int = 24
    # Number of fiscal years per company (filings 2015, 2016, ...).
    years: int = 4
    # Which question families train/eval draw from: in_domain | out_of_domain | mixed.
    domain: str = "in_domain"
    # Question templates to draw from (see lcrecipes.data.synthetic.questions.QUESTION_TYPES); those not in
    # ``domain`` are ignored.
    questions: list[str] = field(default_factory=_default_question_types)
    # Fraction of question instances held out for eval (fixed partition by a hash of the instance, so train
    # never sees an eval question, whatever ``domain`` each set uses).
    eval_fraction: float = 0.2
    # kind=lm: passages (biographies, place notes, filings) concatenated into one plain document; the number of
    # documents is num_train / num_eval.
    lm_doc_passages: int = 12
    # kind=lm: fact sentences of the document's passages restated verbatim at its end ("Notes: ..."). They teach
    # the in-context lookup-and-copy that real base models bring from pretraining (seeing a fact's start again,
    # copy how it went on), which a tiny model otherwise does not learn in a few hundred steps.
    lm_doc_recall: int = 0
    # kind=lm: one-hop questions about the document's passages asked and answered at its end ("Questions:" then
    # "Q: ...", "A: ..." lines). With fresh_facts their answers can only be read from the document: the reading
    # skill a real base model brings from pretraining, which a tiny one needs taught densely to learn on a CPU.
    lm_doc_questions: int = 0
    # Draw every attribute afresh for each question and each plain document (same names, new cities, years,
    # mentors, figures; see World.variant), so that nothing can be answered from memorised facts: the model must
    # read its context. False: one fixed world, whose facts a model can memorise from the training data.
    fresh_facts: bool = False
    # End every biography with a sentence that repeats the person's city and profession ("Late in life X returned
    # to C and still worked there as a P."), so that plain text shows those words being copied, as it does names.
    repeat_attributes: bool = False
    # Seed of the world itself (entities, attributes); the question sampler uses DataConfig.seed.
    world_seed: int = 1234


@dataclass
class DataConfig:
    """Everything ``prepare`` needs to turn a source into packed shards. Token counts use the real tokenizer."""

    # Source registry key: synthetic | hotpotqa | 2wiki.
    source: str = "synthetic"
    # qa: retrieval examples (prompt from the strategy, loss on the target only); lm: plain documents, loss on
    # every token.
    kind: str = "qa"
    # Questions file (hotpotqa/2wiki): .jsonl, .json (array), .parquet or a `datasets` save_to_disk directory.
    train_path: str | None = None
    # Optional separate questions file for eval; if None the first ``num_eval`` records of train_path are eval.
    eval_path: str | None = None
    # Passage corpus for hard negatives (fields id, title, text); any reader format. None: no retrieved
    # negatives (only the distractors carried by the records).
    corpus_path: str | None = None
    # 0: corpus rows are passages already; N > 0: corpus rows are raw documents, cut into ~N-word passages.
    corpus_split_words: int = 0
    # Output directory for shards (train/, eval/), the trained tokenizer and the cache.
    out_dir: str = "runs/data/tiny_cpu"
    # Cache of corpus stores and retrieval indexes (reused across runs); None: <out_dir>/cache.
    cache_dir: str | None = None
    # HF tokenizer directory, a sentencepiece .model file, or "train" (synthetic source only: train a small
    # sentencepiece tokenizer on the synthetic corpus and save it as a HF tokenizer dir in <out_dir>/tokenizer).
    tokenizer: str = "train"
    # Vocabulary size of the trained tokenizer (tokenizer="train").
    tokenizer_vocab_size: int = 2048
    # Packed sequence length in tokens (<= 1048576).
    seq_len: int = 2048
    # Target context length per example in tokens (rendered [DOC i] passages, without question/instructions).
    context_tokens: int = 800
    # Number of train / eval examples (qa) or documents (lm); -1: all records of the source.
    num_train: int = 256
    num_eval: int = 32
    # Hard negative miner: bm25 (bm25s) | dense (sentence-transformers all-MiniLM-L6-v2, offline).
    negatives: str = "bm25"
    # Retrieved candidates per question, in rank order, before filling to context_tokens.
    negatives_top_k: int = 100
    # If retrieved candidates run out before context_tokens, fill with seeded random corpus passages.
    fill_random: bool = True
    # Near-duplicate threshold: a negative whose word-level similarity ratio with a gold passage is >= this is
    # promoted to gold (identical passages are dropped). 1.0 disables promotion.
    fuzzy_threshold: float = 0.6
    # Seed for question sampling, shuffling of docs, random fill and packing order. Same seed -> same bytes.
    seed: int = 0
    # Tokenization worker processes (1: in-process).
    workers: int = 1
    # An encoded example longer than seq_len: error (name it) | split (into seq_len pieces, each its own document).
    overlong: str = "error"
    # A bad input record: error (file, line, field) | skip (counted per reason in the manifest).
    on_bad_record: str = "error"
    # Examples per shard; a rerun skips finished shards (inputs are sharded by example range).
    examples_per_shard: int = 512
    # Sequences kept open by the first-fit packer (more: fuller sequences, more memory: 5 bytes/token each).
    open_bins: int = 4
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def validate(self) -> list[tuple[str, str]]:
        """Problems as ``(dotted key, message)``; empty when the config is usable."""
        p: list[tuple[str, str]] = []
        for key, allowed in (
            ("source", SOURCES),
            ("kind", KINDS),
            ("negatives", NEGATIVES),
            ("overlong", OVERLONG),
            ("on_bad_record", ON_BAD_RECORD),
            ("synthetic.domain", SYNTHETIC_DOMAINS),
        ):
            value = self._get(key)
            if value not in allowed:
                p.append((key, f"{value!r} is not one of {', '.join(allowed)}"))
        p += self._validate_sizes()
        p += self._validate_paths()
        return p

    def _get(self, dotted: str):
        obj = self
        for part in dotted.split("."):
            obj = getattr(obj, part)
        return obj

    def _validate_sizes(self) -> list[tuple[str, str]]:
        p = []
        if not 16 <= self.seq_len <= MAX_SEQ_LEN:
            p.append(("seq_len", f"{self.seq_len} must be in [16, {MAX_SEQ_LEN}] tokens"))
        if self.kind == "qa" and not 0 < self.context_tokens < self.seq_len and self.overlong == "error":
            p.append(
                (
                    "context_tokens",
                    f"{self.context_tokens} must be > 0 and < seq_len={self.seq_len} "
                    "(the prompt adds instructions and the target)",
                )
            )
        for key in ("num_train", "num_eval"):
            if self._get(key) < -1:
                p.append((key, "must be -1 (all) or >= 0"))
        for key, lo in (
            ("negatives_top_k", 0),
            ("workers", 1),
            ("examples_per_shard", 1),
            ("open_bins", 1),
            ("corpus_split_words", 0),
            ("synthetic.entities", 8),
            ("synthetic.companies", 4),
            ("synthetic.years", 1),
            ("synthetic.lm_doc_passages", 1),
            ("synthetic.lm_doc_recall", 0),
            ("synthetic.lm_doc_questions", 0),
            ("tokenizer_vocab_size", 300),
        ):
            if self._get(key) < lo:
                p.append((key, f"{self._get(key)} must be >= {lo}"))
        if self.synthetic.entities > 1600:
            p.append(("synthetic.entities", "at most 1600 (40 first names x 40 family names)"))
        if self.synthetic.companies > 960:
            p.append(("synthetic.companies", "at most 960 (12 x 10 x 8 name parts)"))
        if not 0.0 < self.synthetic.eval_fraction < 1.0:
            p.append(("synthetic.eval_fraction", f"{self.synthetic.eval_fraction} must be in (0, 1)"))
        if not 0.0 <= self.fuzzy_threshold <= 1.0:
            p.append(("fuzzy_threshold", f"{self.fuzzy_threshold} must be in [0, 1]"))
        return p

    def _validate_paths(self) -> list[tuple[str, str]]:
        p = []
        if self.source == "synthetic":
            from lcrecipes.data.synthetic.questions import QUESTION_TYPES

            for q in self.synthetic.questions:
                if not isinstance(q, str) or q not in QUESTION_TYPES:  # a nested list is not a type name
                    p.append(
                        (
                            "synthetic.questions",
                            f"unknown question type {q!r}; known: {', '.join(sorted(QUESTION_TYPES))}",
                        )
                    )
        else:
            if self.kind == "qa" and not self.train_path:
                p.append(("train_path", f"source {self.source!r} needs a questions file"))
            if self.kind == "lm" and not self.corpus_path:
                p.append(("corpus_path", f"kind 'lm' with source {self.source!r} needs a corpus"))
            if self.tokenizer == "train":
                p.append(("tokenizer", "'train' is only for the synthetic source; give a tokenizer dir or .model"))
        if not self.tokenizer:
            p.append(("tokenizer", "must be a tokenizer dir, a sentencepiece .model or 'train'"))
        return p


def data_config(overrides: list[str] | tuple[str, ...] = (), **fields) -> DataConfig:
    """A DataConfig from ``fields`` then dotted ``key=value`` overrides (typed: unknown keys and wrong types
    raise ValueError naming the key), validated."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    base = OmegaConf.structured(DataConfig(**fields))
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides))))
    except OmegaConfBaseException as e:
        raise ValueError(f"data config override {getattr(e, 'full_key', '')}: {str(e.msg).splitlines()[0]}") from None
    problems = cfg.validate()
    if problems:
        raise ValueError("invalid data config: " + "; ".join(f"{k}: {m}" for k, m in problems))
    return cfg

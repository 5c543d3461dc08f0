"""Tokenizers: load a HF tokenizer directory or a sentencepiece ``.model``; train a small sentencepiece unigram
model and save it as a HF tokenizer directory (tokenizer.json + chat template), so everything downstream uses
``AutoTokenizer.from_pretrained(dir)``.

The trained tokenizer has exactly ``vocab_size`` ids (padded with never-produced reserved tokens), keeps whitespace
and newlines as written (identity normalisation, no dummy prefix, byte fallback for unseen characters), splits
digits, and has Qwen-style chat tokens: ``<|im_start|>``, ``<|im_end|>`` (= eos, ends every turn) and
``<|endoftext|>`` (= pad). A given ``.model`` is converted following its normalizer spec (NFKC, whitespace
removal, dummy prefix); sentencepiece's extra nmt rules (e.g. tab -> space) are not reproduced.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Iterable
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from lcrecipes.data.hashing import atomic_dir

log = logging.getLogger(__name__)

SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)
FINGERPRINT_FILE = "lcrecipes_tokenizer.json"


def load_tokenizer(spec: str | Path) -> PreTrainedTokenizerBase:
    """A HF tokenizer directory (offline) or a sentencepiece ``.model`` file (converted in memory)."""
    path = Path(spec)
    if path.is_dir():
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if path.is_file() and path.suffix == ".model":
        return spm_to_hf(path.read_bytes())
    raise FileNotFoundError(f"tokenizer {spec!r}: expected a HF tokenizer directory or a sentencepiece .model file")


def spm_to_hf(model_proto: bytes) -> PreTrainedTokenizerFast:
    """A fast HF tokenizer equivalent to the sentencepiece unigram model ``model_proto`` (serialized bytes).

    Follows the model's normalizer spec: identity or NFKC, extra-whitespace removal, dummy prefix."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_proto)
    if proto.trainer_spec.model_type != 1:
        raise ValueError("only sentencepiece unigram models are supported; give a HF tokenizer directory instead")
    sp = spm.SentencePieceProcessor(model_proto=model_proto)
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    tok = Tokenizer(models.Unigram(vocab, unk_id=sp.unk_id(), byte_fallback=proto.trainer_spec.byte_fallback))
    norm = proto.normalizer_spec
    steps = [normalizers.NFKC()] if norm.name.startswith("nmt_nfkc") or norm.name == "nfkc" else []
    if norm.remove_extra_whitespaces:
        steps += [normalizers.Strip(left=True, right=True), normalizers.Replace(Regex(" {2,}"), " ")]
    tok.normalizer = normalizers.Sequence(steps) if steps else None
    prefix = "always" if norm.add_dummy_prefix else "never"
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=prefix, split=True)
    strip = [decoders.Strip(content=" ", left=1, right=0)] if norm.add_dummy_prefix else []
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), *strip])
    specials = [
        sp.id_to_piece(i)
        for i in range(sp.get_piece_size())
        if sp.is_control(i) or sp.is_unknown(i) or sp.id_to_piece(i) in SPECIAL
    ]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    if "<|im_end|>" in specials:
        kw = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    else:
        kw = {k: sp.id_to_piece(i) for k, i in (("eos_token", sp.eos_id()), ("bos_token", sp.bos_id())) if i >= 0}
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token=sp.id_to_piece(sp.unk_id()), model_max_length=1 << 30, **kw
    )
    if "<|im_end|>" in specials:
        hf.chat_template = CHAT_TEMPLATE
    return hf


def train_spm(texts: Iterable[str], vocab_size: int) -> bytes:
    """Train a sentencepiece unigram model on ``texts`` (split into lines); returns the serialized model.

    Single-threaded with input order kept, so the same texts give the same model bytes."""
    import sentencepiece as spm

    lines = (line for t in texts for line in t.split("\n") if line.strip())
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=lines,
        model_writer=buf,
        model_type="unigram",
        vocab_size=vocab_size,
        character_coverage=1.0,
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        user_defined_symbols=list(SPECIAL),
        unk_id=0,
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        num_threads=1,
        shuffle_input_sentence=False,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return buf.getvalue()


def train_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int, fingerprint: str) -> Path:
    """Train and save a HF tokenizer dir at ``out_dir`` (atomically); reused when ``fingerprint`` matches."""
    out_dir = Path(out_dir)
    marker = out_dir / FINGERPRINT_FILE
    if marker.exists() and json.loads(marker.read_text()).get("fingerprint") == fingerprint:
        return out_dir
    log.info("training a %d-piece sentencepiece tokenizer into %s", vocab_size, out_dir)
    proto = train_spm(texts, vocab_size)
    hf = spm_to_hf(proto)
    pad_to_vocab_size(hf, vocab_size)
    with atomic_dir(out_dir) as tmp:
        hf.save_pretrained(str(tmp))
        (tmp / "spm.model").write_bytes(proto)
        (tmp / FINGERPRINT_FILE).write_text(json.dumps({"fingerprint": fingerprint, "vocab_size": vocab_size}))
    return out_dir


def pad_to_vocab_size(tok: PreTrainedTokenizerFast, vocab_size: int) -> None:
    """Add never-produced ``<|reserved_k|>`` special tokens so ``len(tok) == vocab_size`` (a small templated
    corpus yields fewer pieces than asked for; the model's embedding size is then exactly the config's)."""
    from tokenizers import AddedToken

    missing = vocab_size - len(tok)
    if missing > 0:
        tok.add_tokens([AddedToken(f"<|reserved_{k}|>", special=True) for k in range(missing)], special_tokens=True)


def tokenizer_hash(tok: PreTrainedTokenizerBase) -> str:
    """sha256 of what decides token ids: the serialized tokenizer, special tokens and chat template."""
    h = hashlib.sha256()
    backend = getattr(tok, "backend_tokenizer", None)
    h.update((backend.to_str() if backend is not None else json.dumps(tok.get_vocab(), sort_keys=True)).encode())
    h.update(json.dumps([tok.eos_token_id, tok.pad_token_id, tok.chat_template or ""]).encode())
    return h.hexdigest()

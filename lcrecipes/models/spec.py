"""Our model spec: the architecture facts every backend, converter and planner needs, independent of HF/Megatron."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class ModelSpec:
    """A decoder-only transformer of the llama/qwen2 shape (RMSNorm, SwiGLU, RoPE, GQA).

    ``family`` is the registry key (HF ``model_type``). ``rope_scaling`` is kept verbatim (HF dict form).
    """

    family: str = "llama"
    vocab_size: int = 32000
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    ffn_hidden_size: int = 172
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    norm_eps: float = 1e-6
    qkv_bias: bool = False
    tie_embeddings: bool = False
    extra: dict = field(default_factory=dict)  # family-specific HF keys carried through unchanged

    def problems(self) -> list[tuple[str, str]]:
        """(field, message) for every inconsistent value; empty when the spec is valid."""
        out = []
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                     "ffn_hidden_size", "max_position_embeddings"):
            if getattr(self, name) <= 0:
                out.append((name, f"must be positive, got {getattr(self, name)}"))
        if self.num_kv_heads > 0 and self.num_heads % self.num_kv_heads:
            out.append(("num_kv_heads", f"{self.num_kv_heads} does not divide num_heads={self.num_heads}"))
        return out

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def matmul_params(self) -> int:
        """Parameters in matrix products: attention, MLP and the output layer; input embedding excluded."""
        attn = self.hidden_size * (self.q_size + 2 * self.kv_size) + self.q_size * self.hidden_size
        mlp = 3 * self.hidden_size * self.ffn_hidden_size
        return self.num_layers * (attn + mlp) + self.vocab_size * self.hidden_size

    def num_params(self) -> int:
        """All parameters (embeddings counted once when tied, norms and biases included)."""
        bias = self.num_layers * (self.q_size + 2 * self.kv_size) if self.qkv_bias else 0
        norms = (2 * self.num_layers + 1) * self.hidden_size
        emb = 0 if self.tie_embeddings else self.vocab_size * self.hidden_size
        return self.matmul_params() + emb + bias + norms

    def to_dict(self) -> dict:
        return asdict(self)

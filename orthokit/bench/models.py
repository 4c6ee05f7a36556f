"""Small reference models used by tests, benchmarks and the demo (real architectures, CPU-sized).

* :class:`CharGPT` — a pre-LayerNorm causal transformer for character-level language modelling.
* :class:`MLP` — a bias-free multilayer perceptron (the GPM permuted-MNIST network is ``MLP([784, 100, 100, 10])``).
* :class:`SmallCNN` — a two-conv MNIST network.

Example:
    >>> from orthokit.bench.models import CharGPT
    >>> import math, torch
    >>> model = CharGPT(vocab_size=65, d_model=32, n_layer=2, n_head=4, block_size=16)
    >>> idx = torch.randint(0, 65, (2, 16))                 # [batch, time] character ids
    >>> targets = torch.randint(0, 65, (2, 16))
    >>> logits, loss = model(idx, targets)
    >>> tuple(logits.shape), loss.ndim                       # per-position logits, scalar cross-entropy
    ((2, 16, 65), 0)
    >>> bool(abs(loss.item() - math.log(65)) < 1.0)          # untrained: close to log(vocab) = 4.17
    True
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CharGPT", "MLP", "SmallCNN"]


class _Block(nn.Module):
    def __init__(self, d: int, n_head: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.n_head = n_head
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, mlp_ratio * d, bias=False)
        self.fc_out = nn.Linear(mlp_ratio * d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.fc_out(F.gelu(self.fc(self.ln2(x))))


class CharGPT(nn.Module):
    """Character-level GPT: token + learned position embeddings, ``n_layer`` pre-LN blocks, untied LM head.

    Args:
        vocab_size: number of characters.
        d_model: width; attention uses ``n_head`` heads of ``d_model // n_head``.
        n_layer: number of transformer blocks.
        block_size: maximum context length.
    """

    def __init__(
        self, vocab_size: int, d_model: int = 128, n_layer: int = 4, n_head: int = 4, block_size: int = 128
    ) -> None:
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"d_model={d_model} must be divisible by n_head={n_head}")
        self.block_size = block_size
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(block_size, d_model)
        self.blocks = nn.ModuleList(_Block(d_model, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight") or name.endswith("fc_out.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        b, t = idx.shape
        if t > self.block_size:
            raise ValueError(f"sequence length {t} exceeds block_size {self.block_size}")
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(t, device=idx.device))
        for blk in self.blocks:
            x = blk(x)
        logits = self.lm_head(self.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss


class MLP(nn.Module):
    """Bias-free ReLU MLP with layer sizes ``sizes`` (e.g. ``[784, 100, 100, 10]``)."""

    def __init__(self, sizes: list[int], bias: bool = False) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class SmallCNN(nn.Module):
    """Conv(1→c,5) → ReLU → pool → Conv(c→2c,5) → ReLU → pool → Linear(→hidden) → Linear(→classes)."""

    def __init__(self, channels: int = 16, hidden: int = 128, n_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 5, padding=2)
        self.conv2 = nn.Conv2d(channels, 2 * channels, 5, padding=2)
        self.fc1 = nn.Linear(2 * channels * 7 * 7, hidden)
        self.fc2 = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.view(-1, 1, 28, 28)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))

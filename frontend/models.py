"""The model zoo: small plain PyTorch modules that tests and the benchmark compile.

Each model is what one of the four papers evaluates, written with ordinary PyTorch ops so that
the imported linalg shows every operator separately (Welder fuses them, Roller tiles them):

- ``MLP``: linear -> GELU -> linear, residual add, LayerNorm (a transformer FFN sub-layer).
- ``Attention``: self-attention written out op by op: one qkv linear, ``q @ k^T`` scaled,
  softmax, ``@ v``, output linear (no fused scaled_dot_product_attention).
- ``BertLayer``: ``Attention`` + residual + LayerNorm, then ``MLP`` (a BERT encoder layer).
- ``ConvBlock``: conv2d -> ReLU -> 2x2 max-pool, NCHW.
- ``LSTMLoop``: an LSTM cell applied over a sequence with ``torch._higher_order_ops.while_loop``
  (the Rammer / Cocktailer LSTM, with the loop kept as a loop).
- ``CondResidual``: a residual block taken or skipped under ``torch.cond`` on a data-dependent
  predicate (SkipNet / BlockDrop style control flow, as in Cocktailer).

Default sizes are small so that an import takes seconds and a lowered function reads on a
screen; every size is a constructor argument for the benchmark. Each model's
``example_inputs(batch=...)`` returns inputs that match its sizes. ``build(name)`` gives a
model in eval mode with seeded weights and its example inputs.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch._higher_order_ops.while_loop import while_loop


class MLP(nn.Module):
    """``LayerNorm(x + fc2(gelu(fc1(x))))`` on ``[batch, tokens, dim]``."""

    def __init__(self, dim: int = 64, hidden: int = 256, tokens: int = 8):
        super().__init__()
        self.dim, self.tokens = dim, tokens
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc2(F.gelu(self.fc1(x)))
        return self.norm(x + y)

    def example_inputs(self, batch: int = 2) -> tuple[torch.Tensor, ...]:
        return (torch.randn(batch, self.tokens, self.dim),)


class Attention(nn.Module):
    """Multi-head self-attention, one op per step, on ``[batch, tokens, dim]``."""

    def __init__(self, dim: int = 64, heads: int = 4, tokens: int = 16):
        super().__init__()
        assert dim % heads == 0
        self.dim, self.heads, self.tokens = dim, heads, tokens
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.heads
        qkv = self.qkv(x).reshape(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [b, h, t, d/h]
        scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(d // h))
        probs = torch.softmax(scores, dim=-1)
        context = torch.matmul(probs, v)  # [b, h, t, d/h]
        return self.out(context.transpose(1, 2).reshape(b, t, d))

    def example_inputs(self, batch: int = 2) -> tuple[torch.Tensor, ...]:
        return (torch.randn(batch, self.tokens, self.dim),)


class BertLayer(nn.Module):
    """One BERT encoder layer (post-norm): attention, add & norm, feed-forward, add & norm."""

    def __init__(self, dim: int = 64, heads: int = 4, hidden: int = 256, tokens: int = 16):
        super().__init__()
        self.dim, self.tokens = dim, tokens
        self.attention = Attention(dim, heads, tokens)
        self.attention_norm = nn.LayerNorm(dim)
        self.ffn = MLP(dim, hidden, tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention_norm(x + self.attention(x))
        return self.ffn(x)

    def example_inputs(self, batch: int = 2) -> tuple[torch.Tensor, ...]:
        return (torch.randn(batch, self.tokens, self.dim),)


class ConvBlock(nn.Module):
    """``max_pool2d(relu(conv2d(x)), 2)`` on NCHW ``[batch, in_channels, size, size]``."""

    def __init__(self, in_channels: int = 3, out_channels: int = 16, size: int = 16,
                 kernel: int = 3):
        super().__init__()
        self.in_channels, self.size = in_channels, size
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu(self.conv(x)), 2)

    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        return (torch.randn(batch, self.in_channels, self.size, self.size),)


class LSTMLoop(nn.Module):
    """An LSTM cell run over ``xs: [steps, batch, input_size]`` by a ``while_loop``.

    Carries ``(t, h, c)``; the body reads ``xs[t]`` with ``index_select`` so that the step
    index stays a tensor (no host read). Returns the last hidden state ``[batch, hidden]``.
    """

    def __init__(self, input_size: int = 32, hidden: int = 32, steps: int = 8):
        super().__init__()
        self.input_size, self.hidden, self.steps = input_size, hidden, steps
        self.ih = nn.Linear(input_size, 4 * hidden)
        self.hh = nn.Linear(hidden, 4 * hidden)

    def forward(self, xs: torch.Tensor) -> torch.Tensor:
        steps, batch = xs.shape[0], xs.shape[1]

        def cond(t, h, c):
            return t < steps

        def body(t, h, c):
            x = torch.index_select(xs, 0, t.reshape(1)).reshape(batch, self.input_size)
            gates = self.ih(x) + self.hh(h)
            i, f, g, o = gates.chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            return t + 1, h, c

        t0 = torch.zeros((), dtype=torch.int64)
        h0 = torch.zeros(batch, self.hidden, dtype=xs.dtype)
        c0 = torch.zeros(batch, self.hidden, dtype=xs.dtype)
        _, h, _ = while_loop(cond, body, (t0, h0, c0))
        return h

    def example_inputs(self, batch: int = 2) -> tuple[torch.Tensor, ...]:
        return (torch.randn(self.steps, batch, self.input_size),)


class CondResidual(nn.Module):
    """``x + fc2(relu(fc1(x)))`` when ``mean(x) > threshold``, else ``x`` (block skipped)."""

    def __init__(self, dim: int = 64, hidden: int = 128, threshold: float = 0.0):
        super().__init__()
        self.dim, self.threshold = dim, threshold
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def run_block(x):
            return x + self.fc2(F.relu(self.fc1(x)))

        def skip_block(x):
            return x.clone()

        return torch.cond(x.mean() > self.threshold, run_block, skip_block, (x,))

    def example_inputs(self, batch: int = 4) -> tuple[torch.Tensor, ...]:
        return (torch.randn(batch, self.dim),)


ZOO: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "attention": Attention,
    "bert_layer": BertLayer,
    "conv_block": ConvBlock,
    "lstm_loop": LSTMLoop,
    "cond_residual": CondResidual,
}


def build(name: str, *, seed: int = 0, batch: int | None = None,
          **sizes) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Zoo model ``name`` in eval mode, weights and inputs drawn from ``seed``.

    ``sizes`` go to the constructor; ``batch`` to ``example_inputs`` (its default if None).
    """
    if name not in ZOO:
        raise KeyError(f"no model '{name}' in the zoo (known: {', '.join(ZOO)})")
    torch.manual_seed(seed)
    model = ZOO[name](**sizes).eval()
    inputs = model.example_inputs() if batch is None else model.example_inputs(batch=batch)
    return model, inputs

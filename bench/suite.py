"""The benchmark workloads of issue 5: plain PyTorch modules, their inputs, their FLOPs and bytes.

Every workload is tagged with the compiler family whose claim it tests:

- ``roller``  single operators (Roller, OSDI'22: a good tile program, found fast);
- ``welder``  operator graphs whose intermediates can stay on chip (Welder, OSDI'23);
- ``grinder`` models with loops and branches (Grinder/Cocktailer, OSDI'23);
- ``rammer``  many small independent operators (Rammer, OSDI'20).

A :class:`Workload` builds its module (weights drawn from a seed with NumPy's PCG64, so that the
same seed gives the same bytes on any machine and any torch version: the benchmark relies on
this to regenerate large weights on the GPU machine instead of carrying them), draws fresh
random inputs from a seed on any device, and knows its floating-point operations and the fewest
bytes a program must move through device memory, computed from the shapes:

- FLOPs: a multiply-add is 2; a matrix product ``[m,k] @ [k,n]`` is ``2mkn``; elementwise work
  counts one per arithmetic op, with the fixed costs in ``ELEMENTWISE_FLOPS`` (GELU 8, sigmoid
  4, tanh 4, softmax 5 per element, layer norm 8 per element).  ``Cost.mm_flops`` is the matrix
  product and convolution part alone (what ``torch.utils.flop_counter`` counts).
- Bytes: every input, weight and parameter read once and every output written once, nothing
  else (intermediates are free: that is the limit Welder aims at).

With the two ceilings measured on the device (copy bandwidth, matrix-product rate) these give
each row its roofline limit ``max(flops / peak, bytes / bandwidth)``.

Control flow (the grinder rows) is written the way users write it for PyTorch: the LSTM and the
greedy decoder are Python loops (``form="python"``, what eager and ``torch.compile`` run); their
``form="while_loop"`` twins compute the same function with
``torch._higher_order_ops.while_loop``, which is what Quartet's importer keeps as ``scf.while``,
so Quartet compiles that form.  SkipNet uses ``torch.cond`` in the benchmarked form (issue 5
asks for it); its ``form="python"`` twin (a host ``if``) exists for tests and FLOP counting.
Data-dependent work (blocks taken, steps decoded) is counted at its maximum unless a ``trip``
(the measured number of blocks taken or steps decoded) is given.

Attention is written op by op (matmul, softmax, matmul), never through
``F.scaled_dot_product_attention``, so that torch-mlir imports it and Welder sees every edge.
:func:`sdpa_twin` switches a module's attention to PyTorch's fused SDPA for one peer of the
benchmark (what an expert writes by hand); nothing compiles that form.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from quartet.frontend import zoo as model_zoo
from quartet.frontend.zoo import init_parameters  # noqa: F401  (one copy, shared with the zoo)

FAMILIES = ("roller", "welder", "grinder", "rammer")

#: FLOPs charged per element for elementwise functions (one per add/mul; see module docstring)
ELEMENTWISE_FLOPS = {"gelu": 8, "sigmoid": 4, "tanh": 4, "softmax": 5, "layernorm": 8}

_LSTM_CELL_FLOPS = 3 * ELEMENTWISE_FLOPS["sigmoid"] + 2 * ELEMENTWISE_FLOPS["tanh"] + 3 + 1


# --------------------------------------------------------------------------------------------
# Costs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cost:
    """FLOPs (``mm_flops`` of them in matrix products/convolutions) and the fewest bytes moved."""

    flops: float
    bytes: float
    mm_flops: float = 0.0

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.flops + other.flops, self.bytes + other.bytes,
                    self.mm_flops + other.mm_flops)

    def scale(self, k: float) -> "Cost":
        return Cost(self.flops * k, self.bytes * k, self.mm_flops * k)

    @property
    def intensity(self) -> float:
        """Arithmetic intensity, FLOPs per byte."""
        return self.flops / self.bytes


def _linear(m: int, k: int, n: int, bias: bool = True) -> Cost:
    """FLOPs of ``[m,k] @ [k,n]`` (+ bias); no bytes (the caller counts tensors)."""
    mm = 2.0 * m * k * n
    return Cost(mm + (m * n if bias else 0), 0.0, mm)


def _elementwise(n: int, per: float) -> Cost:
    return Cost(float(n) * per, 0.0, 0.0)


def _bytes(nelem: float, itemsize: int) -> Cost:
    return Cost(0.0, float(nelem) * itemsize, 0.0)


# --------------------------------------------------------------------------------------------
# Modules: single operators (roller)
# --------------------------------------------------------------------------------------------


class Matmul(nn.Module):
    """``a @ b``."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.matmul(a, b)


class Conv2d(nn.Module):
    """A 2-D convolution, NCHW, stride 1, no bias; the filters are a parameter (a weight)."""

    def __init__(self, cin: int, cout: int, kernel: int, padding: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=padding, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Softmax(nn.Module):
    """Softmax over the last dimension."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x, dim=-1)


class LayerNorm(nn.Module):
    """Layer norm over the last dimension with a learned scale and shift."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


class BiasGeluScale(nn.Module):
    """``gelu(x + b) * s`` with ``b`` and ``s`` per-column vectors (inputs, like ``x``)."""

    def forward(self, x: torch.Tensor, b: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return F.gelu(x + b) * s


# --------------------------------------------------------------------------------------------
# Modules: transformer pieces (welder)
# --------------------------------------------------------------------------------------------


class MLP(nn.Module):
    """Transformer feed-forward sub-layer: ``LayerNorm(x + fc2(gelu(fc1(x))))``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.fc2(F.gelu(self.fc1(x))))


class Attention(nn.Module):
    """Self-attention op by op: qkv linear, ``q @ k^T`` scaled, softmax, ``@ v``, out linear."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        assert dim % heads == 0
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    sdpa = False        # sdpa_twin: F.scaled_dot_product_attention instead of the ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.heads
        qkv = self.qkv(x).reshape(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [b, h, t, d/h]
        if self.sdpa:
            context = F.scaled_dot_product_attention(q, k, v)
            return self.out(context.transpose(1, 2).reshape(b, t, d))
        scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(d // h))
        probs = torch.softmax(scores, dim=-1)
        context = torch.matmul(probs, v)  # [b, h, t, d/h]
        return self.out(context.transpose(1, 2).reshape(b, t, d))


class CausalAttention(Attention):
    """:class:`Attention` with a causal mask: key ``j`` is hidden from query ``i`` when ``j > i``
    (GPT). The mask is a boolean buffer, filled with ``-inf`` by ``masked_fill``."""

    def __init__(self, dim: int, heads: int, tokens: int):
        super().__init__(dim, heads)
        self.register_buffer("mask", torch.triu(torch.ones(tokens, tokens, dtype=torch.bool), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.heads
        qkv = self.qkv(x).reshape(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if self.sdpa:
            context = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.out(context.transpose(1, 2).reshape(b, t, d))
        scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(d // h))
        scores = scores.masked_fill(self.mask[:t, :t], float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        context = torch.matmul(probs, v)
        return self.out(context.transpose(1, 2).reshape(b, t, d))


class PreNormBlock(nn.Module):
    """A pre-norm transformer block (ViT, GPT-2): ``x + attn(LN(x))``, then
    ``x + fc2(gelu(fc1(LN(x))))``; causal attention when ``causal``."""

    def __init__(self, dim: int, heads: int, hidden: int, tokens: int, causal: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = CausalAttention(dim, heads, tokens) if causal else Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


@contextlib.contextmanager
def sdpa_twin(module: nn.Module):
    """Within the block, every :class:`Attention` of ``module`` runs PyTorch's fused
    ``F.scaled_dot_product_attention`` (the same function; causal for :class:`CausalAttention`).
    Yields whether the module has any attention (no twin otherwise)."""
    found = [m for m in module.modules() if isinstance(m, Attention)]
    for m in found:
        m.sdpa = True
    try:
        yield bool(found)
    finally:
        for m in found:
            m.sdpa = False


class BertLayer(nn.Module):
    """A post-norm BERT encoder layer: attention, add & norm, then :class:`MLP`."""

    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.attention = Attention(dim, heads)
        self.attention_norm = nn.LayerNorm(dim)
        self.ffn = MLP(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention_norm(x + self.attention(x))
        return self.ffn(x)


class Bert(nn.Module):
    """A stack of :class:`BertLayer` (BERT-base: 12 layers, 768 wide, 12 heads, 3072 hidden)."""

    def __init__(self, layers: int, dim: int, heads: int, hidden: int):
        super().__init__()
        self.layers = nn.ModuleList(BertLayer(dim, heads, hidden) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


# --------------------------------------------------------------------------------------------
# Modules: control flow (grinder)
# --------------------------------------------------------------------------------------------


def _lstm_cell(gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    i, f, g, o = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, c


class LSTM(nn.Module):
    """A hand-written stacked LSTM over ``xs: [steps, batch, input]``; returns the top layer's
    last hidden state ``[batch, hidden]``.  Initial states are zero (part of the model).

    ``form="python"``: a Python loop over steps and layers (what users write; eager and
    torch.compile run it, torch.compile unrolls it).  ``form="while_loop"``: the step loop is a
    ``while_loop`` carrying ``(t, h[layers], c[layers])`` and reading ``xs[t]`` with
    ``index_select``; layers are unrolled inside the body.  Both compute the same function.
    """

    def __init__(self, layers: int, hidden: int, input_size: int, form: str = "python"):
        super().__init__()
        if form not in ("python", "while_loop"):
            raise ValueError(f"LSTM form must be 'python' or 'while_loop', not {form!r}")
        self.layers, self.hidden, self.input_size, self.form = layers, hidden, input_size, form
        # Layer 0 reads the input; deeper layers read the hidden state below (same width here).
        self.w_ih = nn.Parameter(torch.empty(layers, 4 * hidden, input_size))
        self.w_hh = nn.Parameter(torch.empty(layers, 4 * hidden, hidden))
        self.bias = nn.Parameter(torch.empty(layers, 4 * hidden))
        if layers > 1 and input_size != hidden:
            raise ValueError("this LSTM needs input_size == hidden when it has several layers")

    def _layer(self, l: int, x, h, c):
        gates = F.linear(x, self.w_ih[l]) + F.linear(h, self.w_hh[l]) + self.bias[l]
        return _lstm_cell(gates, c)

    def forward(self, xs: torch.Tensor) -> torch.Tensor:
        steps, batch = xs.shape[0], xs.shape[1]
        if self.form == "python":
            hs = [xs.new_zeros(batch, self.hidden) for _ in range(self.layers)]
            cs = [xs.new_zeros(batch, self.hidden) for _ in range(self.layers)]
            for t in range(steps):
                x = xs[t]
                for l in range(self.layers):
                    hs[l], cs[l] = self._layer(l, x, hs[l], cs[l])
                    x = hs[l]
            return hs[-1]

        from torch._higher_order_ops.while_loop import while_loop

        def cond(t, h, c):
            return t < steps

        def body(t, h, c):
            x = torch.index_select(xs, 0, t.reshape(1)).reshape(batch, self.input_size)
            new_h, new_c = [], []
            for l in range(self.layers):
                hl, cl = self._layer(l, x, h[l], c[l])
                new_h.append(hl)
                new_c.append(cl)
                x = hl
            return t + 1, torch.stack(new_h), torch.stack(new_c)

        t0 = torch.zeros((), dtype=torch.int64, device=xs.device)
        h0 = xs.new_zeros(self.layers, batch, self.hidden)
        c0 = xs.new_zeros(self.layers, batch, self.hidden)
        _, h, _ = while_loop(cond, body, (t0, h0, c0))
        return h[-1]


class GRU(nn.Module):
    """A hand-written stacked GRU (PyTorch's gate equations, gates ``r, z, n``) over ``xs:
    [steps, batch, input]``; returns the top layer's last hidden state.  The forms are the
    LSTM's: a Python loop, or a ``while_loop`` over steps with the layers unrolled inside."""

    def __init__(self, layers: int, hidden: int, input_size: int, form: str = "python"):
        super().__init__()
        if form not in ("python", "while_loop"):
            raise ValueError(f"GRU form must be 'python' or 'while_loop', not {form!r}")
        if layers > 1 and input_size != hidden:
            raise ValueError("this GRU needs input_size == hidden when it has several layers")
        self.layers, self.hidden, self.input_size, self.form = layers, hidden, input_size, form
        self.w_ih = nn.Parameter(torch.empty(layers, 3 * hidden, input_size))
        self.w_hh = nn.Parameter(torch.empty(layers, 3 * hidden, hidden))
        self.b_ih = nn.Parameter(torch.empty(layers, 3 * hidden))
        self.b_hh = nn.Parameter(torch.empty(layers, 3 * hidden))

    def _layer(self, l: int, x, h):
        ir, iz, inn = F.linear(x, self.w_ih[l], self.b_ih[l]).chunk(3, dim=1)
        hr, hz, hn = F.linear(h, self.w_hh[l], self.b_hh[l]).chunk(3, dim=1)
        r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
        return (1 - z) * torch.tanh(inn + r * hn) + z * h

    def forward(self, xs: torch.Tensor) -> torch.Tensor:
        steps, batch = xs.shape[0], xs.shape[1]
        if self.form == "python":
            hs = [xs.new_zeros(batch, self.hidden) for _ in range(self.layers)]
            for t in range(steps):
                x = xs[t]
                for l in range(self.layers):
                    hs[l] = self._layer(l, x, hs[l])
                    x = hs[l]
            return hs[-1]

        from torch._higher_order_ops.while_loop import while_loop

        def cond(t, h):
            return t < steps

        def body(t, h):
            x = torch.index_select(xs, 0, t.reshape(1)).reshape(batch, self.input_size)
            new_h = []
            for l in range(self.layers):
                x = self._layer(l, x, h[l])
                new_h.append(x)
            return t + 1, torch.stack(new_h)

        t0 = torch.zeros((), dtype=torch.int64, device=xs.device)
        h0 = xs.new_zeros(self.layers, batch, self.hidden)
        _, h = while_loop(cond, body, (t0, h0))
        return h[-1]


class ResidualBlock(nn.Module):
    """``x + fc2(relu(fc1(x)))``."""

    def __init__(self, width: int):
        super().__init__()
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.relu(self.fc1(x)))


class Skip(nn.Module):
    """The branch of a skipped block: a copy of ``x`` (``torch.cond`` branches may not alias)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


class SkipNet(nn.Module):
    """Residual blocks, each run or skipped on a data-dependent gate ``sum(x * g_i) > 0``
    (SkipNet/BlockDrop as in Cocktailer).  ``form="cond"`` guards each block with
    ``torch.cond``; ``form="python"`` with a host ``if`` (same function)."""

    def __init__(self, blocks: int, width: int, form: str = "cond"):
        super().__init__()
        if form not in ("cond", "python"):
            raise ValueError(f"SkipNet form must be 'cond' or 'python', not {form!r}")
        self.form = form
        self.gates = nn.Parameter(torch.empty(blocks, width))
        self.blocks = nn.ModuleList(ResidualBlock(width) for _ in range(blocks))
        self.skip = Skip()

    def gate(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return (x * self.gates[i]).sum() > 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            if self.form == "cond":
                x = torch.cond(self.gate(i, x), block, self.skip, (x,))
            elif bool(self.gate(i, x)):
                x = block(x)
            else:
                x = self.skip(x)
        return x

    def blocks_taken(self, x: torch.Tensor) -> int:
        """How many blocks run on input ``x`` (evaluated with host branches)."""
        taken = 0
        with torch.no_grad():
            for i, block in enumerate(self.blocks):
                if bool(self.gate(i, x)):
                    x = block(x)
                    taken += 1
        return taken


class DecoderStep(nn.Module):
    """One greedy step of an LSTM decoder: embed the token, LSTM cell, project, argmax."""

    def __init__(self, width: int, vocab: int):
        super().__init__()
        self.embed = nn.Parameter(torch.empty(vocab, width))
        self.ih = nn.Linear(width, 4 * width)
        self.hh = nn.Linear(width, 4 * width, bias=False)
        self.out = nn.Linear(width, vocab)

    def forward(self, tok: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        x = torch.index_select(self.embed, 0, tok)
        h, c = _lstm_cell(self.ih(x) + self.hh(h), c)
        return torch.argmax(self.out(h), dim=-1), h, c


class GreedyDecoder(nn.Module):
    """Greedy decoding from an encoder state ``(h0, c0)`` (batch 1): start from token ``BOS``,
    stop after emitting ``EOS`` or after ``max_steps`` tokens.  Returns the tokens ``[1,
    max_steps]`` (``EOS`` after the stop) and the last hidden state.

    ``form="python"``: a Python loop whose stop reads the token on the host (what users write).
    ``form="while_loop"``: the same loop as a ``while_loop`` whose condition is on the device.
    ``gain`` scales the input and recurrent matrices (4 makes the greedy dynamics wander
    instead of settling on one token) and ``eos_bias`` is added to the EOS logit: with 4 and
    0.13 decodes of random encoder states stop after 3 to 64 steps (median about 20).
    """

    BOS, EOS = 1, 0

    def __init__(self, width: int, vocab: int, max_steps: int, form: str = "python",
                 eos_bias: float = 0.0, gain: float = 1.0):
        super().__init__()
        if form not in ("python", "while_loop"):
            raise ValueError(f"GreedyDecoder form must be 'python' or 'while_loop', not {form!r}")
        self.form, self.max_steps, self.eos_bias, self.gain = form, max_steps, eos_bias, gain
        self.step = DecoderStep(width, vocab)

    def post_init(self) -> None:
        with torch.no_grad():
            self.step.ih.weight *= self.gain
            self.step.hh.weight *= self.gain
            self.step.out.bias[self.EOS] += self.eos_bias

    def forward(self, h: torch.Tensor, c: torch.Tensor):
        tok = torch.full((1,), self.BOS, dtype=torch.int64, device=h.device)
        if self.form == "python":
            toks = []
            for _ in range(self.max_steps):
                tok, h, c = self.step(tok, h, c)
                toks.append(tok)
                if int(tok.item()) == self.EOS:
                    break
            seq = torch.stack(toks, dim=1)
            pad = torch.full((1, self.max_steps - seq.shape[1]), self.EOS, dtype=torch.int64,
                             device=h.device)
            return torch.cat([seq, pad], dim=1), h

        from torch._higher_order_ops.while_loop import while_loop

        max_steps = self.max_steps

        def cond(i, tok, h, c, out):
            return (i < max_steps) & (tok.reshape(()) != self.EOS)

        def body(i, tok, h, c, out):
            tok, h, c = self.step(tok, h, c)
            positions = torch.arange(max_steps, device=out.device).reshape(1, max_steps)
            out = torch.where(positions == i, tok.reshape(1, 1), out)
            return i + 1, tok, h, c, out

        i0 = torch.zeros((), dtype=torch.int64, device=h.device)
        out0 = torch.full((1, max_steps), self.EOS, dtype=torch.int64, device=h.device)
        _, _, h, _, out = while_loop(cond, body, (i0, tok, h, c, out0))
        return out, h

    @classmethod
    def steps_of(cls, tokens: torch.Tensor) -> int:
        """Steps decoded, read off the output tokens (the first EOS is the last step)."""
        row = tokens.reshape(-1).tolist()
        return row.index(cls.EOS) + 1 if cls.EOS in row else len(row)


# --------------------------------------------------------------------------------------------
# Modules: parallel branches (rammer)
# --------------------------------------------------------------------------------------------


class BranchyCells(nn.Module):
    """Cells of parallel conv branches (1x1 and 3x3 alternating, each conv+bias+relu), the
    branch outputs averaged into the next cell's input; NCHW."""

    def __init__(self, cells: int, branches: int, channels: int):
        super().__init__()
        self.cells = nn.ModuleList(
            nn.ModuleList(
                nn.Conv2d(channels, channels, 1 if b % 2 == 0 else 3, padding=0 if b % 2 == 0 else 1)
                for b in range(branches)
            )
            for _ in range(cells)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for cell in self.cells:
            x = torch.stack([F.relu(conv(x)) for conv in cell], dim=0).mean(dim=0)
        return x


class InceptionBlock(nn.Module):
    """GoogLeNet's inception module: a 1x1 branch, 1x1 -> 3x3, 1x1 -> 5x5 and 3x3 max-pool ->
    1x1 (every conv + bias + relu), concatenated along the channels; NCHW."""

    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, cp: int):
        super().__init__()
        self.b1 = nn.Conv2d(cin, c1, 1)
        self.b3r, self.b3 = nn.Conv2d(cin, c3r, 1), nn.Conv2d(c3r, c3, 3, padding=1)
        self.b5r, self.b5 = nn.Conv2d(cin, c5r, 1), nn.Conv2d(c5r, c5, 5, padding=2)
        self.bp = nn.Conv2d(cin, cp, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.relu(self.b1(x)),
                          F.relu(self.b3(F.relu(self.b3r(x)))),
                          F.relu(self.b5(F.relu(self.b5r(x)))),
                          F.relu(self.bp(F.max_pool2d(x, 3, stride=1, padding=1)))], dim=1)


#: GoogLeNet's inception (3a) and (3b) (Szegedy et al. 2015, table 1): (1x1, 3x3 reduce, 3x3,
#: 5x5 reduce, 5x5, pool proj) output channels
INCEPTION_3 = ((64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64))


def inception_widths(cin: int, scale: float = 1.0) -> list[tuple[int, ...]]:
    """(cin, widths...) of each block of :data:`INCEPTION_3`, channels multiplied by ``scale``."""
    out = []
    for widths in INCEPTION_3:
        w = tuple(max(1, int(c * scale)) for c in widths)
        out.append((cin,) + w)
        cin = w[0] + w[2] + w[4] + w[5]
    return out


class Inception(nn.Module):
    """Inception blocks (3a) and (3b) of GoogLeNet in a row."""

    def __init__(self, cin: int, scale: float = 1.0):
        super().__init__()
        self.blocks = nn.ModuleList(InceptionBlock(*w) for w in inception_widths(cin, scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


# --------------------------------------------------------------------------------------------
# Deterministic weights
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Workloads
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputSpec:
    """One input: ``shape(sizes)``; random normal times ``scale``; ``dtype`` None = workload's."""

    shape: Callable[[dict], tuple[int, ...]]
    scale: float = 1.0
    dtype: torch.dtype | None = None
    high: int | None = None      # integers uniform in [0, high) (token ids) instead of normals


@dataclass(frozen=True)
class Workload:
    """A benchmark row: how to build the module and its inputs, and what it costs.

    ``forms``: the module's formulations; ``forms[0]`` is what eager and torch.compile run,
    ``quartet_form`` what Quartet compiles (same function).  ``host_sync``: the eager call
    reads device values on the host (control flow), so it cannot be captured as a CUDA graph.
    ``trip``: for data-dependent work, ``trip(module, inputs, outputs) -> int`` (blocks taken,
    steps decoded); ``cost(trip=...)`` then counts that much work.
    """

    name: str
    family: str
    title: str
    dtype: torch.dtype
    make: Callable[..., nn.Module]
    input_specs: tuple[InputSpec, ...]
    cost_fn: Callable[[dict, int, Any], Cost]
    sizes: dict = field(default_factory=dict)
    tiny: dict = field(default_factory=dict)
    forms: tuple[str, ...] = ("plain",)
    quartet_form: str = "plain"
    host_sync: bool = False
    trip: Callable[[nn.Module, tuple, tuple], int] | None = None
    trip_max: Callable[[dict], int] | None = None
    notes: str = ""
    #: ``(module, seed)`` -> module with its weights drawn; ``draw_dtype`` the type they are
    #: drawn in before one rounding to the workload's dtype
    init: Callable[[nn.Module, int], nn.Module] = init_parameters
    draw_dtype: torch.dtype = torch.float64

    def __post_init__(self):
        assert self.family in FAMILIES, self.family
        assert self.quartet_form in self.forms, (self.name, self.quartet_form)

    # -- building ------------------------------------------------------------------------

    def sizes_for(self, tiny: bool = False) -> dict:
        return dict(self.tiny if tiny else self.sizes)

    def module(self, seed: int = 0, *, device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None, tiny: bool = False,
               form: str | None = None) -> nn.Module:
        """The module in eval mode with weights from ``seed``, on ``device`` in ``dtype``.

        Weights are drawn in float64 on the CPU and rounded once to ``dtype``: the same seed
        gives the same bytes everywhere.
        """
        form = form or self.forms[0]
        if form not in self.forms:
            raise ValueError(f"{self.name}: no form {form!r} (has {', '.join(self.forms)})")
        sizes = self.sizes_for(tiny)
        m = self.make(sizes, form)
        m = m.to(self.draw_dtype)
        self.init(m, seed)
        return m.to(device=device, dtype=dtype or self.dtype).eval()

    def inputs(self, seed: int, *, device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None, tiny: bool = False) -> tuple[torch.Tensor, ...]:
        """Fresh random inputs drawn from ``seed`` on ``device`` (normal times the spec's scale)."""
        sizes = self.sizes_for(tiny)
        g = torch.Generator(device=device)
        g.manual_seed(int(seed))
        out = []
        for spec in self.input_specs:
            if spec.high is not None:
                high = spec.high(sizes) if callable(spec.high) else spec.high
                out.append(torch.randint(0, high, spec.shape(sizes), generator=g,
                                         device=device, dtype=spec.dtype or torch.int64))
                continue
            dt = spec.dtype or dtype or self.dtype
            t = torch.randn(spec.shape(sizes), generator=g, device=device, dtype=torch.float32)
            out.append((t * spec.scale).to(dt))
        return tuple(out)

    # -- cost ----------------------------------------------------------------------------

    def itemsize(self, dtype: torch.dtype | None = None) -> int:
        return torch.empty((), dtype=dtype or self.dtype).element_size()

    def cost(self, *, tiny: bool = False, trip: float | None = None,
             dtype: torch.dtype | None = None) -> Cost:
        """FLOPs and fewest bytes; ``trip`` None counts data-dependent work at its maximum."""
        return self.cost_fn(self.sizes_for(tiny), self.itemsize(dtype), trip)

    @property
    def data_dependent(self) -> bool:
        return self.trip is not None


# -- cost functions, one per kind of workload ---------------------------------------------


def _cost_matmul(s, isz, trip):
    m, k, n = s["m"], s["k"], s["n"]
    return _linear(m, k, n, bias=False) + _bytes(m * k + k * n + m * n, isz)


def _conv_out(s):
    return s["h"] + 2 * s["pad"] - s["r"] + 1


def _cost_conv(s, isz, trip):
    n, c, h, k, r = s["n"], s["c"], s["h"], s["k"], s["r"]
    oh = _conv_out(s)
    mm = 2.0 * n * k * oh * oh * c * r * r
    return Cost(mm, 0.0, mm) + _bytes(n * c * h * h + k * c * r * r + n * k * oh * oh, isz)


def _cost_softmax(s, isz, trip):
    e = s["rows"] * s["cols"]
    return _elementwise(e, ELEMENTWISE_FLOPS["softmax"]) + _bytes(2 * e, isz)


def _cost_layernorm(s, isz, trip):
    e = s["rows"] * s["cols"]
    return _elementwise(e, ELEMENTWISE_FLOPS["layernorm"]) + _bytes(2 * e + 2 * s["cols"], isz)


def _cost_gelu(s, isz, trip):
    e = s["rows"] * s["cols"]
    return _elementwise(e, 1 + ELEMENTWISE_FLOPS["gelu"] + 1) + _bytes(2 * e + 2 * s["cols"], isz)


def _mlp_flops(t, d, hd) -> Cost:
    return (_linear(t, d, hd) + _elementwise(t * hd, ELEMENTWISE_FLOPS["gelu"])
            + _linear(t, hd, d) + _elementwise(t * d, 1 + ELEMENTWISE_FLOPS["layernorm"]))


def _mlp_params(d, hd) -> int:
    return d * hd + hd + hd * d + d + 2 * d


def _attention_flops(b, s, d, heads) -> Cost:
    t, dh = b * s, d // heads
    scores = b * heads * s * s
    qk = 2.0 * scores * dh
    return (_linear(t, d, 3 * d) + Cost(qk, 0.0, qk) + _elementwise(scores, 1)
            + _elementwise(scores, ELEMENTWISE_FLOPS["softmax"]) + Cost(qk, 0.0, qk)
            + _linear(t, d, d))


def _attention_params(d) -> int:
    return 3 * d * d + 3 * d + d * d + d


def _cost_mlp(s, isz, trip):
    t = s["batch"] * s["tokens"]
    return _mlp_flops(t, s["dim"], s["hidden"]) + _bytes(2 * t * s["dim"] + _mlp_params(s["dim"], s["hidden"]), isz)


def _cost_attention(s, isz, trip):
    t = s["batch"] * s["tokens"]
    return (_attention_flops(s["batch"], s["tokens"], s["dim"], s["heads"])
            + _bytes(2 * t * s["dim"] + _attention_params(s["dim"]), isz))


def _cost_bert(s, isz, trip):
    b, n, d, hd = s["batch"], s["tokens"], s["dim"], s["hidden"]
    t = b * n
    layer = (_attention_flops(b, n, d, s["heads"])
             + _elementwise(t * d, 1 + ELEMENTWISE_FLOPS["layernorm"]) + _mlp_flops(t, d, hd))
    params = _attention_params(d) + 2 * d + _mlp_params(d, hd)
    return layer.scale(s["layers"]) + _bytes(2 * t * d + s["layers"] * params, isz)


def _cost_block(s, isz, trip):
    b, n, d, hd = s["batch"], s["tokens"], s["dim"], s["hidden"]
    t = b * n
    block = (_elementwise(t * d, ELEMENTWISE_FLOPS["layernorm"]).scale(2)
             + _attention_flops(b, n, d, s["heads"]) + _elementwise(t * d, 1).scale(2)
             + _linear(t, d, hd) + _elementwise(t * hd, ELEMENTWISE_FLOPS["gelu"])
             + _linear(t, hd, d))
    params = _attention_params(d) + 4 * d + d * hd + hd + hd * d + d
    return block + _bytes(2 * t * d + params, isz)


def _cost_lstm(s, isz, trip):
    L, H, In, T, B = s["layers"], s["hidden"], s["input"], s["steps"], s["batch"]
    cell = (_linear(B, In, 4 * H, bias=False) + _linear(B, H, 4 * H, bias=False)
            + _elementwise(2 * B * 4 * H, 1) + _elementwise(B * H, _LSTM_CELL_FLOPS))
    # layer 0 reads the input (In wide); the others read H; In == H whenever layers > 1
    params = L * (4 * H * In + 4 * H * H + 4 * H)
    return cell.scale(T * L) + _bytes(T * B * In + params + B * H, isz)


def _cost_gru(s, isz, trip):
    L, H, In, T, B = s["layers"], s["hidden"], s["input"], s["steps"], s["batch"]
    # two biased projections; r, z: add + sigmoid; n: r * hn + in, tanh; h: (1 - z) * n + z * h
    cell = (_linear(B, In, 3 * H) + _linear(B, H, 3 * H)
            + _elementwise(2 * B * H, 1 + ELEMENTWISE_FLOPS["sigmoid"])
            + _elementwise(B * H, 2 + ELEMENTWISE_FLOPS["tanh"]) + _elementwise(B * H, 4))
    params = L * (3 * H * In + 3 * H * H + 6 * H)
    return cell.scale(T * L) + _bytes(T * B * In + params + B * H, isz)


def _cost_skipnet(s, isz, trip):
    n, w = s["blocks"], s["width"]
    taken = n if trip is None else trip
    gates = _elementwise(n * (2 * w + 1), 1)
    block = _linear(1, w, w) + _elementwise(w, 1) + _linear(1, w, w) + _elementwise(w, 1)
    return (gates + block.scale(taken)
            + _bytes(2 * w + n * w, isz) + _bytes(taken * 2 * (w * w + w), isz))


def _cost_decoder(s, isz, trip):
    w, v, t_max = s["width"], s["vocab"], s["max_steps"]
    steps = t_max if trip is None else trip
    step = (_linear(1, w, 4 * w) + _linear(1, w, 4 * w, bias=False) + _elementwise(4 * w, 1)
            + _elementwise(w, _LSTM_CELL_FLOPS) + _linear(1, w, v) + _elementwise(v, 1))
    params = v * w + 4 * w * w + 4 * w + 4 * w * w + w * v + v
    # inputs h0, c0; outputs: the tokens (int64) and h
    return step.scale(steps) + _bytes(2 * w + params + w, isz) + Cost(0.0, 8.0 * t_max, 0.0)


def _cost_branchy(s, isz, trip):
    cells, br, c, hw = s["cells"], s["branches"], s["channels"], s["size"] ** 2
    cell = Cost(0.0, 0.0, 0.0)
    params = 0
    for b in range(br):
        k = 1 if b % 2 == 0 else 3
        mm = 2.0 * c * c * k * k * hw
        cell = cell + Cost(mm, 0.0, mm) + _elementwise(2 * c * hw, 1)  # bias, relu
        params += c * c * k * k + c
    cell = cell + _elementwise(br * c * hw, 1)  # the average
    return cell.scale(cells) + _bytes(2 * c * hw + cells * params, isz)


def _cost_inception(s, isz, trip):
    hw = s["size"] ** 2
    total, params = Cost(0.0, 0.0, 0.0), 0
    for cin, c1, c3r, c3, c5r, c5, cp in inception_widths(s["channels"], s["scale"]):
        for a, b, k in ((cin, c1, 1), (cin, c3r, 1), (c3r, c3, 3), (cin, c5r, 1), (c5r, c5, 5),
                        (cin, cp, 1)):
            mm = 2.0 * a * b * k * k * hw
            total = total + Cost(mm, 0.0, mm) + _elementwise(2 * b * hw, 1)  # bias, relu
            params += a * b * k * k + b
        total = total + _elementwise(9 * cin * hw, 1)          # the 3x3 max-pool
    cout = sum(inception_widths(s["channels"], s["scale"])[-1][i] for i in (1, 3, 5, 6))
    return total + _bytes((s["channels"] + cout) * hw + params, isz)


def _decoder_trip(module, inputs, outputs) -> int:
    return GreedyDecoder.steps_of(outputs[0])


def _skipnet_trip(module, inputs, outputs) -> int:
    return module.blocks_taken(inputs[0])


def _ws(**kw):
    return kw


f16, f32 = torch.float16, torch.float32


def _matmul(name, m, k, n, dtype, title, tiny):
    return Workload(
        name=name, family="roller", title=title, dtype=dtype,
        make=lambda s, form: Matmul(),
        input_specs=(InputSpec(lambda s: (s["m"], s["k"])), InputSpec(lambda s: (s["k"], s["n"]))),
        cost_fn=_cost_matmul, sizes=_ws(m=m, k=k, n=n), tiny=tiny)


def _conv(name, n, c, h, k, r, pad, title):
    return Workload(
        name=name, family="roller", title=title, dtype=f16,
        make=lambda s, form: Conv2d(s["c"], s["k"], s["r"], s["pad"]),
        input_specs=(InputSpec(lambda s: (s["n"], s["c"], s["h"], s["h"])),),
        cost_fn=_cost_conv, sizes=_ws(n=n, c=c, h=h, k=k, r=r, pad=pad),
        tiny=_ws(n=2, c=8, h=10, k=16, r=r, pad=pad))


_D = dict(dim=768, heads=12, hidden=3072)

WORKLOADS: tuple[Workload, ...] = (
    # ---- roller: single operators ----
    _matmul("matmul_f32_1024", 1024, 1024, 1024, f32, "fp32 matmul 1024^3", _ws(m=32, k=48, n=40)),
    _matmul("matmul_f32_4096", 4096, 4096, 4096, f32, "fp32 matmul 4096^3", _ws(m=64, k=32, n=48)),
    _matmul("matmul_f16_4096", 4096, 4096, 4096, f16, "fp16 matmul 4096^3", _ws(m=64, k=32, n=48)),
    _matmul("matmul_f16_8192x768x3072", 8192, 768, 3072, f16, "fp16 8192x768 @ 768x3072",
            _ws(m=64, k=24, n=96)),
    _matmul("matmul_f16_16x4096x4096", 16, 4096, 4096, f16, "fp16 16x4096 @ 4096x4096",
            _ws(m=4, k=64, n=64)),
    _conv("conv_f16_3x3", 32, 64, 56, 64, 3, 1, "fp16 conv2d 32x64x56x56, 64 filters 3x3, pad 1"),
    _conv("conv_f16_1x1", 32, 256, 14, 1024, 1, 0, "fp16 conv2d 32x256x14x14, 1024 filters 1x1"),
    Workload(
        name="softmax_f16", family="roller", title="fp16 softmax, last dim of 8192x4096", dtype=f16,
        make=lambda s, form: Softmax(),
        input_specs=(InputSpec(lambda s: (s["rows"], s["cols"]), scale=2.0),),
        cost_fn=_cost_softmax, sizes=_ws(rows=8192, cols=4096), tiny=_ws(rows=16, cols=96)),
    Workload(
        name="layernorm_f16", family="roller", title="fp16 layernorm of 16384x1024", dtype=f16,
        make=lambda s, form: LayerNorm(s["cols"]),
        input_specs=(InputSpec(lambda s: (s["rows"], s["cols"])),),
        cost_fn=_cost_layernorm, sizes=_ws(rows=16384, cols=1024), tiny=_ws(rows=16, cols=64)),
    Workload(
        name="bias_gelu_scale_f16", family="roller", title="fp16 gelu(x + b) * s on 8192x8192",
        dtype=f16, make=lambda s, form: BiasGeluScale(),
        input_specs=(InputSpec(lambda s: (s["rows"], s["cols"])), InputSpec(lambda s: (s["cols"],)),
                     InputSpec(lambda s: (s["cols"],))),
        cost_fn=_cost_gelu, sizes=_ws(rows=8192, cols=8192), tiny=_ws(rows=16, cols=64),
        notes="b and s are per-column vectors given as inputs"),
    # ---- welder: fusion ----
    Workload(
        name="mlp_f16", family="welder",
        title="transformer MLP 768->3072->768, gelu, residual, layernorm; 64x128x768 fp16",
        dtype=f16, make=lambda s, form: MLP(s["dim"], s["hidden"]),
        input_specs=(InputSpec(lambda s: (s["batch"], s["tokens"], s["dim"])),),
        cost_fn=_cost_mlp, sizes=_ws(batch=64, tokens=128, dim=768, hidden=3072),
        tiny=_ws(batch=2, tokens=8, dim=32, hidden=128)),
    Workload(
        name="attention_f16", family="welder",
        title="attention op by op (qkv, q@k^T, softmax, @v, out); 8x512x768 fp16, 12 heads",
        dtype=f16, make=lambda s, form: Attention(s["dim"], s["heads"]),
        input_specs=(InputSpec(lambda s: (s["batch"], s["tokens"], s["dim"])),),
        cost_fn=_cost_attention, sizes=_ws(batch=8, tokens=512, dim=768, heads=12),
        tiny=_ws(batch=2, tokens=16, dim=32, heads=4)),
    Workload(
        name="bert_f16_b1", family="welder",
        title="BERT-base encoder, 12 layers, 1x128x768 fp16", dtype=f16,
        make=lambda s, form: Bert(s["layers"], s["dim"], s["heads"], s["hidden"]),
        input_specs=(InputSpec(lambda s: (s["batch"], s["tokens"], s["dim"])),),
        cost_fn=_cost_bert, sizes=_ws(layers=12, batch=1, tokens=128, **_D),
        tiny=_ws(layers=2, batch=1, tokens=8, dim=32, heads=4, hidden=64)),
    Workload(
        name="bert_f16_b32", family="welder",
        title="BERT-base encoder, 12 layers, 32x128x768 fp16", dtype=f16,
        make=lambda s, form: Bert(s["layers"], s["dim"], s["heads"], s["hidden"]),
        input_specs=(InputSpec(lambda s: (s["batch"], s["tokens"], s["dim"])),),
        cost_fn=_cost_bert, sizes=_ws(layers=12, batch=32, tokens=128, **_D),
        tiny=_ws(layers=2, batch=3, tokens=8, dim=32, heads=4, hidden=64)),
    Workload(
        name="vit_block_f16", family="welder",
        title="ViT-B pre-norm block (LN, attention, LN, MLP 768->3072->768); 32x197x768 fp16",
        dtype=f16,
        make=lambda s, form: PreNormBlock(s["dim"], s["heads"], s["hidden"], s["tokens"]),
        input_specs=(InputSpec(lambda s: (s["batch"], s["tokens"], s["dim"])),),
        cost_fn=_cost_block, sizes=_ws(batch=32, tokens=197, **_D),
        tiny=_ws(batch=2, tokens=21, dim=64, heads=4, hidden=128),
        notes="197 tokens (196 patches and the class token): not a multiple of the tiles"),
    Workload(
        name="gpt_block_f16", family="welder",
        title="GPT-2 pre-norm block, causal attention (mask buffer, masked_fill); 4x1024x768 fp16",
        dtype=f16,
        make=lambda s, form: PreNormBlock(s["dim"], s["heads"], s["hidden"], s["tokens"],
                                          causal=True),
        input_specs=(InputSpec(lambda s: (s["batch"], s["tokens"], s["dim"])),),
        cost_fn=_cost_block, sizes=_ws(batch=4, tokens=1024, **_D),
        tiny=_ws(batch=2, tokens=37, dim=64, heads=4, hidden=128),
        notes="the mask is a boolean buffer (a weight of the artifact); work counted as dense"),
    # ---- rammer: parallel branches ----
    Workload(
        name="branchy_cells_f32", family="rammer",
        title="6 cells x 8 parallel conv branches (1x1/3x3), 64ch 28x28, averaged; batch 1 fp32",
        dtype=f32, make=lambda s, form: BranchyCells(s["cells"], s["branches"], s["channels"]),
        input_specs=(InputSpec(lambda s: (1, s["channels"], s["size"], s["size"])),),
        cost_fn=_cost_branchy, sizes=_ws(cells=6, branches=8, channels=64, size=28),
        tiny=_ws(cells=2, branches=4, channels=8, size=6)),
    Workload(
        name="inception_f32", family="rammer",
        title="GoogLeNet inception 3a + 3b (4 branches each: 1x1, 3x3, 5x5, pool; channel "
              "concat), 192ch 28x28; batch 1 fp32",
        dtype=f32, make=lambda s, form: Inception(s["channels"], s["scale"]),
        input_specs=(InputSpec(lambda s: (1, s["channels"], s["size"], s["size"])),),
        cost_fn=_cost_inception, sizes=_ws(channels=192, size=28, scale=1.0),
        tiny=_ws(channels=8, size=6, scale=0.125)),
    # ---- grinder: control flow ----
    Workload(
        name="skipnet_f32", family="grinder",
        title="8 residual blocks (512 wide) each under torch.cond on a gate; batch 1 fp32",
        dtype=f32, make=lambda s, form: SkipNet(s["blocks"], s["width"], form),
        input_specs=(InputSpec(lambda s: (1, s["width"])),),
        cost_fn=_cost_skipnet, sizes=_ws(blocks=8, width=512), tiny=_ws(blocks=3, width=16),
        forms=("cond", "python"), quartet_form="cond", host_sync=True,
        trip=_skipnet_trip, trip_max=lambda s: s["blocks"],
        notes="work counted for the blocks actually taken (trip = blocks taken)"),
    Workload(
        name="decode_f32", family="grinder",
        title="greedy LSTM decoding, data-dependent stop, <=64 steps, width 512, vocab 1000; batch 1 fp32",
        dtype=f32,
        make=lambda s, form: GreedyDecoder(s["width"], s["vocab"], s["max_steps"], form,
                                           s["eos_bias"], s["gain"]),
        input_specs=(InputSpec(lambda s: (1, s["width"]), scale=1.0),
                     InputSpec(lambda s: (1, s["width"]), scale=1.0)),
        cost_fn=_cost_decoder, sizes=_ws(width=512, vocab=1000, max_steps=64, eos_bias=0.13, gain=4.0),
        tiny=_ws(width=16, vocab=24, max_steps=8, eos_bias=0.0, gain=1.0),
        forms=("python", "while_loop"), quartet_form="while_loop", host_sync=True,
        trip=_decoder_trip, trip_max=lambda s: s["max_steps"],
        notes="eager/torch.compile run the Python loop (host reads each token); Quartet compiles "
              "the while_loop form; work counted for the steps actually decoded"),
    Workload(
        name="lstm_f32", family="grinder",
        title="hand-written LSTM, 10 layers, hidden 256, 100 steps, batch 1 fp32", dtype=f32,
        make=lambda s, form: LSTM(s["layers"], s["hidden"], s["input"], form),
        input_specs=(InputSpec(lambda s: (s["steps"], s["batch"], s["input"])),),
        cost_fn=_cost_lstm, sizes=_ws(layers=10, hidden=256, input=256, steps=100, batch=1),
        tiny=_ws(layers=2, hidden=8, input=8, steps=5, batch=1),
        forms=("python", "while_loop"), quartet_form="while_loop",
        notes="eager/torch.compile run the Python loop (torch.compile unrolls 1000 cells); "
              "Quartet compiles the while_loop form"),
    Workload(
        name="gru_f32", family="grinder",
        title="hand-written GRU, 4 layers, hidden 256, 100 steps, batch 1 fp32", dtype=f32,
        make=lambda s, form: GRU(s["layers"], s["hidden"], s["input"], form),
        input_specs=(InputSpec(lambda s: (s["steps"], s["batch"], s["input"])),),
        cost_fn=_cost_gru, sizes=_ws(layers=4, hidden=256, input=256, steps=100, batch=1),
        tiny=_ws(layers=2, hidden=8, input=8, steps=5, batch=1),
        forms=("python", "while_loop"), quartet_form="while_loop",
        notes="the Cocktailer-style loop of our own choosing (issue 12): eager runs the Python "
              "loop, Quartet compiles the while_loop form"),
)


# -- the model zoo (issue 16): torchvision and transformers at their published sizes ----------


@dataclass(frozen=True)
class _ZooInput(InputSpec):
    """An input whose integer bound depends on the sizes (tiny or full vocabulary)."""

    high: Callable[[dict], int] | None = None


def _zoo_cost(name: str, batch: int):
    """FLOPs (torch's flop counter, on the meta device) and the fewest bytes (parameters,
    inputs, outputs) of zoo model ``name``; computed once per sizes."""
    memo: dict = {}

    def cost(sizes, itemsize, trip):
        key = (sizes["tiny"], itemsize)
        if key not in memo:
            from torch.utils.flop_counter import FlopCounterMode

            entry = model_zoo.get(name)
            try:        # no memory, no arithmetic: on the meta device
                with torch.device("meta"), torch.no_grad():
                    module = entry.construct(tiny=sizes["tiny"])
                    inputs = tuple(x.to("meta")
                                   for x in entry.inputs(tiny=sizes["tiny"], batch=batch))
                    with FlopCounterMode(display=False) as counter:
                        out = module(*inputs)
            except RuntimeError:    # a model that reads a tensor's value (.item()): for real
                with torch.no_grad():
                    module = entry.construct(tiny=sizes["tiny"])
                    inputs = entry.inputs(tiny=sizes["tiny"], batch=batch)
                    with FlopCounterMode(display=False) as counter:
                        out = module(*inputs)
            params = sum(p.numel() for p in module.parameters())
            moved = params * itemsize + sum(x.numel() * x.element_size() for x in inputs) \
                + out.numel() * itemsize
            flops = counter.get_total_flops()
            memo[key] = Cost(flops=flops, bytes=moved, mm_flops=flops)
        return memo[key]

    return cost


def _zoo_workload(name: str, batch: int) -> Workload:
    entry = model_zoo.get(name)
    high = None
    if entry.library == "transformers":     # token ids: the tiny vocabulary or the first 1000
        high = lambda s: 96 if s["tiny"] else 1000  # noqa: E731
    return Workload(
        name=f"zoo_{name}_b{batch}", family="welder",
        title=f"{entry.title}, fp16, batch {batch}", dtype=f16,
        make=lambda s, form: entry.construct(tiny=s["tiny"]),
        input_specs=(_ZooInput(lambda s: s["shape"], high=high),),
        cost_fn=_zoo_cost(name, batch),
        sizes=_ws(shape=entry.input_shape(batch=batch), tiny=False),
        tiny=_ws(shape=entry.input_shape(tiny=True, batch=batch), tiny=True),
        init=model_zoo.randomize, draw_dtype=torch.float32,
        notes=f"{entry.library} model built from its config with random weights "
              f"(frontend/zoo.py)")


#: the zoo rows, run only when asked for (``--only zoo`` or by name): full-size models
ZOO_WORKLOADS: tuple[Workload, ...] = tuple(
    _zoo_workload(name, batch) for name in model_zoo.ZOO for batch in (1, 32))

BY_NAME: dict[str, Workload] = {w.name: w for w in WORKLOADS + ZOO_WORKLOADS}


def get(name: str) -> Workload:
    """The workload called ``name``; a clear error listing the names otherwise."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"no workload {name!r}; known: {', '.join(BY_NAME)}") from None


def select(names: str | list[str] | None) -> list[Workload]:
    """Workloads by comma-separated names or family names, in suite order; all when empty.

    The zoo rows (``ZOO_WORKLOADS``) are not part of "all": name them, or ask for ``zoo``."""
    if not names:
        return list(WORKLOADS)
    if isinstance(names, str):
        names = [n for n in names.split(",") if n]
    out: list[Workload] = []
    for n in names:
        if n == "zoo":
            picked = list(ZOO_WORKLOADS)
        else:
            picked = [w for w in WORKLOADS if w.family == n] if n in FAMILIES else [get(n)]
        out.extend(w for w in picked if w not in out)
    order = WORKLOADS + ZOO_WORKLOADS
    return sorted(out, key=order.index)


def flatten_outputs(out: Any) -> list[torch.Tensor]:
    """A module's result as a flat list of tensors (a tensor, or tuples/lists of them)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        flat: list[torch.Tensor] = []
        for o in out:
            flat.extend(flatten_outputs(o))
        return flat
    raise TypeError(f"unexpected output type {type(out).__name__}")

"""Real models nobody on the team wrote: torchvision and transformers, built from their configs.

Issue 16's zoo, in one place for the tests, the zoo table (``scripts/zoo_table.py``) and the
benchmark (``bench/suite.py``): eight torchvision classifiers (resnet50, mobilenet_v3_large,
efficientnet_b0, convnext_tiny, googlenet, densenet121, vit_b_16, swin_t) and five transformers
models (BERT, GPT-2, T5 encoder, DistilBERT, Llama). Every model is built from its library's own
classes with random weights (no hub download), in two sizes:

- ``tiny``: the same classes with few blocks, narrow layers and small inputs, so that CI can
  compile every model and compare it with eager in seconds (the op set is the real one: every
  kind of block of the full model appears at least once);
- full: the published configuration (torchvision's builders with their defaults, 224x224
  images; BERT-base, GPT-2 small, T5-small's encoder, DistilBERT-base, a 1.1B-parameter Llama).

Weights: :func:`init_parameters` overwrites every parameter from NumPy's PCG64 stream of a seed
(the same bytes on any machine); :func:`randomize` adds BatchNorm running statistics. So the
parameters torchvision zero-initialises (ViT's head, its class token) or sets to a constant
(ConvNeXt's layer scale of 1e-6) are random too, and a comparison cannot pass on a constant
output. Transformers models return their first output (hidden states or logits) as a tensor.

Packaging (issue 16): PyPI's torchvision 0.28.0 is built against the CUDA torch 2.13.0; beside
the CPU torch its C++ extension (``torchvision._C``: nms, roi_align, deform_conv2d, the
detection ops) cannot load, and ``import torchvision`` then fails on its fake-kernel
registrations for ``torchvision::nms`` and ``torchvision::qnms``. The classifiers are pure
Python. :func:`import_torchvision` tries the extension first; only when it does not load does it
declare those two schemas (with no kernel: calling them raises torch's "no kernel" error), so
that the rest of torchvision imports. transformers imports torchvision when it is installed, so
the transformers builders go through the same door. Both are pinned in pyproject.toml's ``zoo``
extra.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

TORCHVISION = ("resnet50", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny", "googlenet",
               "densenet121", "vit_b_16", "swin_t")
TRANSFORMERS = ("bert", "gpt2", "t5_encoder", "distilbert", "llama")

#: the two torchvision ops whose fake kernels torchvision registers whether or not its C++
#: extension loaded (torchvision/_meta_registrations.py)
_TORCHVISION_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_declared_library = None


class ZooUnavailable(RuntimeError):
    """The library a zoo model comes from is not installed (``pip install .[zoo]``)."""


# ------------------------------------------------------------------------------------------
# Importing the libraries
# ------------------------------------------------------------------------------------------


def import_torchvision():
    """``import torchvision``, also where its C++ extension cannot load (see the docstring)."""
    global _declared_library
    if "torchvision" in sys.modules:
        return sys.modules["torchvision"]
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        raise ZooUnavailable("torchvision is not installed (pip install '.[zoo]')")
    if not _extension_loads(Path(next(iter(spec.submodule_search_locations)))) \
            and _declared_library is None:
        _declared_library = torch.library.Library("torchvision", "FRAGMENT")
        for schema in _TORCHVISION_SCHEMAS:
            _declared_library.define(schema)
    return importlib.import_module("torchvision")


def _extension_loads(folder: Path) -> bool:
    for path in sorted(folder.glob("_C.*")):
        try:
            torch.ops.load_library(str(path))
            return True
        except (OSError, RuntimeError):
            return False
    return False


def import_transformers():
    if importlib.util.find_spec("torchvision") is not None:
        import_torchvision()    # transformers imports it: through the door above
    try:
        return importlib.import_module("transformers")
    except ImportError as e:
        raise ZooUnavailable(f"transformers is not installed (pip install '.[zoo]'): {e}") from e


# ------------------------------------------------------------------------------------------
# Weights
# ------------------------------------------------------------------------------------------


def _fan_in(p: torch.Tensor) -> int:
    return int(np.prod(p.shape[1:])) if p.ndim == 4 else int(p.shape[-1])


def init_parameters(module: nn.Module, seed: int) -> nn.Module:
    """Overwrite every parameter with values from NumPy's PCG64 stream of ``seed``.

    Matrices (and filters): uniform in +-1/sqrt(fan_in); 1-d ``*weight`` (norm scales):
    1 + uniform(+-0.1); other 1-d parameters (biases): uniform(+-0.1).  Parameters are visited
    in ``named_parameters()`` order, so the same class and sizes give the same bytes anywhere.
    A module's ``post_init()`` (if any) runs last.
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    with torch.no_grad():
        for name, p in module.named_parameters():
            u = rng.random(p.numel(), dtype=np.float64) * 2.0 - 1.0
            if p.ndim >= 2:
                values = u / math.sqrt(_fan_in(p))
            elif name.endswith("weight"):
                values = 1.0 + 0.1 * u
            else:
                values = 0.1 * u
            p.copy_(torch.from_numpy(values.reshape(tuple(p.shape))).to(p.dtype))
    for m in module.modules():
        if hasattr(m, "post_init"):
            m.post_init()
    return module


def randomize(module: nn.Module, seed: int) -> nn.Module:
    """:func:`init_parameters`, then BatchNorm running means uniform(+-0.1) and variances
    1 + uniform(+-0.1) from the stream of ``seed + 1`` (eval-mode BN is then a real affine map)."""
    init_parameters(module, seed)
    rng = np.random.Generator(np.random.PCG64(seed + 1))
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                for buf, base in ((m.running_mean, 0.0), (m.running_var, 1.0)):
                    u = rng.random(buf.numel(), dtype=np.float64) * 2.0 - 1.0
                    buf.copy_(torch.from_numpy(base + 0.1 * u).to(buf.dtype))
    return module


# ------------------------------------------------------------------------------------------
# torchvision
# ------------------------------------------------------------------------------------------


def _resnet50(tv, tiny):
    from torchvision.models.resnet import Bottleneck, ResNet

    if not tiny:
        return tv.models.resnet50()
    return ResNet(Bottleneck, [1, 1, 1, 1], num_classes=10, width_per_group=16)


def _mobilenet_v3_large(tv, tiny):
    from torchvision.models.mobilenetv3 import MobileNetV3, _mobilenet_v3_conf

    if not tiny:
        return tv.models.mobilenet_v3_large()
    setting, _ = _mobilenet_v3_conf("mobilenet_v3_large")
    # one block of each kind: ReLU without squeeze-excitation (stride 1), ReLU with it and
    # hardswish with it (stride 2 and 1), each reading the one before
    blocks = [copy.copy(setting[i]) for i in (0, 3, 10)]
    for before, block in zip(blocks, blocks[1:]):
        block.input_channels = before.out_channels
    return MobileNetV3(blocks, last_channel=64, num_classes=10)


def _efficientnet_b0(tv, tiny):
    from torchvision.models.efficientnet import EfficientNet, _efficientnet_conf

    if not tiny:
        return tv.models.efficientnet_b0()
    # the first two stages, one block each: MBConv with expansion 1 and 6 (stride 1 and 2)
    setting, _ = _efficientnet_conf("efficientnet_b0", width_mult=1.0, depth_mult=0.5)
    return EfficientNet(setting[:2], dropout=0.2, last_channel=64, num_classes=10)


def _convnext_tiny(tv, tiny):
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    if not tiny:
        return tv.models.convnext_tiny()
    return ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=10)


def _googlenet(tv, tiny):
    from torchvision.models.googlenet import GoogLeNet

    model = GoogLeNet(num_classes=10 if tiny else 1000, aux_logits=False, init_weights=False)
    if tiny:     # the stem, stage 3 and the first inception block of stage 4, then the head
        for name in ("inception4b", "inception4c", "inception4d", "inception4e", "maxpool4",
                     "inception5a", "inception5b"):
            setattr(model, name, nn.Identity())
        model.fc = nn.Linear(512, 10)
    return model


def _densenet121(tv, tiny):
    from torchvision.models.densenet import DenseNet

    if not tiny:
        return tv.models.densenet121()
    return DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2,
                    num_classes=10)


def _vit_b_16(tv, tiny):
    from torchvision.models.vision_transformer import VisionTransformer

    if not tiny:
        return tv.models.vit_b_16()
    return VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=2,
                             hidden_dim=32, mlp_dim=64, num_classes=10)


def _swin_t(tv, tiny):
    from torchvision.models.swin_transformer import SwinTransformer

    if not tiny:
        return tv.models.swin_t()
    # two blocks in stage 1: the second one shifts its windows (roll + attention mask)
    return SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 1], num_heads=[1, 2],
                           window_size=[4, 4], num_classes=10)


_IMAGE = {"tiny": 32, "full": 224}


# ------------------------------------------------------------------------------------------
# transformers
# ------------------------------------------------------------------------------------------


class FirstOutput(nn.Module):
    """A transformers model called on token ids, returning its first output as a tensor."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # an explicit all-ones mask, as tokenizers give: without one, causal models look for
        # packed sequences in the position ids (a cumsum, which torch-mlir cannot lower)
        mask = torch.ones_like(input_ids)
        return self.model(input_ids=input_ids, attention_mask=mask, return_dict=False)[0]


_TINY_TEXT = dict(vocab=96, tokens=8)
_FULL_TEXT = dict(tokens=128)


def _bert(hf, tiny):
    if tiny:
        config = hf.BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=64,
                               max_position_embeddings=32)
    else:
        config = hf.BertConfig()
    return hf.BertModel(config, add_pooling_layer=False)


def _gpt2(hf, tiny):
    if tiny:
        config = hf.GPT2Config(vocab_size=96, n_embd=32, n_layer=1, n_head=2, n_positions=32,
                               bos_token_id=0, eos_token_id=0,
                               use_cache=False)
    else:
        config = hf.GPT2Config(use_cache=False)
    return hf.GPT2LMHeadModel(config)


def _t5_encoder(hf, tiny):
    if tiny:
        config = hf.T5Config(vocab_size=96, d_model=32, d_kv=16, d_ff=64, num_layers=1,
                             num_heads=2, use_cache=False)
    else:
        config = hf.T5Config(use_cache=False)     # t5-small's sizes
    return hf.T5EncoderModel(config)


def _distilbert(hf, tiny):
    if tiny:
        config = hf.DistilBertConfig(vocab_size=96, dim=32, hidden_dim=64, n_layers=1,
                                     n_heads=2, max_position_embeddings=32)
    else:
        config = hf.DistilBertConfig()
    return hf.DistilBertModel(config)


def _llama(hf, tiny):
    if tiny:
        config = hf.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64,
                                num_hidden_layers=1, num_attention_heads=2,
                                num_key_value_heads=1, max_position_embeddings=32,
                                use_cache=False)
    else:   # TinyLlama-1.1B's shape (Llama-2 architecture, grouped-query attention)
        config = hf.LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                                num_hidden_layers=22, num_attention_heads=32,
                                num_key_value_heads=4, max_position_embeddings=2048,
                                use_cache=False)
    return hf.LlamaForCausalLM(config)


# ------------------------------------------------------------------------------------------
# The table
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZooModel:
    """One zoo entry: ``make(library, tiny)`` builds the module from its library's classes."""

    name: str
    library: str                          # "torchvision" | "transformers"
    make: Callable[[object, bool], nn.Module]
    title: str

    def construct(self, *, tiny: bool = False) -> nn.Module:
        """The model as its library builds it (weights as the library initialises them)."""
        lib = import_torchvision() if self.library == "torchvision" else import_transformers()
        model = self.make(lib, tiny)
        if self.library == "transformers":
            model.config._attn_implementation = "eager"   # attention spelled out, op by op
            model = FirstOutput(model)
        return model.eval()

    def module(self, *, tiny: bool = False, seed: int = 0,
               dtype: torch.dtype = torch.float32) -> nn.Module:
        """The model in eval mode with weights from ``seed`` (see :func:`randomize`)."""
        torch.manual_seed(seed)       # whatever the constructor draws before we overwrite it
        model = randomize(self.construct(tiny=tiny), seed)
        return model.to(dtype).eval()

    def input_shape(self, *, tiny: bool = False, batch: int = 1) -> tuple[int, ...]:
        if self.library == "torchvision":
            size = _IMAGE["tiny" if tiny else "full"]
            return (batch, 3, size, size)
        return (batch, (_TINY_TEXT if tiny else _FULL_TEXT)["tokens"])

    def inputs(self, *, tiny: bool = False, batch: int = 1, seed: int = 0,
               dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
        """Random inputs: images ``[batch, 3, S, S]`` or token ids ``[batch, tokens]`` (ids below
        the tiny vocabulary, or below 1000)."""
        g = torch.Generator().manual_seed(seed)
        shape = self.input_shape(tiny=tiny, batch=batch)
        if self.library == "torchvision":
            return (torch.randn(shape, generator=g).to(dtype),)
        return (torch.randint(0, _TINY_TEXT["vocab"] if tiny else 1000, shape, generator=g),)


ZOO: dict[str, ZooModel] = {m.name: m for m in (
    ZooModel("resnet50", "torchvision", _resnet50, "ResNet-50"),
    ZooModel("mobilenet_v3_large", "torchvision", _mobilenet_v3_large, "MobileNetV3-Large"),
    ZooModel("efficientnet_b0", "torchvision", _efficientnet_b0, "EfficientNet-B0"),
    ZooModel("convnext_tiny", "torchvision", _convnext_tiny, "ConvNeXt-T"),
    ZooModel("googlenet", "torchvision", _googlenet, "GoogLeNet"),
    ZooModel("densenet121", "torchvision", _densenet121, "DenseNet-121"),
    ZooModel("vit_b_16", "torchvision", _vit_b_16, "ViT-B/16"),
    ZooModel("swin_t", "torchvision", _swin_t, "Swin-T"),
    ZooModel("bert", "transformers", _bert, "BERT-base"),
    ZooModel("gpt2", "transformers", _gpt2, "GPT-2 small (LM head)"),
    ZooModel("t5_encoder", "transformers", _t5_encoder, "T5-small encoder"),
    ZooModel("distilbert", "transformers", _distilbert, "DistilBERT-base"),
    ZooModel("llama", "transformers", _llama, "Llama (TinyLlama-1.1B shape, LM head)"),
)}


def get(name: str) -> ZooModel:
    if name not in ZOO:
        raise KeyError(f"no model '{name}' in the zoo (known: {', '.join(ZOO)})")
    return ZOO[name]


def build(name: str, *, tiny: bool = False, batch: int = 1, seed: int = 0,
          dtype: torch.dtype = torch.float32) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Zoo model ``name`` and its example inputs (see :class:`ZooModel`)."""
    entry = get(name)
    return (entry.module(tiny=tiny, seed=seed, dtype=dtype),
            entry.inputs(tiny=tiny, batch=batch, seed=seed, dtype=dtype))

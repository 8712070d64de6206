"""Weights of a compiled module after compilation (issue 15, item 2).

``quartet.compile(model, inputs, weights=...)``:

- ``"live"`` (the default): the compiled module follows ``model``'s current parameters and
  buffers, as ``torch.compile``'s result does. Before each call, every weight whose tensor in
  the model changed since the last call is copied into the program: a new tensor object
  (``model.fc.weight = nn.Parameter(...)``) or an in-place change (``load_state_dict``, an
  optimizer step, ``with torch.no_grad(): p.mul_(2)``), found through torch's per-tensor version
  counter. Unchanged weights cost one identity and one counter comparison each per call.
- ``"frozen"``: the weights of compile time, as TensorRT and IREE engines have; the compiled
  module keeps no reference to the model. New values come in with
  ``compiled.load_state_dict(state_dict)``.

In both modes ``compiled.save(path)`` writes the weights the next call would use. What is
tracked: every artifact weight that is a parameter or buffer of the model, by its state-dict
key. Lifted constants (tensors created in ``forward``) are part of the program.
"""

from __future__ import annotations

from dataclasses import dataclass

from quartet.errors import QuartetError

MODES = ("live", "frozen")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise QuartetError(f"unknown weights mode {mode!r} (known: live, frozen)")
    return mode


@dataclass
class _Tracked:
    name: str
    owner: object       # the submodule that holds the tensor
    attribute: str
    seen: object        # the tensor object at the last sync
    version: int        # its version counter then


def _resolve(model, name: str):
    """(submodule, attribute) of state-dict key ``name``, or None."""
    prefix, _, attribute = name.rpartition(".")
    try:
        owner = model.get_submodule(prefix) if prefix else model
    except AttributeError:
        return None
    return (owner, attribute) if hasattr(owner, attribute) else None


class LiveWeights:
    """The model's tensors behind an artifact's weights, and which of them changed."""

    def __init__(self, model, weight_names):
        import torch

        self.model = model
        self.tracked: list[_Tracked] = []
        for name in weight_names:
            found = _resolve(model, name)
            if found is None:
                continue
            tensor = getattr(*found)
            if isinstance(tensor, torch.Tensor):
                self.tracked.append(_Tracked(name, *found, tensor, tensor._version))

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tracked]

    def changed(self) -> dict:
        """The weights changed since the last call, by name (and remember them as seen)."""
        out = {}
        for t in self.tracked:
            tensor = getattr(t.owner, t.attribute, None)
            if tensor is None:
                raise QuartetError(f"the model no longer has weight {t.name!r}; compile again")
            if tensor is t.seen and tensor._version == t.version:
                continue
            out[t.name] = tensor.detach()
            t.seen, t.version = tensor, tensor._version
        return out

    def current(self) -> dict:
        """Every tracked weight's current value, by name."""
        return {t.name: getattr(t.owner, t.attribute).detach() for t in self.tracked}


def checked_state_dict(state_dict, known: list[str], strict: bool, where: str) -> dict:
    """The entries of ``state_dict`` that name weights of the program, checked like
    ``nn.Module.load_state_dict`` (``strict``: no key missing, none unexpected)."""
    missing = [k for k in known if k not in state_dict]
    unexpected = [k for k in state_dict if k not in known]
    if strict and (missing or unexpected):
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected)):
            if keys:
                more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
                parts.append(f"{label} key(s) {', '.join(map(repr, keys[:3]))}{more}")
        raise QuartetError(f"state dict does not fit {where}: " + "; ".join(parts) +
                           " (strict=False loads the keys that match)")
    return {k: v for k, v in state_dict.items() if k in known}

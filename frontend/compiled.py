"""The result of ``quartet.compile``: a :class:`CompiledModule`, called like the model.

It holds the artifact's writer and runs the artifact through ``quartet.runtime`` (loaded on the
first call from a private folder, exactly as a saved and reloaded artifact would be). Issue 15:
inputs by position or by ``forward``'s parameter names; weights that follow the model
(``"live"``, the default) or stay as compiled (``"frozen"``, with ``load_state_dict``), see
frontend/weights.py; ``save`` writes the weights the next call would use.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from quartet.errors import QuartetError


class CompiledModule:
    """A compiled program: callable like the original module; ``.save(path)``.

    The artifact is written to a private folder on the first call and run through
    ``quartet.runtime``, exactly as a saved and reloaded artifact would be. Inputs are given
    like the original ``forward``'s: by position or by parameter name. Weights follow the
    model (``weights="live"``) or stay as compiled (``"frozen"``): frontend/weights.py.
    """

    def __init__(self, writer, result, *, graph: bool | None = None,
                 name: str | None = None, model=None, weights: str = "frozen",
                 parameters: list[str] | None = None):
        from quartet.frontend.weights import LiveWeights, check_mode

        self.result = result
        self.name = name   # the model, named in call-time errors instead of the private folder
        self.weights = check_mode(weights)
        self._writer = writer
        self._folder = Path(tempfile.mkdtemp(prefix="quartet-"))
        self._path = None
        self._program = None
        self._graph = graph
        self._parameters = parameters   # forward()'s names of the compiled inputs, if known
        self._state_keys = list(model.state_dict()) if model is not None else []
        self._live = None
        if weights == "live" and model is not None:
            self._live = LiveWeights(model, [w.name for w in writer.weights])

    @property
    def target(self) -> str:
        return self.result.target

    @property
    def manifest(self):
        """The artifact's manifest (read from the writer: no runtime, no device needed)."""
        return self._writer.manifest()

    @property
    def program(self):
        if self._program is None:
            from quartet.runtime import load

            self._path = self._writer.save(self._folder / "program")
            self._program = load(self._path, graph=self._graph)
        return self._program

    def __call__(self, *inputs, **kwargs):
        try:
            stream = kwargs.pop("stream", None) if "stream" not in (self._parameters or ()) \
                else None
            inputs = self._arrange(inputs, kwargs)
            program = self.program
            if self._live is not None:
                changed = self._live.changed()
                if changed:
                    program.load_weights(changed)
            return program(*inputs, stream=stream)
        except QuartetError as e:
            if self.name and e.location in (str(self._path), None):
                raise QuartetError(e.message, f"compiled {self.name}") from None
            raise

    def _arrange(self, inputs: tuple, named: dict) -> tuple:
        """Inputs in forward()'s order; keyword arguments matched by forward()'s names."""
        if not named:
            return inputs
        if self._parameters is None:
            return self.program._arrange(inputs, named)
        from quartet.runtime.program import arrange_inputs

        return arrange_inputs(inputs, named, self._parameters, "the compiled forward")

    def load_state_dict(self, state_dict, strict: bool = True):
        """Take new weights, checked like ``nn.Module.load_state_dict``.

        Live: loaded into the model itself (which the compiled module follows). Frozen: into
        the program and the artifact that ``save`` writes."""
        from quartet.frontend.weights import checked_state_dict

        if self._live is not None:
            return self._live.model.load_state_dict(state_dict, strict=strict)
        held = {w.name for w in self._writer.weights}
        known = [k for k in self._state_keys if k in held]
        values = checked_state_dict(state_dict, known, strict, self.name or "the compiled module")
        for k, v in values.items():
            self._writer.set_weight(k, v)
        if self._program is not None:
            self._program.load_weights(values)

    def save(self, path) -> Path:
        """Save the artifact (with the weights the next call would use): a folder, or one file
        when ``path`` ends in ``.qrt``."""
        if self._live is not None:
            for k, v in self._live.current().items():
                self._writer.set_weight(k, v)
        return self._writer.save(path)

    def __repr__(self) -> str:
        return (f"<quartet CompiledModule {self.name or ''}: {self.target}, "
                f"{self.result.pipeline}, weights {self.weights}>")

    def __del__(self):
        try:
            if self._program is not None:
                self._program.close()
            shutil.rmtree(self._folder, ignore_errors=True)
        except Exception:
            pass


def forward_parameters(module, count: int) -> list[str] | None:
    """The names of forward()'s first ``count`` positional parameters (None: not known)."""
    import inspect

    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < count or any(p.kind == p.POSITIONAL_ONLY for p in positional):
        return None
    return [p.name for p in positional[:count]]

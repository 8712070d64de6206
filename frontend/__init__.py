"""quartet.frontend: PyTorch in, compiled programs out.

``compile`` / ``CompiledModule`` (frontend/compile.py) are re-exported here, so
``quartet.frontend.compile`` is the function; the driver module stays importable as
``from quartet.frontend.compile import compile_to_artifact``. The torch.compile backend lives in
:mod:`quartet.frontend.backend` (registered under ``"quartet"`` when it is imported, and found
by torch through the package's entry point without any import). Importing this package imports
neither torch nor MLIR.
"""

from quartet.frontend.compile import CompiledModule, compile

__all__ = ["CompiledModule", "compile"]

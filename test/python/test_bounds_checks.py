"""Index bounds checks (issue 16, item 1): torch-mlir's ``cf.assert`` in embeddings and gathers
becomes a flag the runtime reads after each call (frontend/bounds_checks.py, manifest
``checks``). An index out of range is a QuartetError naming the op, the bound and the model's
line; the kernels clamp the index, so nothing is read out of bounds; in-range calls match eager.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from quartet.errors import QuartetError
from quartet.frontend.compile import compile as quartet_compile
from quartet.frontend.importer import import_module
from quartet.runtime.manifest import Check
from quartet.runtime.parse import manifest_from_json

LOOKUP_LINE = 31   # the line of Lookup.forward's return below


class Lookup(nn.Module):
    """An embedding (table of 10) and a gather (rows of 5) reading the same indices."""

    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(10, 4)

    def forward(self, ids, x):
        return self.table(ids) + torch.gather(x, 1, ids)[..., None]


def _inputs(ids):
    return torch.tensor(ids), torch.randn(1, 5)


def test_asserts_become_flag_results():
    program = import_module(Lookup().eval(), _inputs([[1, 2, 3]]))
    assert "cf.assert" not in program.mlir_text
    assert [r.shape for r in program.results] == [(1, 3, 4)]
    assert [c.result for c in program.checks] == [1, 2]
    assert {c.message.split(": ")[1] for c in program.checks} == \
        {"an index is outside [0, 10)", "an index is outside [0, 5)"}
    for c in program.checks:
        assert c.message.startswith("index out of range in aten.embedding or aten.gather")
        assert c.location.endswith(f"test_bounds_checks.py:{LOOKUP_LINE}")
    # the table reads are clamped into the table
    assert "arith.minsi" in program.mlir_text and "arith.maxsi" in program.mlir_text


@pytest.fixture(scope="module")
def compiled_cpu():
    torch.manual_seed(0)
    model = Lookup().eval()
    return model, quartet_compile(model, _inputs([[1, 2, 3]]), target="cpu")


def test_in_range_indices_match_eager(compiled_cpu):
    model, compiled = compiled_cpu
    ids, x = _inputs([[4, 0, 2]])
    np.testing.assert_allclose(np.asarray(compiled(ids, x)), model(ids, x).detach().numpy(),
                               rtol=1e-6)


@pytest.mark.parametrize("ids, bound", [([[1, 2, 7]], "[0, 5)"), ([[1, 2, 12]], "[0, 10)"),
                                        ([[1, -1, 3]], "[0, 10)")])
def test_out_of_range_index_is_reported(compiled_cpu, ids, bound):
    _, compiled = compiled_cpu
    with pytest.raises(QuartetError, match=rf"test_bounds_checks.py:{LOOKUP_LINE}: error: index "
                       rf"out of range in aten.embedding or aten.gather: an index is outside "
                       rf"\{bound[:-1]}\)"):
        compiled(*_inputs(ids))
    # a good call afterwards is not affected by the failed one (flags start from 0 every call)
    compiled(*_inputs([[0, 0, 0]]))


def test_manifest_lists_checks_and_needs_version_2(compiled_cpu):
    _, compiled = compiled_cpu
    m = compiled.manifest
    assert m.version == 2 and len(m.checks) == 2
    assert all(c.dtype == "int32" and c.location for c in m.checks)
    again = manifest_from_json(m.to_json())
    assert again.checks == m.checks


def test_check_on_unknown_buffer_is_refused(compiled_cpu):
    _, compiled = compiled_cpu
    data = compiled.manifest.to_json()
    data["checks"].append({"buffer": "nowhere", "message": "m", "dtype": "int32"})
    from quartet.runtime.validate import validate

    with pytest.raises(QuartetError, match=r"checks\[2\]: unknown buffer 'nowhere'"):
        validate(manifest_from_json(data))


def test_sm_90_artifact_carries_the_checks():
    torch.manual_seed(0)
    compiled = quartet_compile(Lookup().eval(), _inputs([[1, 2, 3]]), target="sm_90")
    checks = compiled.manifest.checks
    assert len(checks) == 2 and all(isinstance(c, Check) for c in checks)
    assert not any(o.name.startswith("check") for o in compiled.manifest.outputs)


class LookupThenAdd(nn.Module):
    """A gather whose result an element-wise op reads (roller-fuse must not merge them on the
    GPU: the row builder cannot read the table)."""

    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(16, 8)
        self.pos = nn.Embedding(4, 8)

    def forward(self, ids):
        return self.table(ids) + self.pos(torch.arange(4)[None])


def test_embedding_plus_position_compiles_for_sm_90():
    compiled = quartet_compile(LookupThenAdd().eval(), (torch.tensor([[1, 2, 3, 4]]),),
                               target="sm_90")
    assert len(compiled.manifest.checks) == 2

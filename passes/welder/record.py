"""Tuning records: latencies measured on the GPU for Welder's candidate groups.

Welder's artifact profiles the top-k configurations of every candidate group on the device and
caches results by a hash of the subgraph, so that the 12 identical layers of BERT are tuned
once. Quartet's grouping runs on the cost model by default (no GPU needed to compile); a tuning
record lets measured times replace the model's where they exist:

* ``python -m quartet.bench.welder_tune build MODEL_SPEC DIR`` (here) compiles the model with the
  ``welder`` pipeline, writes every candidate group it priced, at each configuration, and every
  single tile, as a small artifact, and ``DIR/candidates.json`` listing them by key;
* ``python3 bench/welder_tune.py run DIR --out RECORD.json`` (on the GPU machine) times each
  artifact in one process and writes the record;
* ``welder{target=sm_90 tuning=RECORD.json}`` (or ``QUARTET_WELDER_TUNING=RECORD.json``) reads
  it: a candidate whose key is recorded takes its fastest measured configuration and time.

The record is JSON::

    {"format": "quartet-welder-tuning", "version": 1, "chip": "h200",
     "entries": {"<key>": {"family": "fused:attention", "tiles": 4,
                           "times": [{"params": {"bm": 64, "bn": 64}, "seconds": 1.9e-05}]}}}

A key is the SHA-256 (first 16 hex digits) of the chip's name and a structural fingerprint of
the tile (:func:`fingerprint`): every op in its region with its operands numbered in order of
appearance, its attributes and result types, and the types (and constant values) of the values
it reads from outside. Schedule attributes on the tile itself are left out, so a group and its
candidates share one key.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from mlir import ir

from quartet.errors import QuartetError

FORMAT = "quartet-welder-tuning"
VERSION = 1


def fingerprint(tile) -> str:
    """The structural text of a tile's computation (see the module docstring)."""
    names: dict = {}
    lines = []
    for i, v in enumerate(tile.inputs):
        owner = v.owner
        const = ""
        if not isinstance(owner, ir.Block) and owner.operation.name == "arith.constant":
            const = " = " + str(owner.operation.attributes["value"])
        names[v] = f"in{i}"
        lines.append(f"in{i}: {v.type}{const}")

    def name(v) -> str:
        if v not in names:
            names[v] = f"v{len(names)}"
        return names[v]

    def visit(op):
        op = op.operation
        attrs = sorted((str(k), str(op.attributes[str(k)])) for k in op.attributes)
        for region in op.regions:
            for block in region.blocks:
                for arg in block.arguments:
                    name(arg)
        lines.append(f"{op.name}({', '.join(name(v) for v in op.operands)}) "
                     f"{attrs} -> {[str(r.type) for r in op.results]} "
                     f"= {[name(r) for r in op.results]}")
        return ir.WalkResult.ADVANCE

    for op in tile.computation:
        op.walk(visit, ir.WalkOrder.PRE_ORDER)
    return "\n".join(lines)


def key_of(tile, chip) -> str:
    text = f"{chip.name}\n{fingerprint(tile)}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Record:
    """A loaded tuning record."""

    chip: str
    entries: dict = field(default_factory=dict)
    path: str | None = None

    @classmethod
    def load(cls, path: str | Path) -> "Record":
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise QuartetError(f"tuning record '{path}' does not exist") from None
        except json.JSONDecodeError as e:
            raise QuartetError(f"tuning record '{path}' is not JSON: {e}") from None
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise QuartetError(f"'{path}' is not a {FORMAT} record of version {VERSION}")
        return cls(data.get("chip", ""), dict(data.get("entries", {})), str(path))

    def best(self, key: str) -> tuple[dict, float] | None:
        """(params, seconds) of the fastest measured configuration of ``key``, or None."""
        entry = self.entries.get(key)
        if not entry or not entry.get("times"):
            return None
        t = min(entry["times"], key=lambda x: x["seconds"])
        return dict(t.get("params", {})), float(t["seconds"])

    def seconds(self, key: str, params: dict) -> float | None:
        entry = self.entries.get(key)
        if not entry:
            return None
        for t in entry.get("times", []):
            if dict(t.get("params", {})) == dict(params):
                return float(t["seconds"])
        return None

    def add(self, key: str, family: str, tiles: int, params: dict, seconds: float) -> None:
        entry = self.entries.setdefault(key, {"family": family, "tiles": tiles, "times": []})
        entry["times"] = [t for t in entry["times"] if t.get("params") != params]
        entry["times"].append({"params": dict(params), "seconds": float(seconds)})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"format": FORMAT, "version": VERSION,
                                          "chip": self.chip, "entries": self.entries},
                                         indent=1, sort_keys=True))

"""One registry of Quartet passes and named pipelines, shared by quartet-opt, the Python API and
the tests. It lives in the driver, above the passes and the lowering, so that neither of those
layers imports it (issue 9: layers that hold).

A pass is a frozen dataclass (its fields are its options, with defaults) that subclasses
:class:`~quartet.passes.base.ModulePass`; ``driver/catalog.py`` adds every one here with
:func:`register`. A pipeline is a name, a
one-line summary and a function from its options to a list of pipeline elements (Quartet pass
names with options, or upstream pass strings); it is expanded where it is named.

The MLIR 22 bindings cannot name a Python pass inside a pipeline string that MLIR parses, so
:func:`parse_pipeline` reads the outer ``builtin.module(...)`` list itself: Quartet names become
``PassManager.add(callable, name)``, every other element goes to ``PassManager.add(str)``
unchanged (DESIGN.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from quartet.errors import QuartetError
from quartet.passes.base import ModulePass


@dataclass(frozen=True)
class Pipeline:
    name: str
    summary: str
    expand: Callable[[dict[str, str]], list[str]]   # options -> pipeline elements
    options: dict[str, str]                          # option name -> help text


PASSES: dict[str, type[ModulePass]] = {}
PIPELINES: dict[str, Pipeline] = {}


def register(cls: type[ModulePass]) -> type[ModulePass]:
    if cls.name in PASSES or cls.name in PIPELINES:
        raise ValueError(f"pass name '{cls.name}' registered twice")
    PASSES[cls.name] = cls
    return cls


def register_pipeline(name: str, summary: str, options: dict[str, str]):
    def wrap(expand: Callable[[dict[str, str]], list[str]]):
        if name in PASSES or name in PIPELINES:
            raise ValueError(f"pipeline name '{name}' registered twice")
        PIPELINES[name] = Pipeline(name, summary, expand, options)
        return expand
    return wrap


def load_all() -> None:
    """Register every pass and pipeline (``driver/catalog.py``; cheap, done once)."""
    from quartet.driver import catalog  # noqa: F401


# ---------------------------------------------------------------------------------------------
# Pipeline text: builtin.module(a, b{x=1 y=z}, func.func(cse), ...)


def split_elements(text: str) -> list[str]:
    """Split a comma-separated pipeline list at top level (not inside () or {})."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "({":
            depth += 1
        elif ch in ")}":
            depth -= 1
            if depth < 0:
                raise QuartetError(f"unbalanced '{ch}' in pass pipeline '{text}'")
        elif ch == "," and depth == 0:
            items.append(text[start:i].strip())
            start = i + 1
    if depth != 0:
        raise QuartetError(f"unbalanced brackets in pass pipeline '{text}'")
    tail = text[start:].strip()
    if tail:
        items.append(tail)
    return [item for item in items if item]


def strip_anchor(text: str) -> str:
    """The element list inside ``builtin.module(...)``."""
    text = text.strip()
    if not (text.startswith("builtin.module(") and text.endswith(")")):
        raise QuartetError(
            f"pass pipeline must have the form 'builtin.module(...)', got '{text}'")
    return text[len("builtin.module("):-1]


def parse_element(element: str) -> tuple[str, dict[str, str]]:
    """``name{k=v k2=v2}`` -> (name, {k: v}). Upstream nested forms come back unparsed."""
    name, brace, rest = element.partition("{")
    options: dict[str, str] = {}
    if brace:
        if not rest.endswith("}"):
            raise QuartetError(f"malformed pass options in '{element}'")
        for token in rest[:-1].split():
            key, eq, value = token.partition("=")
            if not eq or not key:
                raise QuartetError(f"malformed pass option '{token}' in '{element}' "
                                   f"(expected key=value)")
            options[key] = value
    return name.strip(), options


def make_pass(name: str, options: dict[str, str]) -> ModulePass:
    """Instantiate a registered Quartet pass, converting option strings to the field types."""
    cls = PASSES[name]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, text in options.items():
        if key not in fields:
            known = ", ".join(sorted(fields)) or "none"
            raise QuartetError(f"unknown option '{key}' for pass '{name}' (options: {known})")
        values[key] = _convert(name, key, text, fields[key].type)
    try:
        return cls(**values)
    except ValueError as e:   # a pass's __post_init__ rejects an option value
        raise QuartetError(f"bad option for pass '{name}': {e}") from None


def _convert(pass_name: str, key: str, text: str, type_):
    type_name = type_ if isinstance(type_, str) else getattr(type_, "__name__", str(type_))
    try:
        if type_name == "bool":
            if text not in ("true", "false", "1", "0"):
                raise ValueError
            return text in ("true", "1")
        if type_name == "int":
            return int(text)
        if type_name == "float":
            return float(text)
        return text
    except ValueError:
        raise QuartetError(f"option '{key}' of pass '{pass_name}' expects a {type_name}, "
                           f"got '{text}'") from None


def expand(text: str) -> list[tuple[str, object]]:
    """Expand a ``builtin.module(...)`` pipeline into steps.

    Each step is ``("quartet", ModulePass)`` or ``("upstream", "pass-string")``; named
    pipelines are expanded recursively.
    """
    load_all()
    steps: list[tuple[str, object]] = []
    for element in split_elements(strip_anchor(text)):
        steps.extend(_expand_element(element, depth=0))
    return steps


def _expand_element(element: str, depth: int) -> list[tuple[str, object]]:
    if depth > 8:
        raise QuartetError(f"pipeline '{element}' expands into itself")
    name, options = parse_element(element)
    if name in PASSES:
        return [("quartet", make_pass(name, options))]
    if name in PIPELINES:
        pipeline = PIPELINES[name]
        unknown = set(options) - set(pipeline.options)
        if unknown:
            raise QuartetError(f"unknown option '{sorted(unknown)[0]}' for pipeline '{name}' "
                               f"(options: {', '.join(sorted(pipeline.options)) or 'none'})")
        steps = []
        for sub in pipeline.expand(options):
            steps.extend(_expand_element(sub, depth + 1))
        return steps
    return [("upstream", element)]

"""The host-program interpreter, written once for every backend.

A loaded program is a set of device buffers (known by their addresses), prepared kernels, and
the manifest's tree of steps. :class:`Interpreter` walks that tree on each call: launches,
copies and memsets go to the backend in order; ``loop`` repeats its body a constant number of
times; ``while`` and ``if`` read a one-element predicate back from the device (the host round
trip that Grinder's device-side control flow removes, kept here for what the compiler could not
move onto the device).

A backend is anything with the small interface of :class:`Backend`. Addresses are plain ints on
every backend (device pointers on CUDA, host pointers on the CPU), so argument lists and
offsets are computed here once.

A buffer's address can change between runs: :meth:`Interpreter.rebind` points a buffer at other
memory (the loaded program binds the caller's CUDA tensors in place this way). The launch
arguments that refer to the buffer are found through a per-buffer list of (plan, position,
offset) slots made at construction, so a rebind costs one update per use of the buffer; copies,
memsets and predicates read :attr:`Interpreter.addresses` when they run.
"""

from __future__ import annotations

import warnings

from typing import Any, Protocol

import numpy as np

from quartet.errors import BoundWarning, QuartetError
from quartet.runtime.manifest import (
    BufferArg,
    Copy,
    If,
    IndexArg,
    Kernel,
    Launch,
    Loop,
    Manifest,
    Memset,
    Predicate,
    ScalarArg,
    TensorMapArg,
    Step,
    While,
)


class Backend(Protocol):
    """What the interpreter and the loaded program need from a device."""

    name: str

    def alloc(self, size: int) -> int:
        """Allocate ``size`` bytes (at least 256-byte aligned); return the address."""

    def free(self, address: int) -> None: ...

    def upload(self, address: int, data: np.ndarray) -> None:
        """Copy a contiguous uint8 host array to ``address``."""

    def download(self, address: int, out: np.ndarray) -> None:
        """Copy ``out.nbytes`` bytes from ``address`` into the contiguous uint8 host array ``out``."""

    def prepare(self, kernel: Kernel, binary: Any) -> Any:
        """Load kernel ``kernel`` from its binary (bytes, or a path for shared libraries)."""

    def launch(self, prepared: Any, args: list[int | float]) -> None:
        """Launch a prepared kernel; ``args`` holds an address for each buffer argument."""

    def tensor_map(self, arg: TensorMapArg, address: int) -> int:
        """The device address of ``arg``'s tensor map encoded for data at ``address``, uploaded
        in stream order (cuda only: other backends refuse tensor maps)."""

    def copy(self, dst: int, src: int, size: int) -> None: ...

    def memset(self, address: int, value: int, width: int, count: int) -> None:
        """Write ``count`` elements of ``width`` bytes (1, 2 or 4), each equal to ``value``."""

    def read_scalar(self, address: int, dtype: str) -> int | float:
        """Wait for the work issued so far and read one element of ``dtype`` at ``address``."""

    def synchronize(self) -> None: ...


class _LaunchPlan:
    """A kernel's argument values with the buffer addresses filled in; index args are slots.

    ``buffer_slots`` lists (position, buffer, offset, tensor map or None) of every buffer and
    tensor-map argument, for rebinding: a tensor map's value is the address of its map, which
    the backend encodes for the buffer's address.
    """

    def __init__(self, kernel: Kernel, prepared: Any, addresses: dict[str, int], backend):
        self.prepared = prepared
        self.name = kernel.name
        # Grinder: the sync word a bounded device loop sets when it stops at its bound
        p = kernel.persistent
        self.bound_at = (p.sync, 8 * p.bound_word) if p is not None and \
            p.bound_word is not None else None
        self.values: list[int | float] = []
        self.index_slots: list[tuple[int, str]] = []
        self.buffer_slots: list[tuple[int, str, int, TensorMapArg | None]] = []
        for i, a in enumerate(kernel.args):
            if isinstance(a, BufferArg):
                self.values.append(addresses[a.buffer] + a.offset)
                self.buffer_slots.append((i, a.buffer, a.offset, None))
            elif isinstance(a, TensorMapArg):
                self.values.append(backend.tensor_map(a, addresses[a.buffer] + a.offset))
                self.buffer_slots.append((i, a.buffer, a.offset, a))
            elif isinstance(a, ScalarArg):
                self.values.append(a.value)
            elif isinstance(a, IndexArg):
                self.values.append(0)
                self.index_slots.append((i, a.loop))

    def args(self, env: dict[str, int]) -> list[int | float]:
        if not self.index_slots:
            return self.values
        values = list(self.values)
        for i, loop in self.index_slots:
            values[i] = env[loop]
        return values


class Interpreter:
    """Runs a manifest's host program on a backend over already-allocated buffers.

    ``addresses`` is copied: the interpreter's map is its own, changed only by :meth:`rebind`.
    """

    def __init__(
        self, manifest: Manifest, backend: Backend, addresses: dict[str, int], prepared: dict[str, Any]
    ):
        self.manifest, self.backend = manifest, backend
        self.addresses: dict[str, int] = dict(addresses)
        self.plans = {
            k.name: _LaunchPlan(k, prepared[k.name], self.addresses, backend) for k in manifest.kernels
        }
        # buffer name -> the launch-argument slots that hold its address (+ offset), or the
        # address of a tensor map of it
        self._uses: dict[str, list[tuple[list, int, int, TensorMapArg | None]]] = {}
        for plan in self.plans.values():
            for i, name, offset, tmap in plan.buffer_slots:
                self._uses.setdefault(name, []).append((plan.values, i, offset, tmap))

    def rebind(self, name: str, address: int) -> None:
        """Make buffer ``name`` live at ``address`` for the following runs (O(uses of the buffer)).

        Launch arguments become ``address + offset``; tensor-map arguments point to a map
        encoded for that address (uploaded in stream order, so runs already issued still read
        theirs); copies, memsets and predicates read the new address when they run. Runs
        already issued are not affected.
        """
        addresses = self.addresses
        if name not in addresses:
            raise KeyError(f"unknown buffer {name!r}")
        if addresses[name] == address:
            return
        addresses[name] = address
        for values, i, offset, tmap in self._uses.get(name, ()):
            values[i] = address + offset if tmap is None else \
                self.backend.tensor_map(tmap, address + offset)

    def rebind_all(self, bindings: dict[str, int]) -> None:
        """:meth:`rebind` every ``name: address`` pair of ``bindings``."""
        for name, address in bindings.items():
            self.rebind(name, address)

    def run(self) -> None:
        """Issue the whole program once."""
        self._run(self.manifest.program, {})

    def _run(self, steps: tuple[Step, ...], env: dict[str, int]) -> None:
        b, addr = self.backend, self.addresses
        for s in steps:
            if isinstance(s, Launch):
                plan = self.plans[s.kernel]
                b.launch(plan.prepared, plan.args(env))
                if plan.bound_at is not None:
                    self._report_bound(plan)
            elif isinstance(s, Copy):
                b.copy(addr[s.dst] + s.dst_offset, addr[s.src] + s.src_offset, s.size)
            elif isinstance(s, Memset):
                size = self.manifest.buffer_map[s.buffer].size - s.offset if s.size is None else s.size
                if size:
                    b.memset(addr[s.buffer] + s.offset, s.value, s.width, size // s.width)
            elif isinstance(s, Loop):
                for i in range(s.count):
                    if s.index:
                        env = {**env, s.index: i}
                    self._run(s.body, env)
            elif isinstance(s, While):
                self._while(s, env)
            elif isinstance(s, If):
                self._run(s.then if self._truth(s.predicate) else s.else_, env)
            else:  # validate() rejects these; an internal error if reached
                raise TypeError(f"not a host-program step: {s!r}")

    def _while(self, s: While, env: dict[str, int]) -> None:
        iterations = 0
        while True:
            self._run(s.cond, env)
            if not self._truth(s.predicate):
                return
            if s.max_iterations is not None and iterations >= s.max_iterations:
                if s.at_bound == "stop":
                    warnings.warn(f"a while loop stopped at its bound of {s.max_iterations} "
                                  f"iterations (predicate buffer {s.predicate.buffer!r} still "
                                  f"nonzero)", BoundWarning, stacklevel=2)
                    return
                raise QuartetError(
                    f"a host while loop ran past its max_iterations ({s.max_iterations}); "
                    f"predicate buffer {s.predicate.buffer!r} never became zero"
                )
            self._run(s.body, env)
            iterations += 1

    def _report_bound(self, plan: _LaunchPlan) -> None:
        """After a kernel with bounded device loops: the loop that stopped at its bound (a
        host round trip, paid only by programs compiled with a bound)."""
        buffer, offset = plan.bound_at
        loop = int(self.backend.read_scalar(self.addresses[buffer] + offset, "int64"))
        if loop:
            warnings.warn(f"device loop {loop} of kernel {plan.name!r} stopped at its bound "
                          f"(max_iterations) with its predicate still true", BoundWarning,
                          stacklevel=3)

    def _truth(self, p: Predicate) -> bool:
        return bool(self.backend.read_scalar(self.addresses[p.buffer] + p.offset, p.dtype))

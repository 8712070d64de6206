"""The host-program interpreter, written once for every backend.

A loaded program is a set of device buffers (known by their addresses), prepared kernels, and
the manifest's tree of steps. :class:`Interpreter` turns that tree into a list of small
callables once, at load (issue 14: nothing walked, looked up or allocated per launch that can
be done at load): a launch is one backend call with its parameters already packed, a copy or a
memset one call with its sizes already computed; ``loop`` repeats its compiled body a constant
number of times; ``while`` and ``if`` read a one-element predicate back from the device (the
host round trip that Grinder's device-side control flow removes, kept here for what the
compiler could not move onto the device).

A backend is anything with the small interface of :class:`Backend`. Addresses are plain ints on
every backend (device pointers on CUDA, host pointers on the CPU). A backend may also *pack* a
kernel's parameters (:meth:`Backend.pack`): the CUDA backend keeps each argument in its own
ctypes slot behind one ``void **`` array built at load, so a launch passes that array as it is
and a changed argument is one slot written.

A buffer's address can change between runs: :meth:`Interpreter.binding` hands out a
:class:`Binding` per buffer, and ``binding.bind(address)`` points the buffer at other memory
(the loaded program binds the caller's CUDA tensors in place this way). It writes only the
launch-argument slots that hold that buffer (found at load), and only when the address really
changes; copies, memsets and predicates read :attr:`Interpreter.addresses` when they run. A
binding can also tell a listener (the CUDA-graph replay of ``program.py``, which then updates
the kernel nodes of the executable graph that read the buffer).
"""

from __future__ import annotations

import warnings

from typing import Any, Callable, Protocol

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

    # Optional: ``pack(prepared, values) -> packed`` with ``packed.set(position, value)`` and a
    # zero-argument ``packed.launch()`` (parameters packed once; see the module docstring).


class _LaunchPlan:
    """A kernel's argument values with the buffer addresses filled in; index args are slots.

    ``buffer_slots`` lists (position, buffer, offset, tensor map or None) of every buffer and
    tensor-map argument, for rebinding: a tensor map's value is the address of its map, which
    the backend encodes for the buffer's address. ``packed`` is the backend's packed form of the
    values (None: the backend packs nothing and gets ``values`` at every launch).
    """

    def __init__(self, kernel: Kernel, prepared: Any, addresses: dict[str, int], backend):
        self.kernel = kernel
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
        pack = getattr(backend, "pack", None)
        self.packed = pack(prepared, list(self.values)) if pack is not None else None

    def set(self, position: int, value: int | float) -> None:
        self.values[position] = value
        if self.packed is not None:
            self.packed.set(position, value)

    def set_indices(self, env: dict[str, int]) -> None:
        for i, loop in self.index_slots:
            self.set(i, env[loop])

    def args(self, env: dict[str, int]) -> list[int | float]:
        if not self.index_slots:
            return self.values
        values = list(self.values)
        for i, loop in self.index_slots:
            values[i] = env[loop]
        return values


class Binding:
    """Where one buffer lives now; :meth:`bind` moves it (see the module docstring)."""

    __slots__ = ("name", "address", "_addresses", "_uses", "_tensor_map", "listener")

    def __init__(self, name: str, addresses: dict[str, int], uses: list, tensor_map=None):
        self.name = name
        self.address = addresses[name]
        self._addresses = addresses
        self._uses: list[tuple[_LaunchPlan, int, int, TensorMapArg | None]] = uses
        self._tensor_map = tensor_map    # the backend's: a map encoded for an address
        self.listener: Callable[["Binding"], None] | None = None

    def bind(self, address: int) -> None:
        """Make the buffer live at ``address`` for the following runs (O(uses), nothing when the
        address is the current one)."""
        if address == self.address:
            return
        self.address = address
        self._addresses[self.name] = address
        for plan, position, offset, tmap in self._uses:
            # a tensor-map argument points to a map encoded for the new address (uploaded in
            # stream order, so runs already issued still read theirs)
            plan.set(position, address + offset if tmap is None else
                     self._tensor_map(tmap, address + offset))
        if self.listener is not None:
            self.listener(self)


class Interpreter:
    """Runs a manifest's host program on a backend over already-allocated buffers.

    ``addresses`` is copied: the interpreter's map is its own, changed only through bindings.
    """

    def __init__(
        self, manifest: Manifest, backend: Backend, addresses: dict[str, int], prepared: dict[str, Any]
    ):
        self.manifest, self.backend = manifest, backend
        self.addresses: dict[str, int] = dict(addresses)
        self.plans = {
            k.name: _LaunchPlan(k, prepared[k.name], self.addresses, backend)
            for k in manifest.kernels
        }
        uses: dict[str, list] = {name: [] for name in self.addresses}
        for plan in self.plans.values():
            for i, name, offset, tmap in plan.buffer_slots:
                uses[name].append((plan, i, offset, tmap))
        tensor_map = getattr(backend, "tensor_map", None)
        self.bindings = {name: Binding(name, self.addresses, uses[name], tensor_map)
                         for name in self.addresses}
        self._env: dict[str, int] = {}
        self._ops = self._compile(manifest.program)

    # binding -----------------------------------------------------------------------------------

    def binding(self, name: str) -> Binding:
        """The :class:`Binding` of buffer ``name`` (KeyError for an unknown buffer)."""
        return self.bindings[name]

    def rebind(self, name: str, address: int) -> None:
        """Make buffer ``name`` live at ``address`` for the following runs (O(uses of the buffer)).

        Launch arguments become ``address + offset``; tensor-map arguments point to a map
        encoded for that address (uploaded in stream order, so runs already issued still read
        theirs); copies, memsets and predicates read the new address when they run. Runs
        already issued are not affected.
        """
        if name not in self.bindings:
            raise KeyError(f"unknown buffer {name!r}")
        self.bindings[name].bind(address)

    def rebind_all(self, bindings: dict[str, int]) -> None:
        """:meth:`rebind` every ``name: address`` pair of ``bindings``."""
        for name, address in bindings.items():
            self.rebind(name, address)

    def kernel_only_buffers(self) -> set[str]:
        """Buffers that no copy, memset or predicate touches: only kernel arguments read or
        write them (a CUDA graph can follow such a buffer by updating its kernel nodes)."""
        touched: set[str] = set()
        for _, step in self.manifest.steps():
            if isinstance(step, Copy):
                touched.update((step.dst, step.src))
            elif isinstance(step, Memset):
                touched.add(step.buffer)
            elif isinstance(step, (While, If)):
                touched.add(step.predicate.buffer)
        return set(self.addresses) - touched

    # running -----------------------------------------------------------------------------------

    def run(self) -> None:
        """Issue the whole program once."""
        for op in self._ops:
            op()

    def launch_sequence(self) -> list[tuple[_LaunchPlan, dict[str, int]]]:
        """Every launch the program issues, in order, with the loop indices it sees (programs
        without host ``while``/``if`` only: their launches do not depend on device data)."""
        found: list = []

        def walk(steps, env):
            for s in steps:
                if isinstance(s, Launch):
                    found.append((self.plans[s.kernel], dict(env)))
                elif isinstance(s, Loop):
                    for i in range(s.count):
                        walk(s.body, {**env, s.index: i} if s.index else env)
                elif isinstance(s, (While, If)):
                    raise QuartetError("a program with a host while/if has no fixed launch sequence")

        walk(self.manifest.program, {})
        return found

    def _compile(self, steps: tuple[Step, ...]) -> list[Callable[[], None]]:
        """The steps as zero-argument callables (loop indices live in ``self._env``)."""
        ops = []
        for s in steps:
            if isinstance(s, Launch):
                ops.append(self._launch_op(self.plans[s.kernel]))
            elif isinstance(s, Copy):
                ops.append(self._copy_op(s))
            elif isinstance(s, Memset):
                op = self._memset_op(s)
                if op is not None:
                    ops.append(op)
            elif isinstance(s, Loop):
                ops.append(self._loop_op(s.count, s.index, self._compile(s.body)))
            elif isinstance(s, While):
                ops.append(self._while_op(s, self._compile(s.cond), self._compile(s.body)))
            elif isinstance(s, If):
                ops.append(self._if_op(s.predicate, self._compile(s.then), self._compile(s.else_)))
            else:  # validate() rejects these; an internal error if reached
                raise TypeError(f"not a host-program step: {s!r}")
        return ops

    def _plain_launch_op(self, plan: _LaunchPlan) -> Callable[[], None]:
        env, backend = self._env, self.backend
        if plan.packed is not None:
            launch = plan.packed.launch
            if not plan.index_slots:
                return launch

            def indexed_launch():
                plan.set_indices(env)
                launch()

            return indexed_launch
        prepared = plan.prepared
        return lambda: backend.launch(prepared, plan.args(env))

    def _launch_op(self, plan: _LaunchPlan) -> Callable[[], None]:
        launch = self._plain_launch_op(plan)
        if plan.bound_at is None:
            return launch

        def bounded_launch():
            launch()
            self._report_bound(plan)

        return bounded_launch

    def _copy_op(self, s: Copy) -> Callable[[], None]:
        addr, copy = self.addresses, self.backend.copy
        dst, src, size, doff, soff = s.dst, s.src, s.size, s.dst_offset, s.src_offset
        return lambda: copy(addr[dst] + doff, addr[src] + soff, size)

    def _memset_op(self, s: Memset) -> Callable[[], None] | None:
        size = self.manifest.buffer_map[s.buffer].size - s.offset if s.size is None else s.size
        if not size:
            return None
        addr, memset = self.addresses, self.backend.memset
        name, offset, value, width, count = s.buffer, s.offset, s.value, s.width, size // s.width
        return lambda: memset(addr[name] + offset, value, width, count)

    def _loop_op(self, count: int, index: str | None, body: list) -> Callable[[], None]:
        env = self._env

        def loop():
            outer = env.get(index) if index else None
            for i in range(count):
                if index:
                    env[index] = i
                for op in body:
                    op()
            if index:
                if outer is None:
                    env.pop(index, None)
                else:
                    env[index] = outer

        return loop

    def _while_op(self, s: While, cond: list, body: list) -> Callable[[], None]:
        def host_while():
            iterations = 0
            while True:
                for op in cond:
                    op()
                if not self._truth(s.predicate):
                    return
                if s.max_iterations is not None and iterations >= s.max_iterations:
                    if s.at_bound == "stop":
                        warnings.warn(f"a while loop stopped at its bound of "
                                      f"{s.max_iterations} iterations (predicate buffer "
                                      f"{s.predicate.buffer!r} still nonzero)", BoundWarning,
                                      stacklevel=3)
                        return
                    raise QuartetError(
                        f"a host while loop ran past its max_iterations ({s.max_iterations}); "
                        f"predicate buffer {s.predicate.buffer!r} never became zero"
                    )
                for op in body:
                    op()
                iterations += 1

        return host_while

    def _if_op(self, predicate: Predicate, then: list, else_: list) -> Callable[[], None]:
        def host_if():
            for op in then if self._truth(predicate) else else_:
                op()

        return host_if

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

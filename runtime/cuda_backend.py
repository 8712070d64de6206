"""The CUDA backend: the driver API through ``cuda-bindings`` (``from cuda.bindings import driver``).

Modules are loaded from the artifact's cubin / PTX / fatbin bytes (``cuModuleLoadData``), buffers
come from ``cuMemAlloc`` once per loaded program, and all work goes to one stream that the
loaded program sets before each call (the caller's). Kernels flagged cooperative go through
``cuLaunchCooperativeKernel`` after a load-time check that their grid fits on the GPU at once
(Rammer's persistent vDevice kernels and Grinder's device-side loops need every block resident).
A predicate read is a 1-8 byte copy into pinned memory and a stream synchronisation.

Every driver call is checked; a failure becomes a one-line :class:`CudaError`. Works with
cuda-bindings 12.x and 13.x (only functions present in both are used), on the primary context
of the device, which is the one PyTorch uses too.
"""

from __future__ import annotations

import ctypes
import math
from collections import OrderedDict
from typing import Any

import numpy as np

from quartet.errors import QuartetError
from quartet.runtime import dtypes
from quartet.runtime.manifest import BufferArg, IndexArg, Kernel, ScalarArg, TensorMapArg
from quartet.runtime.targets import sm_name

_STATIC_SHARED_LIMIT = 48 * 1024
#: device slots kept per tensor-map argument (addresses seen recently)
_TENSOR_MAP_SLOTS = 8


class CudaError(QuartetError):
    """A CUDA driver call failed."""


def import_driver():
    """The ``cuda.bindings.driver`` module, or a QuartetError saying how to get it."""
    try:
        from cuda.bindings import driver
    except ImportError:
        raise QuartetError(
            "the cuda backend needs the cuda-bindings package (pip install 'cuda-bindings>=12.6')"
        ) from None
    return driver


def _enum_value(e) -> int:
    return e.value if hasattr(e, "value") else int(e)


class _Prepared:
    """A kernel ready to launch: its function, launch shape and argument storage.

    The arguments live in ctypes slots behind one ``void **`` array (``params``) made here,
    once: a launch passes that array as it is (the driver copies the values at the call), and
    the interpreter changes an argument by writing its slot (:meth:`set`). ``launch`` is set by
    :meth:`CudaBackend.pack`.
    """

    def __init__(self, kernel: Kernel, function: Any):
        self.kernel, self.function = kernel, function
        self.grid, self.block = kernel.grid, kernel.block
        self.shared_memory, self.cooperative = kernel.shared_memory, kernel.cooperative
        self.storage = []
        for a in kernel.args:
            if isinstance(a, (BufferArg, TensorMapArg)):
                self.storage.append(ctypes.c_uint64(0))
            elif isinstance(a, (ScalarArg, IndexArg)):
                self.storage.append(dtypes.SCALAR_CTYPES[a.dtype]())
        self.pointers = (ctypes.c_void_p * max(1, len(self.storage)))(
            *[ctypes.addressof(s) for s in self.storage]
        )
        self.params = ctypes.addressof(self.pointers) if self.storage else 0
        self.launch = None
        self.node_params = None   # CUDA_KERNEL_NODE_PARAMS, made when a graph node is updated

    def set(self, position: int, value: int | float) -> None:
        self.storage[position].value = value


class CudaBackend:
    """One CUDA device (its primary context) and the stream the program currently runs on."""

    name = "cuda"

    def __init__(self, device: int = 0, location: str | None = None):
        self.d = d = import_driver()
        self.location = location
        try:
            self._check(d.cuInit(0), "cuInit")
        except CudaError:
            raise
        except Exception as e:  # the bindings raise when libcuda itself cannot be found
            raise QuartetError(f"no usable CUDA driver on this machine ({type(e).__name__}: {e})") from None
        count = self._check(d.cuDeviceGetCount(), "cuDeviceGetCount")
        if not 0 <= device < count:
            raise QuartetError(f"no CUDA device {device} (this machine has {count})")
        self.device = device
        self.dev = self._check(d.cuDeviceGet(device), "cuDeviceGet")
        attr = d.CUdevice_attribute
        major = self._attribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
        minor = self._attribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)
        self.device_arch = sm_name(major, minor)
        self.sm_count = self._attribute(attr.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        self.cooperative_ok = bool(self._attribute(attr.CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH))
        self.ctx = self._check(d.cuDevicePrimaryCtxRetain(self.dev), "cuDevicePrimaryCtxRetain")
        self._ok, self._set_current = d.CUresult.CUDA_SUCCESS, d.cuCtxSetCurrent
        self._memsets = {1: d.cuMemsetD8Async, 2: d.cuMemsetD16Async, 4: d.cuMemsetD32Async}
        self.activate()
        self.stream = 0
        self._pinned = self._check(d.cuMemHostAlloc(16, 0), "cuMemHostAlloc")
        self._modules: dict[str, Any] = {}
        self._allocations: list[int] = []
        self._graphs: list[tuple[Any, Any]] = []
        self._streams: list[Any] = []
        self._tensor_maps: dict[Any, OrderedDict] = {}   # TensorMapArg -> address -> (slot, map)
        self._encoder = None
        self._closed = False

    # plumbing ----------------------------------------------------------------------------------

    def _check(self, result, what: str):
        """Return the values of a driver call's result tuple, raising CudaError on failure."""
        err, rest = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
        if err != self.d.CUresult.CUDA_SUCCESS:
            raise CudaError(f"CUDA call {what} failed: {self._describe(err)}", self.location)
        if not rest:
            return None
        return rest[0] if len(rest) == 1 else rest

    def _describe(self, err) -> str:
        d = self.d
        name, text = getattr(err, "name", str(err)), ""
        try:
            e1, n = d.cuGetErrorName(err)
            e2, s = d.cuGetErrorString(err)
            if e1 == d.CUresult.CUDA_SUCCESS:
                name = n.decode() if isinstance(n, bytes) else str(n)
            if e2 == d.CUresult.CUDA_SUCCESS:
                text = s.decode() if isinstance(s, bytes) else str(s)
        except Exception:
            pass
        return f"{name} ({text})" if text else name

    def _attribute(self, attribute) -> int:
        return self._check(self.d.cuDeviceGetAttribute(attribute, self.dev), "cuDeviceGetAttribute")

    def activate(self) -> None:
        """Make the device's primary context current on the calling thread."""
        result = self._set_current(self.ctx)
        if result[0] != self._ok:
            self._check(result, "cuCtxSetCurrent")

    def set_stream(self, stream: int) -> None:
        self.stream = stream

    def function_handle(self, prepared: _Prepared) -> int:
        """The CUfunction of a prepared kernel as an int (to match it with graph nodes)."""
        return int(prepared.function)

    # the Backend interface --------------------------------------------------------------------

    def alloc(self, size: int) -> int:
        address = int(self._check(self.d.cuMemAlloc(max(size, 1)), f"cuMemAlloc({size} bytes)"))
        self._allocations.append(address)
        return address

    def free(self, address: int) -> None:
        self._check(self.d.cuMemFree(address), "cuMemFree")
        self._allocations.remove(address)

    def upload(self, address: int, data: np.ndarray) -> None:
        if data.nbytes:
            self._check(
                self.d.cuMemcpyHtoDAsync(address, data.ctypes.data, data.nbytes, self.stream),
                "cuMemcpyHtoDAsync",
            )

    def download(self, address: int, out: np.ndarray) -> None:
        if out.nbytes:
            self._check(
                self.d.cuMemcpyDtoHAsync(out.ctypes.data, address, out.nbytes, self.stream),
                "cuMemcpyDtoHAsync",
            )

    def prepare(self, kernel: Kernel, binary: bytes) -> _Prepared:
        d = self.d
        module = self._modules.get(kernel.binary)
        if module is None:
            image = binary + b"\0" if kernel.binary_format == "ptx" else binary
            module = self._check(d.cuModuleLoadData(image), f"cuModuleLoadData({kernel.binary})")
            self._modules[kernel.binary] = module
        function = self._check(
            d.cuModuleGetFunction(module, kernel.entry.encode()), f"cuModuleGetFunction({kernel.entry})"
        )
        fattr = d.CUfunction_attribute
        # the opt-in counts static shared memory too: 48 KiB of dynamic shared memory beside
        # 1 KiB of static (a fused kernel's reduction scratch) fails at launch without it
        static = self._check(d.cuFuncGetAttribute(fattr.CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES,
                                                  function), "cuFuncGetAttribute") \
            if kernel.shared_memory else 0
        if kernel.shared_memory and kernel.shared_memory + static > _STATIC_SHARED_LIMIT:
            self._check(
                d.cuFuncSetAttribute(
                    function, fattr.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, kernel.shared_memory
                ),
                f"cuFuncSetAttribute(kernel {kernel.name!r}, {kernel.shared_memory} bytes of shared memory)",
            )
        threads = math.prod(kernel.block)
        limit = self._check(
            d.cuFuncGetAttribute(fattr.CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, function),
            "cuFuncGetAttribute",
        )
        if threads > limit:
            raise QuartetError(
                f"kernel {kernel.name!r}: block of {threads} threads, but its binary allows at most {limit} on this GPU",
                self.location,
            )
        if kernel.cooperative:
            self._check_cooperative(kernel, function, threads)
        return _Prepared(kernel, function)

    def _check_cooperative(self, kernel: Kernel, function: Any, threads: int) -> None:
        if not self.cooperative_ok:
            raise QuartetError(
                f"kernel {kernel.name!r} is cooperative, and this GPU cannot launch cooperative kernels",
                self.location,
            )
        per_sm = self._check(
            self.d.cuOccupancyMaxActiveBlocksPerMultiprocessor(function, threads, kernel.shared_memory),
            "cuOccupancyMaxActiveBlocksPerMultiprocessor",
        )
        blocks, fit = math.prod(kernel.grid), per_sm * self.sm_count
        if blocks > fit:
            p = kernel.persistent
            if p is not None:
                raise QuartetError(
                    f"persistent kernel {kernel.name!r} runs {p.veus} vEUs on {blocks} blocks that must all be "
                    f"resident ({p.blocks_per_sm} per SM was counted on); this GPU keeps {per_sm} per SM x "
                    f"{self.sm_count} SMs = {fit}: it cannot run this artifact (compile it for this GPU)",
                    self.location,
                )
            raise QuartetError(
                f"cooperative kernel {kernel.name!r} has {blocks} blocks, but only {fit} fit on this GPU at once "
                f"({per_sm} per SM x {self.sm_count} SMs)",
                self.location,
            )

    def launch(self, prepared: _Prepared, args: list[int | float]) -> None:
        for position, value in enumerate(args):
            prepared.set(position, value)
        if prepared.launch is None:
            self.pack(prepared, args)
        prepared.launch()

    def pack(self, prepared: _Prepared, values: list[int | float]) -> _Prepared:
        """Write ``values`` into the kernel's argument slots and give it a ``launch()`` that
        issues it on the current stream with no per-launch Python work but the driver call."""
        for position, value in enumerate(values):
            prepared.set(position, value)
        d, backend = self.d, self
        ok = d.CUresult.CUDA_SUCCESS
        f, (g0, g1, g2), (b0, b1, b2) = prepared.function, prepared.grid, prepared.block
        smem, params, what = prepared.shared_memory, prepared.params, prepared.kernel.name
        if prepared.cooperative:
            cooperative = d.cuLaunchCooperativeKernel

            def launch():
                result = cooperative(f, g0, g1, g2, b0, b1, b2, smem, backend.stream, params)
                if result[0] != ok:
                    backend._check(result, f"launching kernel {what!r}")
        else:
            kernel = d.cuLaunchKernel

            def launch():
                result = kernel(f, g0, g1, g2, b0, b1, b2, smem, backend.stream, params, 0)
                if result[0] != ok:
                    backend._check(result, f"launching kernel {what!r}")

        prepared.launch = launch
        return prepared

    def tensor_map(self, arg, address: int) -> int:
        """The device address of ``arg``'s tensor map for data at ``address``.

        Maps are encoded on the host (``runtime/tensormap.py``) and uploaded in stream order
        into 128-byte device slots, several per argument: a program that alternates between a
        few addresses (the caller's tensors, call after call) re-encodes nothing. When an
        argument has seen more addresses than it has slots, the least recently used slot is
        rewritten (in stream order, after the work already issued on this stream)."""
        from quartet.runtime.tensormap import Encoder

        maps = self._tensor_maps.setdefault(arg, OrderedDict())
        hit = maps.get(address)
        if hit is not None:
            maps.move_to_end(address)
            return hit[0]
        if self._encoder is None:
            self._encoder = Encoder()
        data = np.frombuffer(self._encoder(arg, address), dtype=np.uint8).copy()
        if len(maps) >= _TENSOR_MAP_SLOTS:
            _, (slot, _) = maps.popitem(last=False)
        else:
            slot = self.alloc(len(data))
        self.upload(slot, data)        # pageable source: staged before the call returns
        maps[address] = (slot, data)
        return slot

    def copy(self, dst: int, src: int, size: int) -> None:
        if size:
            result = self.d.cuMemcpyDtoDAsync(dst, src, size, self.stream)
            if result[0] != self._ok:
                self._check(result, "cuMemcpyDtoDAsync")

    def memset(self, address: int, value: int, width: int, count: int) -> None:
        result = self._memsets[width](address, value, count, self.stream)
        if result[0] != self._ok:
            self._check(result, f"cuMemsetD{8 * width}Async")

    def read_scalar(self, address: int, dtype: str) -> int | float:
        size = dtypes.ITEMSIZE[dtype]
        self._check(
            self.d.cuMemcpyDtoHAsync(self._pinned, address, size, self.stream),
            "cuMemcpyDtoHAsync (predicate)",
        )
        self.synchronize()
        c = dtypes.SCALAR_CTYPES.get(dtype, ctypes.c_uint8)
        return c.from_address(int(self._pinned)).value

    def synchronize(self) -> None:
        self._check(self.d.cuStreamSynchronize(self.stream), "cuStreamSynchronize")

    # graphs and timing -------------------------------------------------------------------------

    def capture(self, issue) -> Any:
        """Record what ``issue()`` sends to the stream as a CUDA graph; return the executable graph."""
        d = self.d
        stream = self._check(
            d.cuStreamCreate(_enum_value(d.CUstream_flags.CU_STREAM_NON_BLOCKING)), "cuStreamCreate"
        )
        self._streams.append(stream)
        caller, self.stream = self.stream, int(stream)
        self._check(
            d.cuStreamBeginCapture(stream, d.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL),
            "cuStreamBeginCapture",
        )
        try:
            issue()
        except BaseException:
            d.cuStreamEndCapture(stream)
            raise
        finally:
            self.stream = caller
        graph = self._check(d.cuStreamEndCapture(stream), "cuStreamEndCapture")
        executable = self._check(d.cuGraphInstantiate(graph, 0), "cuGraphInstantiate")
        self._graphs.append((graph, executable))
        return executable

    def replay(self, executable: Any) -> None:
        self._check(self.d.cuGraphLaunch(executable, self.stream), "cuGraphLaunch")

    def kernel_nodes(self, executable: Any) -> list[tuple[Any, int]] | None:
        """(node, function handle) of every kernel node of the graph ``executable`` was made
        from, in issue order; None when the graph is not the one chain a single stream's capture
        makes (then its nodes cannot be matched with the launches)."""
        d = self.d
        graph = next(g for g, e in self._graphs if e is executable)
        kernel_type = d.CUgraphNodeType.CU_GRAPH_NODE_TYPE_KERNEL
        roots = self._listing(d.cuGraphGetRootNodes, graph, "cuGraphGetRootNodes")
        if len(roots) > 1:
            return None
        found, node = [], roots[0] if roots else None
        while node is not None:
            if self._check(d.cuGraphNodeGetType(node), "cuGraphNodeGetType") == kernel_type:
                params = self._check(d.cuGraphKernelNodeGetParams(node), "cuGraphKernelNodeGetParams")
                found.append((node, int(params.func)))
            after = self._listing(d.cuGraphNodeGetDependentNodes, node, "cuGraphNodeGetDependentNodes")
            if len(after) > 1:
                return None
            node = after[0] if after else None
        return found

    def _listing(self, fn, handle, what: str) -> list:
        """The list a ``cuGraph...(handle, count)`` query returns: the count first, then the items.

        The bindings return ``(err, items, count)``, or ``(err, items, edge data, count)`` for
        the queries that CUDA 13 gave edge data (``cuGraphNodeGetDependentNodes``): the items
        are the first value and the count the last."""
        count = self._check(fn(handle, 0), what)[-1]
        if not count:
            return []
        items = self._check(fn(handle, count), what)[0]
        return list(items)[:count]

    def update_kernel_node(self, executable: Any, node: Any, prepared: _Prepared) -> None:
        """Give kernel node ``node`` of ``executable`` the current values of ``prepared``'s
        argument slots (``cuGraphExecKernelNodeSetParams``; later replays only)."""
        if prepared.node_params is None:
            p = self.d.CUDA_KERNEL_NODE_PARAMS()
            p.func = prepared.function
            p.gridDimX, p.gridDimY, p.gridDimZ = prepared.grid
            p.blockDimX, p.blockDimY, p.blockDimZ = prepared.block
            p.sharedMemBytes = prepared.shared_memory
            p.kernelParams = prepared.params
            prepared.node_params = p
        self._check(self.d.cuGraphExecKernelNodeSetParams(executable, node, prepared.node_params),
                    f"cuGraphExecKernelNodeSetParams (kernel {prepared.kernel.name!r})")

    def timer(self):
        """A (start, stop) pair: call start() and stop() around work; stop() returns milliseconds."""
        d = self.d
        begin = self._check(d.cuEventCreate(0), "cuEventCreate")
        end = self._check(d.cuEventCreate(0), "cuEventCreate")

        def start():
            self._check(d.cuEventRecord(begin, self.stream), "cuEventRecord")

        def stop() -> float:
            self._check(d.cuEventRecord(end, self.stream), "cuEventRecord")
            self._check(d.cuEventSynchronize(end), "cuEventSynchronize")
            ms = self._check(d.cuEventElapsedTime(begin, end), "cuEventElapsedTime")
            return float(ms)

        def release():
            d.cuEventDestroy(begin)
            d.cuEventDestroy(end)

        return start, stop, release

    def close(self) -> None:
        """Free everything this backend made; errors here are ignored (the process may be ending)."""
        if self._closed:
            return
        self._closed = True
        d = self.d
        try:
            d.cuCtxSetCurrent(self.ctx)
            d.cuCtxSynchronize()
            for graph, executable in self._graphs:
                d.cuGraphExecDestroy(executable)
                d.cuGraphDestroy(graph)
            for stream in self._streams:
                d.cuStreamDestroy(stream)
            for address in self._allocations:
                d.cuMemFree(address)
            for module in self._modules.values():
                d.cuModuleUnload(module)
            d.cuMemFreeHost(self._pinned)
            d.cuDevicePrimaryCtxRelease(self.dev)
        except Exception:
            pass

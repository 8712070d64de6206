"""A stand-in for ``cuda.bindings.driver`` whose calls do nothing: the runtime's own host cost.

``bench/profile_call.py --fake-driver`` loads an sm_90 artifact through the real
:class:`~quartet.runtime.cuda_backend.CudaBackend` on top of this module, on a machine without a
GPU, so that what a call costs is Quartet's Python (and torch's, for the tensors it touches)
with every driver call costing one Python function call and nothing more. On the GPU machine
the same script without ``--fake-driver`` adds what the driver really costs.

Every function returns ``(CUDA_SUCCESS, value...)`` as cuda-bindings does. Stream capture is
recorded, so that graph mode (node matching, node updates) runs its real code: the captured
graph is the chain of launches issued while capturing. Device memory is host memory that is
never read (kernels do not run), so outputs hold garbage: this is for timing only.
"""

from __future__ import annotations

import enum
import itertools
import types

import numpy as np


class CUresult(enum.IntEnum):
    CUDA_SUCCESS = 0
    CUDA_ERROR_INVALID_VALUE = 1


class CUdevice_attribute(enum.IntEnum):
    CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
    CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76
    CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16
    CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH = 95


class CUfunction_attribute(enum.IntEnum):
    CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK = 0
    CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8
    CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES = 1


class CUstream_flags(enum.IntEnum):
    CU_STREAM_NON_BLOCKING = 1


class CUstreamCaptureMode(enum.IntEnum):
    CU_STREAM_CAPTURE_MODE_THREAD_LOCAL = 1


class CUgraphNodeType(enum.IntEnum):
    CU_GRAPH_NODE_TYPE_KERNEL = 0
    CU_GRAPH_NODE_TYPE_MEMCPY = 1
    CU_GRAPH_NODE_TYPE_MEMSET = 2


class CUstream(int):
    pass


class CUDA_KERNEL_NODE_PARAMS:
    func = None
    gridDimX = gridDimY = gridDimZ = blockDimX = blockDimY = blockDimZ = 0
    sharedMemBytes = 0
    kernelParams = 0


_OK = (CUresult.CUDA_SUCCESS,)
_handles = itertools.count(0x1000)
_ATTRIBUTES = {75: 9, 76: 0, 16: 132, 95: 1}
_host: dict[int, np.ndarray] = {}
_capturing: dict[int, list] = {}          # stream -> nodes recorded while capturing
_graphs: dict[int, list] = {}             # graph -> its nodes: (type, func)
_executables: dict[int, int] = {}         # executable -> graph


class _Node:
    def __init__(self, graph: int, index: int):
        self.graph, self.index = graph, index


def _value(x=None):
    return (CUresult.CUDA_SUCCESS, next(_handles) if x is None else x)


def cuInit(flags):
    return _OK


def cuDeviceGetCount():
    return _value(1)


def cuDeviceGet(ordinal):
    return _value(ordinal)


def cuDeviceGetAttribute(attribute, device):
    return _value(_ATTRIBUTES[int(attribute)])


def cuDevicePrimaryCtxRetain(device):
    return _value()


def cuCtxSetCurrent(ctx):
    return _OK


def cuMemHostAlloc(size, flags):
    array = np.zeros(size + 64, np.uint8)
    _host[array.ctypes.data] = array
    return _value(array.ctypes.data)


def cuMemAlloc(size):
    return cuMemHostAlloc(size, 0)


def _no_op(*args):
    return _OK


def _recorded(kind):
    def op(*args):      # (..., stream): a copy or memset, recorded while its stream captures
        if int(args[-1]) in _capturing:
            _capturing[int(args[-1])].append((kind, None))
        return _OK
    return op


cuMemFree = cuMemFreeHost = cuMemcpyHtoDAsync = cuMemcpyDtoHAsync = _no_op
cuMemcpyDtoDAsync = _recorded("memcpy")
cuMemsetD8Async = cuMemsetD16Async = cuMemsetD32Async = _recorded("memset")
cuStreamSynchronize = cuCtxSynchronize = cuFuncSetAttribute = cuModuleUnload = _no_op
cuDevicePrimaryCtxRelease = cuGraphExecDestroy = cuGraphDestroy = cuStreamDestroy = _no_op
cuEventRecord = cuEventSynchronize = cuEventDestroy = _no_op


def cuLaunchKernel(f, g0, g1, g2, b0, b1, b2, smem, stream, params, extra):
    if stream in _capturing:
        _capturing[stream].append(("kernel", int(f)))
    return _OK


def cuLaunchCooperativeKernel(f, g0, g1, g2, b0, b1, b2, smem, stream, params):
    return cuLaunchKernel(f, g0, g1, g2, b0, b1, b2, smem, stream, params, 0)


def cuModuleLoadData(image):
    return _value()


def cuModuleGetFunction(module, name):
    return _value()


def cuFuncGetAttribute(attribute, function):
    return _value(1024)


def cuOccupancyMaxActiveBlocksPerMultiprocessor(function, threads, smem):
    return _value(1)


def cuStreamCreate(flags):
    return _value(CUstream(next(_handles)))


def cuStreamBeginCapture(stream, mode):
    _capturing[int(stream)] = []
    return _OK


def cuStreamEndCapture(stream):
    graph = next(_handles)
    _graphs[graph] = _capturing.pop(int(stream))
    return _value(graph)


def cuGraphInstantiate(graph, flags):
    executable = next(_handles)
    _executables[executable] = graph
    return _value(executable)


cuGraphLaunch = cuGraphExecKernelNodeSetParams = _no_op


def cuGraphGetRootNodes(graph, count):
    nodes = [_Node(graph, 0)] if _graphs[graph] else []
    return (CUresult.CUDA_SUCCESS, nodes[:count], len(nodes))


def cuGraphNodeGetDependentNodes(node, count):
    after = [_Node(node.graph, node.index + 1)] if node.index + 1 < len(_graphs[node.graph]) else []
    return (CUresult.CUDA_SUCCESS, after[:count], len(after))


def cuGraphNodeGetType(node):
    kind = _graphs[node.graph][node.index][0]
    return _value({"kernel": CUgraphNodeType.CU_GRAPH_NODE_TYPE_KERNEL,
                   "memcpy": CUgraphNodeType.CU_GRAPH_NODE_TYPE_MEMCPY,
                   "memset": CUgraphNodeType.CU_GRAPH_NODE_TYPE_MEMSET}[kind])


def cuGraphKernelNodeGetParams(node):
    params = CUDA_KERNEL_NODE_PARAMS()
    params.func = _graphs[node.graph][node.index][1]
    return _value(params)


def cuEventCreate(flags):
    return _value()


def cuEventElapsedTime(begin, end):
    return _value(0.001)


def cuGetErrorName(err):
    return (CUresult.CUDA_SUCCESS, str(err).encode())


def cuGetErrorString(err):
    return (CUresult.CUDA_SUCCESS, b"fake driver")


def install() -> types.ModuleType:
    """Make :class:`CudaBackend` use this module instead of cuda-bindings; returns it."""
    import sys

    from quartet.runtime import cuda_backend

    module = sys.modules[__name__]
    cuda_backend.import_driver = lambda: module
    return module

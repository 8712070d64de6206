"""One kernel launch through the CUDA driver API, for the GPU tests of the lowerings.

Copies ``arrays`` to the device, launches ``entry`` of ``binary`` with one pointer per array
(the bare-pointer convention of every Quartet kernel), and copies every array back in place.
"""

import numpy as np


def run_kernel(binary: bytes, entry: str, grid, block, shared_bytes: int, arrays) -> list:
    from cuda.bindings import driver

    def check(result):
        err = result[0] if isinstance(result, tuple) else result
        assert err == driver.CUresult.CUDA_SUCCESS, err
        if isinstance(result, tuple):
            return result[1] if len(result) == 2 else result[1:]
        return None

    check(driver.cuInit(0))
    dev = check(driver.cuDeviceGet(0))
    context = check(driver.cuDevicePrimaryCtxRetain(dev))
    check(driver.cuCtxSetCurrent(context))
    mod = check(driver.cuModuleLoadData(binary))
    fn = check(driver.cuModuleGetFunction(mod, entry.encode()))
    attr = driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    check(driver.cuFuncSetAttribute(fn, attr, shared_bytes))
    ptrs = []
    for a in arrays:
        p = check(driver.cuMemAlloc(a.nbytes))
        check(driver.cuMemcpyHtoD(p, a.ctypes.data, a.nbytes))
        ptrs.append(p)
    args = [np.array([int(p)], dtype=np.uint64) for p in ptrs]
    argp = np.array([a.ctypes.data for a in args], dtype=np.uint64)
    check(driver.cuLaunchKernel(fn, *grid, *block, shared_bytes, 0, argp.ctypes.data, 0))
    check(driver.cuCtxSynchronize())
    for a, p in zip(arrays, ptrs):
        check(driver.cuMemcpyDtoH(a.ctypes.data, p, a.nbytes))
        check(driver.cuMemFree(p))
    return arrays

"""Scripts and a minimal compile path for checking GEMM kernels on the GPU machine."""

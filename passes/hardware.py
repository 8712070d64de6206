"""The hardware model: one table per target with the figures Roller's policy needs.

Roller (OSDI'22, section 4 and the artifact's ``arch/v100.py``) builds tiles from a device
specification, not from measurements: the number of streaming multiprocessors (SMs, or compute
units), the warp size and sub-partitions per SM (the execution-unit alignment rule), register and
shared-memory capacities (when a tile stops fitting), the memory transaction and bank geometry
(the transaction and bank alignment rules) and the bandwidth of each memory level against the
peak compute rate (the micro performance model that says when a tile is compute-bound).

Hardware is data: no pass holds a device number of its own. ``get(name)`` returns the
:class:`Hardware` of a target; an unknown name is a one-line :class:`QuartetError` that lists the
known ones. Targets: ``sm_90`` (H100 SXM5), ``sm_80`` (A100 SXM4 40 GB), ``gfx942`` (MI300X) and
``cpu`` (a generic x86-64 AVX2 host for the CPU path, where "SM" is a core, "shared memory" the
per-core L2 a block tile is meant to stay in and "registers" the vector register file).

Figures marked "model" are estimates used only to rank tiles (the per-SM bandwidth an SM alone
can draw, the register overhead outside the tile, the number of resident warps that hides
latency); they are not published numbers and are named as such next to their value.
"""

from __future__ import annotations

from dataclasses import dataclass

from quartet.errors import QuartetError

KB = 1024


@dataclass(frozen=True)
class Hardware:
    """A target as Roller's policy sees it. Bytes, bytes per second, FLOP per second."""

    name: str
    kind: str                       # "cuda" | "rocm" | "cpu"
    description: str
    num_units: int                  # SMs (CUDA), CUs (ROCm), cores (CPU)
    warp_size: int                  # threads that issue together (1 on the CPU)
    sub_partitions: int             # warp schedulers per SM (SIMDs per CU)
    regs_per_unit: int              # 32-bit registers per SM
    regs_per_block: int             # 32-bit registers one thread block may use
    max_regs_per_thread: int
    smem_per_unit: int              # shared memory per SM
    smem_per_block: int             # largest shared-memory allocation of one block (opt-in)
    max_threads_per_block: int
    max_threads_per_unit: int
    max_blocks_per_unit: int
    transaction_bytes: int          # DRAM/L2 access granularity (sector)
    line_bytes: int                 # cache line
    smem_banks: int
    bank_bytes: int
    dram_bandwidth: float           # achievable device memory bandwidth
    l2_bandwidth: float             # L2 (last-level on-chip) read bandwidth, whole device
    smem_bandwidth: float           # shared memory, whole device
    l2_bytes: int
    peak_flops: dict                # "f32", "f64", "tensor_f16" (what the lowering reaches)
    mma_shape: tuple[int, int, int] | None   # (m, n, k) of the tensor-core fragment, or None
    mma_warp_size: int              # lanes that hold one fragment (32 NVIDIA, 64 AMD)
    vector_bytes: int               # widest per-thread vector load (16 B ld.global.v4)
    pipeline_stages: int            # shared-memory stages a reuse kernel allocates
    # Model figures (estimates used to rank candidate tiles, not published numbers):
    reg_tile_budget: int            # registers per thread a register tile may take
    reg_overhead: int               # registers per thread outside the tile (addresses, loops)
    unit_bandwidth: float           # DRAM bandwidth one SM alone can draw
    warps_for_peak: int             # resident warps per SM that hide latency
    min_accumulators: int           # accumulators a register tile needs to hide FMA latency
    sync_seconds: float             # cost of one reduction step (barrier, pipeline bubble)
    launch_seconds: float           # kernel launch overhead

    @property
    def peak_threads_multiple(self) -> int:
        """Roller's execution-unit rule: threads per block a multiple of warp x sub-partitions."""
        return self.warp_size * self.sub_partitions

    def peak(self, dtype: str, tensor_core: bool = False) -> float:
        if tensor_core:
            return self.peak_flops["tensor_f16"]
        if dtype == "f64":
            return self.peak_flops["f64"]
        return self.peak_flops["f32"]


# NVIDIA H100 SXM5 (sm_90).
# Sources: NVIDIA H100 Tensor Core GPU Architecture whitepaper (2022), table "H100 SXM5":
#   132 SMs, 1980 MHz max boost, 50 MB L2, 66.9 TFLOPS FP32, 33.5 TFLOPS FP64,
#   989.4 TFLOPS dense FP16/BF16 tensor (wgmma), 3.35 TB/s HBM3, 228 KB shared memory per SM.
# CUDA C++ Programming Guide, "Technical Specifications per Compute Capability" (9.0):
#   64K 32-bit registers per SM and per block, 255 per thread, 2048 threads and 32 blocks per
#   SM, 1024 threads per block, 227 KB (232448 B) shared memory per block with opt-in,
#   4 warp schedulers per SM, 32 banks of 4 bytes; 32-byte sectors in 128-byte lines
#   (CUDA C++ Best Practices Guide, "Coalesced Access to Global Memory").
# Measured: about 3.0 TB/s device-to-device copy (the figure, torch on this H100).
# Shared memory: 128 B/clock/SM x 132 SMs x 1.98 GHz = 33.4 TB/s.
# L2: about 5.5 TB/s read bandwidth measured on H100 PCIe (Chips and Cheese, "Nvidia's H100:
#   Funny L2, and Tons of Bandwidth", 2023); not measured on SXM here: a model figure.
# Tensor cores: Quartet lowers fp16 matmul to mma.sync m16n8k16 (PTX ISA, "Warp-level matrix
#   multiply-accumulate", shape .m16n8k16). On Hopper, mma.sync does not reach the wgmma peak
#   (FlashAttention-3, Shah et al. 2024: the mma.sync FlashAttention-2 runs at about 35% of
#   H100 peak, the wgmma version at 75%). We take 2/3 of 989 TFLOPS as the rate a well-tiled
#   mma.sync GEMM reaches (model figure, not measured here).
SM_90 = Hardware(
    name="sm_90", kind="cuda", description="NVIDIA H100 SXM5 (Hopper, sm_90)",
    num_units=132, warp_size=32, sub_partitions=4,
    regs_per_unit=65536, regs_per_block=65536, max_regs_per_thread=255,
    smem_per_unit=228 * KB, smem_per_block=227 * KB,
    max_threads_per_block=1024, max_threads_per_unit=2048, max_blocks_per_unit=32,
    transaction_bytes=32, line_bytes=128, smem_banks=32, bank_bytes=4,
    dram_bandwidth=3.0e12, l2_bandwidth=5.5e12, smem_bandwidth=33.4e12, l2_bytes=50 * KB * KB,
    peak_flops={"f32": 66.9e12, "f64": 33.5e12, "tensor_f16": 989.4e12 * 2 / 3},
    mma_shape=(16, 8, 16), mma_warp_size=32, vector_bytes=16, pipeline_stages=2,
    reg_tile_budget=128, reg_overhead=32, unit_bandwidth=2 * 3.0e12 / 132,
    warps_for_peak=8, min_accumulators=1, sync_seconds=0.3e-6, launch_seconds=3e-6,
)

# NVIDIA A100 SXM4 40 GB (sm_80).
# Sources: NVIDIA A100 Tensor Core GPU Architecture whitepaper (2020), tables 1 and 3:
#   108 SMs, 1410 MHz boost, 40 MB L2, 19.5 TFLOPS FP32, 9.7 TFLOPS FP64, 312 TFLOPS dense
#   FP16 tensor, 1555 GB/s HBM2, up to 164 KB shared memory per SM.
# CUDA C++ Programming Guide, compute capability 8.0: 64K registers per SM and per block,
#   255 per thread, 2048 threads and 32 blocks per SM, 163 KB (166912 B) per block with opt-in.
# DRAM: about 90% of 1555 GB/s is reachable by a copy kernel (model figure, not measured here).
# Shared memory: 128 B/clock/SM x 108 x 1.41 GHz = 19.5 TB/s. L2: about 2.3x the V100 L2
#   bandwidth per the whitepaper, about 5 TB/s (model figure).
# Tensor cores: mma.sync is Ampere's native tensor-core instruction; CUTLASS reaches about 90%.
SM_80 = Hardware(
    name="sm_80", kind="cuda", description="NVIDIA A100 SXM4 40GB (Ampere, sm_80)",
    num_units=108, warp_size=32, sub_partitions=4,
    regs_per_unit=65536, regs_per_block=65536, max_regs_per_thread=255,
    smem_per_unit=164 * KB, smem_per_block=163 * KB,
    max_threads_per_block=1024, max_threads_per_unit=2048, max_blocks_per_unit=32,
    transaction_bytes=32, line_bytes=128, smem_banks=32, bank_bytes=4,
    dram_bandwidth=1.4e12, l2_bandwidth=5.0e12, smem_bandwidth=19.5e12, l2_bytes=40 * KB * KB,
    peak_flops={"f32": 19.5e12, "f64": 9.7e12, "tensor_f16": 312e12 * 0.9},
    mma_shape=(16, 8, 16), mma_warp_size=32, vector_bytes=16, pipeline_stages=2,
    reg_tile_budget=128, reg_overhead=32, unit_bandwidth=2 * 1.4e12 / 108,
    warps_for_peak=8, min_accumulators=1, sync_seconds=0.4e-6, launch_seconds=3e-6,
)

# AMD Instinct MI300X (gfx942, CDNA3).
# Sources: AMD Instinct MI300X data sheet (2023): 304 CUs, 2100 MHz peak engine clock,
#   5.3 TB/s HBM3, 256 MB AMD Infinity Cache, 163.4 TFLOPS FP32 (vector), 81.7 TFLOPS FP64
#   vector, 1307.4 TFLOPS dense FP16 matrix.
# AMD CDNA3 ISA reference and LLVM AMDGPUUsage (gfx942): wavefront 64, 4 SIMDs per CU,
#   64 KB LDS per CU (and per work-group), 32 LDS banks of 4 bytes, 512 VGPRs per lane at most
#   (256 arch + 256 acc), 512 KB of VGPRs per CU (131072 32-bit registers), 1024 work-items per
#   work-group, 8 waves per SIMD (2048 work-items per CU).
# Matrix cores: v_mfma_f32_16x16x16_f16 (CDNA3 ISA) as the fragment; we assume the lowering
#   reaches half of the dense peak (model figure: no MFMA path has been measured here).
# DRAM: we take about 80% of 5.3 TB/s, 4.3 TB/s, as reachable (model figure, not measured
#   here). LDS: 128 B/clock/CU x 304 CUs x 2.1 GHz = 81.7 TB/s. L2: model figure.
GFX942 = Hardware(
    name="gfx942", kind="rocm", description="AMD Instinct MI300X (CDNA3, gfx942)",
    num_units=304, warp_size=64, sub_partitions=4,
    regs_per_unit=131072, regs_per_block=131072 // 2, max_regs_per_thread=512,
    smem_per_unit=64 * KB, smem_per_block=64 * KB,
    max_threads_per_block=1024, max_threads_per_unit=2048, max_blocks_per_unit=32,
    transaction_bytes=64, line_bytes=128, smem_banks=32, bank_bytes=4,
    dram_bandwidth=4.3e12, l2_bandwidth=10.0e12, smem_bandwidth=81.7e12,
    l2_bytes=4 * KB * KB * 8,
    peak_flops={"f32": 163.4e12 / 2, "f64": 81.7e12, "tensor_f16": 1307.4e12 / 2},
    mma_shape=(16, 16, 16), mma_warp_size=64, vector_bytes=16, pipeline_stages=1,
    reg_tile_budget=128, reg_overhead=32, unit_bandwidth=2 * 4.3e12 / 304,
    warps_for_peak=8, min_accumulators=1, sync_seconds=0.4e-6, launch_seconds=5e-6,
)
# FP32 above: the data sheet's 163.4 TFLOPS counts dual-issue packed FP32; scalar FP32 code
# reaches half of it (81.7), which is what a tile of scalar FMAs can use.

# A generic x86-64 host with AVX2 for the CPU path (model figures throughout: the CPU lowering
# runs on whatever machine runs the tests, so one fixed description keeps results reproducible).
# 16 cores; "thread" = one register tile computed by a core; "warp" = 1 (no lockstep);
# 16 ymm registers of 32 bytes = 128 four-byte registers per core; 48 KB L1d, 1 MB L2 per core
# (Intel Sapphire Rapids: 48 KB L1d, 2 MB L2; AMD Zen 4: 32 KB L1d, 1 MB L2), 64-byte lines;
# peak f32 = 16 cores x 2 FMA ports x 8 lanes x 2 FLOP x 3 GHz = 1.5 TFLOPS; 100 GB/s DRAM.
# A register tile needs 2 ports x 4 cycles of FMA latency = 8 independent ymm accumulators
# (64 floats) to keep the FMA units busy; the tile's contiguous extent is a vector (8 floats).
# "l2_bandwidth" is the level that feeds block tiles: the shared L3 (about 200 GB/s, model);
# "smem_bandwidth" is the L1 that feeds register tiles: 2 loads x 32 B per cycle per core.
CPU = Hardware(
    name="cpu", kind="cpu", description="generic x86-64 host with AVX2, 16 cores (CPU path)",
    num_units=16, warp_size=1, sub_partitions=1,
    regs_per_unit=1 << 30, regs_per_block=1 << 30, max_regs_per_thread=128,
    smem_per_unit=1024 * KB, smem_per_block=512 * KB,
    max_threads_per_block=4096, max_threads_per_unit=1 << 30, max_blocks_per_unit=1,
    transaction_bytes=64, line_bytes=64, smem_banks=1, bank_bytes=64,
    dram_bandwidth=100e9, l2_bandwidth=200e9, smem_bandwidth=16 * 2 * 32 * 3e9,
    l2_bytes=16 * 1024 * KB,
    peak_flops={"f32": 1.5e12, "f64": 0.75e12, "tensor_f16": 0.0},
    mma_shape=None, mma_warp_size=1, vector_bytes=32, pipeline_stages=1,
    reg_tile_budget=96, reg_overhead=0, unit_bandwidth=20e9,
    warps_for_peak=1, min_accumulators=64, sync_seconds=0.0, launch_seconds=10e-6,
)

TARGETS: dict[str, Hardware] = {hw.name: hw for hw in (SM_90, SM_80, GFX942, CPU)}


def get(name: str) -> Hardware:
    """The hardware description of target ``name``; a QuartetError for an unknown one."""
    try:
        return TARGETS[name]
    except KeyError:
        known = ", ".join(TARGETS)
        raise QuartetError(f"unknown target '{name}' (known targets: {known})") from None

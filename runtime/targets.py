"""The target table: every figure Quartet knows about a chip, with its source, in one place.

A *target* names the machine code in an artifact: ``sm_90`` / ``sm_80`` (NVIDIA, run by the
``cuda`` backend), ``gfx942`` (AMD, the ``hip`` backend) or ``cpu`` (shared libraries run by the
``cpu`` backend). A *chip* is one product of a target with its own sizes and speeds: ``sm_90``
is both the H200 (the default, the GPU machine since 2026-12) and the H100. Passes (Roller's
policy, Welder's cost model, Rammer's vEU count) and lowerings (shared-memory limits, thread
limits, wgmma/TMA availability) read :class:`Chip`; no other module holds a hardware number.

    chip = get("sm_90")              # the H200
    chip = get("sm_90", "h100")      # the H100, e.g. roller{target=sm_90 chip=h100}

Figures marked "model" are estimates used only to rank candidates (the per-SM bandwidth an SM
alone can draw, the register overhead outside a tile, the resident warps that hide latency, the
DRAM latency under load that sets how many bytes a memory-bound kernel keeps in flight);
they are not published numbers and are named as such beside their value. Every other figure
names its source in the comment above its chip.

This module is plain data (no MLIR): the runtime reads it too, e.g. to size a persistent
kernel's vEUs and to check which artifact runs where. The compatibility rules follow NVIDIA's
promises: a cubin for ``sm_XY`` runs on ``sm_XZ`` with Z >= Y (same major version); an
arch-specific cubin (``sm_90a``) runs only on exactly that architecture; PTX runs on any GPU at
least as new.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from quartet.errors import QuartetError

KB = 1024

#: backends of the runtime, and the binary formats each can load
BACKENDS = ("cuda", "hip", "cpu")
BINARY_FORMATS: dict[str, tuple[str, ...]] = {
    "cuda": ("cubin", "ptx", "fatbin"),
    "hip": ("hsaco",),
    "cpu": ("so",),
}


@dataclass(frozen=True)
class Chip:
    """One chip of a target. Bytes, bytes per second, FLOP per second, seconds."""

    name: str                       # "h200"
    target: str                     # "sm_90": the code-generation target
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
    smem_per_block_default: int     # what a block gets without the opt-in attribute
    max_threads_per_block: int
    max_threads_per_unit: int
    max_blocks_per_unit: int
    transaction_bytes: int          # DRAM/L2 access granularity (sector)
    line_bytes: int                 # cache line
    smem_banks: int
    bank_bytes: int
    hbm_bytes: int                  # device memory
    hbm_bandwidth: float            # datasheet device memory bandwidth
    dram_bandwidth: float           # achievable device memory bandwidth (copy, measured)
    l2_bandwidth: float             # L2 (last-level on-chip) read bandwidth, whole device
    smem_bandwidth: float           # shared memory, whole device
    l2_bytes: int
    peak_flops: dict                # "f32", "f64", "tensor_f16" (what the lowering reaches)
    mma_shape: tuple[int, int, int] | None   # (m, n, k) of the tensor-core fragment, or None
    mma_warp_size: int              # lanes that hold one fragment (32 NVIDIA, 64 AMD)
    vector_bytes: int               # widest per-thread vector load (16 B ld.global.v4)
    pipeline_stages: int            # shared-memory stages a reuse kernel allocates
    wgmma: bool                     # Hopper warpgroup MMA (needs the sm_90a binary)
    tma: bool                       # Hopper bulk tensor copies (cp.async.bulk.tensor)
    isa: str                        # what the back end's attach-target pass takes as chip
    isa_features: str               # e.g. "+ptx80"
    # Model figures (estimates used to rank candidate tiles, not published numbers):
    reg_tile_budget: int            # registers per thread a register tile may take
    reg_overhead: int               # registers per thread outside the tile (addresses, loops)
    unit_bandwidth: float           # DRAM bandwidth one SM alone can draw
    warps_for_peak: int             # resident warps per SM that hide latency
    min_accumulators: int           # accumulators a register tile needs to hide FMA latency
    sync_seconds: float             # cost of one reduction step (barrier, pipeline bubble)
    launch_seconds: float           # kernel launch overhead
    memory_latency_seconds: float   # DRAM latency under load: with the bandwidth and the units,
    #                                 the bytes a unit keeps in flight to stream at the limit
    # Model figures of a persistent kernel's device-side synchronisation (Rammer's scheduler
    # weighs completion counters against grid barriers with them): a wait on a completion
    # counter (release add, acquire spin through L2, block barrier) and a grid barrier of
    # every resident block. Estimates, not published numbers: CUDA's cooperative-groups
    # grid.sync() is commonly reported at 1-3 us on Ampere/Hopper with a few hundred blocks.
    counter_wait_seconds: float = 1.0e-6
    grid_barrier_seconds: float = 2.5e-6
    # Model figures of the three ways to run control flow (Grinder's choice, passes/grinder/
    # cost.py), estimates to be replaced by measurements: a host round trip (the host reads a
    # predicate back: stream synchronisation + a 1-element copy, commonly 10-20 us through the
    # CUDA driver), a kernel node inside a CUDA graph (about half a launch), and the
    # evaluation of a conditional node (CUDA 12.4+).
    host_roundtrip_seconds: float = 15e-6
    graph_node_seconds: float = 1.5e-6
    conditional_node_seconds: float = 2.0e-6
    sources: tuple[str, ...] = field(default=(), compare=False)

    @property
    def label(self) -> str:
        """``sm_90 (h200)``: the target and the chip, for messages."""
        return f"{self.target} ({self.name})"

    @property
    def backend(self) -> str:
        """The runtime backend that runs this chip's artifacts."""
        return {"cuda": "cuda", "rocm": "hip", "cpu": "cpu"}[self.kind]

    @property
    def is_gpu(self) -> bool:
        return self.kind != "cpu"

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

    def blocks_per_unit(self, threads: int, shared_bytes: int, registers: int) -> int:
        """How many blocks of this shape one SM keeps resident (the occupancy rule of the CUDA
        occupancy calculator: threads, shared memory with its per-block reserve, registers
        allocated per warp in units of 256)."""
        if threads <= 0 or threads > self.max_threads_per_block:
            return 0
        warps = -(-threads // self.warp_size)
        by_threads = self.max_threads_per_unit // (warps * self.warp_size)
        by_smem = self.max_blocks_per_unit
        if shared_bytes:
            if shared_bytes > self.smem_per_block:
                return 0
            per_block = shared_bytes + SMEM_RESERVED_PER_BLOCK.get(self.kind, 0)
            by_smem = self.smem_per_unit // per_block
        by_regs = self.max_blocks_per_unit
        if registers and self.kind == "cuda":
            if registers > self.max_regs_per_thread:
                return 0
            per_warp = -(-registers * self.warp_size // 256) * 256
            by_regs = self.regs_per_unit // (per_warp * warps)
        return max(0, min(by_threads, by_smem, by_regs, self.max_blocks_per_unit))


#: shared memory the hardware reserves per resident block (CUDA C++ Programming Guide,
#: "Shared Memory" for compute capability 8.x and 9.x: 1 KB per block)
SMEM_RESERVED_PER_BLOCK = {"cuda": 1 * KB}

_HOPPER_SOURCES = (
    "NVIDIA H100 Tensor Core GPU Architecture whitepaper (2022), table 'H100 SXM5': 132 SMs, "
    "1980 MHz max boost, 50 MB L2, 66.9 TFLOPS FP32, 33.5 TFLOPS FP64, 989.4 TFLOPS dense "
    "FP16/BF16 tensor (wgmma), 228 KB shared memory per SM",
    "CUDA C++ Programming Guide, 'Technical Specifications per Compute Capability' (9.0): 64K "
    "32-bit registers per SM and per block, 255 per thread, 2048 threads and 32 blocks per SM, "
    "1024 threads per block, 227 KB (232448 B) shared memory per block with opt-in, 48 KB "
    "without, 4 warp schedulers per SM, 32 banks of 4 bytes; 32-byte sectors in 128-byte lines "
    "(CUDA C++ Best Practices Guide, 'Coalesced Access to Global Memory')",
    "PTX ISA 8.0: wgmma.mma_async and cp.async.bulk.tensor need sm_90a",
    "Shared memory: 128 B/clock/SM x 132 SMs x 1.98 GHz = 33.4 TB/s",
    "L2: about 5.5 TB/s read bandwidth measured on H100 PCIe (Chips and Cheese, 'Nvidia's "
    "H100: Funny L2, and Tons of Bandwidth', 2023); a model figure for the SXM parts",
    "DRAM latency under load: 1 us, a model figure (a load that misses L2 takes several "
    "hundred ns on an idle Hopper and queues longer near the bandwidth limit); "
    "lowering/kernels/rows.py sizes the bytes an element-wise kernel keeps in flight with it",
    "Tensor cores: Quartet's wgmma/mma.sync GEMMs reach about 2/3 of the 989 TFLOPS dense peak "
    "(FlashAttention-3, Shah et al. 2024, for the mma.sync/wgmma gap; model figure)",
)


def _hopper(name: str, description: str, hbm_bytes: int, hbm_bandwidth: float,
            copy_bandwidth: float, l2_bytes: int, sources: tuple[str, ...]) -> Chip:
    """An sm_90 chip: the H100's SMs with its own memory system."""
    return Chip(
        name=name, target="sm_90", kind="cuda", description=description,
        num_units=132, warp_size=32, sub_partitions=4,
        regs_per_unit=65536, regs_per_block=65536, max_regs_per_thread=255,
        smem_per_unit=228 * KB, smem_per_block=227 * KB, smem_per_block_default=48 * KB,
        max_threads_per_block=1024, max_threads_per_unit=2048, max_blocks_per_unit=32,
        transaction_bytes=32, line_bytes=128, smem_banks=32, bank_bytes=4,
        hbm_bytes=hbm_bytes, hbm_bandwidth=hbm_bandwidth, dram_bandwidth=copy_bandwidth,
        l2_bandwidth=5.5e12, smem_bandwidth=33.4e12, l2_bytes=l2_bytes,
        peak_flops={"f32": 66.9e12, "f64": 33.5e12, "tensor_f16": 989.4e12 * 2 / 3},
        mma_shape=(16, 8, 16), mma_warp_size=32, vector_bytes=16, pipeline_stages=2,
        wgmma=True, tma=True, isa="sm_90", isa_features="+ptx80",
        reg_tile_budget=128, reg_overhead=32, unit_bandwidth=2 * copy_bandwidth / 132,
        warps_for_peak=8, min_accumulators=1, sync_seconds=0.3e-6, launch_seconds=3e-6,
        memory_latency_seconds=1.0e-6,
        sources=_HOPPER_SOURCES + sources,
    )


# NVIDIA H200 SXM (sm_90): the H100's chip with 141 GB of HBM3e.
H200 = _hopper(
    "h200", "NVIDIA H200 SXM (Hopper, sm_90, 141 GB HBM3e)",
    hbm_bytes=141 * 10**9, hbm_bandwidth=4.8e12, copy_bandwidth=4.16e12, l2_bytes=60 * 10**6,
    sources=("NVIDIA H200 Tensor Core GPU datasheet (2024): 141 GB HBM3e at 4.8 TB/s; compute "
             "as the H100 SXM",
             "Measured on the GPU machine (bench/results/run-2026-12-03T140457Z-NVIDIA-H200.json):"
             " device-to-device copy 4158 GB/s counting bytes read and written; torch reports "
             "132 SMs and 60 MB of L2 (KINDS.md, 2026-10-28)"))

# NVIDIA H100 SXM5 (sm_90), the GPU machine until 2026-12.
H100 = _hopper(
    "h100", "NVIDIA H100 SXM5 (Hopper, sm_90, 80 GB HBM3)",
    hbm_bytes=80 * 10**9, hbm_bandwidth=3.35e12, copy_bandwidth=2.93e12, l2_bytes=50 * KB * KB,
    sources=("H100 whitepaper: 80 GB HBM3 at 3.35 TB/s",
             "Measured on the GPU machine (bench/results/run-2026-11-25T083943Z-NVIDIA-H100-80GB-"
             "HBM3.json): device-to-device copy 2934 GB/s"))

# NVIDIA A100 SXM4 40 GB (sm_80).
A100 = Chip(
    name="a100", target="sm_80", kind="cuda",
    description="NVIDIA A100 SXM4 40GB (Ampere, sm_80)",
    num_units=108, warp_size=32, sub_partitions=4,
    regs_per_unit=65536, regs_per_block=65536, max_regs_per_thread=255,
    smem_per_unit=164 * KB, smem_per_block=163 * KB, smem_per_block_default=48 * KB,
    max_threads_per_block=1024, max_threads_per_unit=2048, max_blocks_per_unit=32,
    transaction_bytes=32, line_bytes=128, smem_banks=32, bank_bytes=4,
    hbm_bytes=40 * 10**9, hbm_bandwidth=1.555e12, dram_bandwidth=1.4e12,
    l2_bandwidth=5.0e12, smem_bandwidth=19.5e12, l2_bytes=40 * KB * KB,
    peak_flops={"f32": 19.5e12, "f64": 9.7e12, "tensor_f16": 312e12 * 0.9},
    mma_shape=(16, 8, 16), mma_warp_size=32, vector_bytes=16, pipeline_stages=2,
    wgmma=False, tma=False, isa="sm_80", isa_features="+ptx80",
    reg_tile_budget=128, reg_overhead=32, unit_bandwidth=2 * 1.4e12 / 108,
    warps_for_peak=8, min_accumulators=1, sync_seconds=0.4e-6, launch_seconds=3e-6,
    memory_latency_seconds=1.0e-6,
    sources=(
        "NVIDIA A100 Tensor Core GPU Architecture whitepaper (2020), tables 1 and 3: 108 SMs, "
        "1410 MHz boost, 40 MB L2, 19.5 TFLOPS FP32, 9.7 TFLOPS FP64, 312 TFLOPS dense FP16 "
        "tensor, 1555 GB/s HBM2, up to 164 KB shared memory per SM",
        "CUDA C++ Programming Guide, compute capability 8.0: 64K registers per SM and per "
        "block, 255 per thread, 2048 threads and 32 blocks per SM, 163 KB (166912 B) per block "
        "with opt-in",
        "DRAM: about 90% of 1555 GB/s is reachable by a copy kernel (model figure, not measured)",
        "Shared memory: 128 B/clock/SM x 108 x 1.41 GHz = 19.5 TB/s; L2 about 5 TB/s (model)",
        "Tensor cores: mma.sync is Ampere's native instruction; CUTLASS reaches about 90%",
    ),
)

# AMD Instinct MI300X (gfx942, CDNA3).
MI300X = Chip(
    name="mi300x", target="gfx942", kind="rocm",
    description="AMD Instinct MI300X (CDNA3, gfx942)",
    num_units=304, warp_size=64, sub_partitions=4,
    regs_per_unit=131072, regs_per_block=131072 // 2, max_regs_per_thread=512,
    smem_per_unit=64 * KB, smem_per_block=64 * KB, smem_per_block_default=64 * KB,
    max_threads_per_block=1024, max_threads_per_unit=2048, max_blocks_per_unit=32,
    transaction_bytes=64, line_bytes=128, smem_banks=32, bank_bytes=4,
    hbm_bytes=192 * 10**9, hbm_bandwidth=5.3e12, dram_bandwidth=4.3e12,
    l2_bandwidth=10.0e12, smem_bandwidth=81.7e12, l2_bytes=4 * KB * KB * 8,
    peak_flops={"f32": 163.4e12 / 2, "f64": 81.7e12, "tensor_f16": 1307.4e12 / 2},
    mma_shape=(16, 16, 16), mma_warp_size=64, vector_bytes=16, pipeline_stages=1,
    wgmma=False, tma=False, isa="gfx942", isa_features="",
    reg_tile_budget=128, reg_overhead=32, unit_bandwidth=2 * 4.3e12 / 304,
    warps_for_peak=8, min_accumulators=1, sync_seconds=0.4e-6, launch_seconds=5e-6,
    memory_latency_seconds=1.2e-6,
    sources=(
        "AMD Instinct MI300X data sheet (2023): 304 CUs, 2100 MHz peak engine clock, 192 GB "
        "HBM3 at 5.3 TB/s, 256 MB Infinity Cache, 163.4 TFLOPS FP32 (packed; scalar FP32 code "
        "reaches half), 81.7 TFLOPS FP64 vector, 1307.4 TFLOPS dense FP16 matrix",
        "AMD CDNA3 ISA reference and LLVM AMDGPUUsage (gfx942): wavefront 64, 4 SIMDs per CU, "
        "64 KB LDS per CU and per work-group, 32 LDS banks of 4 bytes, 512 VGPRs per lane at "
        "most, 131072 32-bit registers per CU, 1024 work-items per work-group",
        "Matrix cores: v_mfma_f32_16x16x16_f16; half of the dense peak assumed reachable (model)",
        "DRAM: about 80% of 5.3 TB/s reachable (model); LDS 128 B/clock/CU x 304 x 2.1 GHz",
    ),
)

# A generic x86-64 host with AVX2 for the CPU path (model figures throughout: the CPU lowering
# runs on whatever machine runs the tests, so one fixed description keeps results reproducible).
CPU = Chip(
    name="x86-avx2", target="cpu", kind="cpu",
    description="generic x86-64 host with AVX2, 16 cores (CPU path)",
    num_units=16, warp_size=1, sub_partitions=1,
    regs_per_unit=1 << 30, regs_per_block=1 << 30, max_regs_per_thread=128,
    smem_per_unit=1024 * KB, smem_per_block=512 * KB, smem_per_block_default=512 * KB,
    max_threads_per_block=4096, max_threads_per_unit=1 << 30, max_blocks_per_unit=1,
    transaction_bytes=64, line_bytes=64, smem_banks=1, bank_bytes=64,
    hbm_bytes=0, hbm_bandwidth=100e9, dram_bandwidth=100e9,
    l2_bandwidth=200e9, smem_bandwidth=16 * 2 * 32 * 3e9, l2_bytes=16 * 1024 * KB,
    peak_flops={"f32": 1.5e12, "f64": 0.75e12, "tensor_f16": 0.0},
    mma_shape=None, mma_warp_size=1, vector_bytes=32, pipeline_stages=1,
    wgmma=False, tma=False, isa="x86-64", isa_features="+avx2",
    reg_tile_budget=96, reg_overhead=0, unit_bandwidth=20e9,
    warps_for_peak=1, min_accumulators=64, sync_seconds=0.0, launch_seconds=10e-6,
    memory_latency_seconds=0.1e-6,
    sources=(
        "Model: 16 cores; 'thread' = one register tile computed by a core; 16 ymm registers of "
        "32 bytes; 48 KB L1d, 1 MB L2 per core (Sapphire Rapids / Zen 4), 64-byte lines; peak "
        "f32 = 16 cores x 2 FMA ports x 8 lanes x 2 FLOP x 3 GHz = 1.5 TFLOPS; 100 GB/s DRAM; "
        "8 independent ymm accumulators hide FMA latency",
    ),
)

#: every chip by name
CHIPS: dict[str, Chip] = {c.name: c for c in (H200, H100, A100, MI300X, CPU)}

#: the code-generation targets, each with its chips (the first is the default)
TARGETS: dict[str, tuple[str, ...]] = {
    "sm_90": ("h200", "h100"),
    "sm_80": ("a100",),
    "gfx942": ("mi300x",),
    "cpu": ("x86-avx2",),
}

#: targets with a GPU back end
GPU_TARGETS = tuple(t for t in TARGETS if t != "cpu")


def get(target: str, chip: str | None = None, location: str | None = None) -> Chip:
    """The :class:`Chip` ``chip`` of ``target`` (its default chip when None); a
    :class:`QuartetError` naming the known ones for anything else."""
    if isinstance(target, Chip):
        return target
    if target not in TARGETS:
        raise QuartetError(f"unknown target '{target}' (known targets: {', '.join(TARGETS)})",
                           location)
    chips = TARGETS[target]
    if chip is None or chip == "":
        return CHIPS[chips[0]]
    if chip not in chips:
        raise QuartetError(f"unknown chip '{chip}' for target '{target}' (known: "
                           f"{', '.join(chips)})", location)
    return CHIPS[chip]


# ---------------------------------------------------------------------------------------------
# Which artifact runs where


_SM = re.compile(r"^sm_(\d+)(\d)([af]?)$")
_GFX = re.compile(r"^gfx[0-9a-f]{3,4}$")


def backend_of(target: str) -> str | None:
    """The backend that runs ``target``: ``cuda``, ``hip`` or ``cpu``; None if unknown."""
    if _SM.match(target):
        return "cuda"
    if _GFX.match(target):
        return "hip"
    if target == "cpu":
        return "cpu"
    return None


def parse_sm(target: str) -> tuple[int, int, str]:
    """``sm_90a`` -> (9, 0, "a"). The target must be an NVIDIA one."""
    m = _SM.match(target)
    if not m:
        raise QuartetError(f"not an NVIDIA target: {target!r} (expected e.g. sm_90)")
    return int(m.group(1)), int(m.group(2)), m.group(3)


def sm_name(major: int, minor: int) -> str:
    """(9, 0) -> ``sm_90``."""
    return f"sm_{major}{minor}"


def cuda_compatible(target: str, device: str, formats: set[str]) -> bool:
    """Whether kernels built for ``target`` in the given binary formats run on GPU ``device``."""
    t_major, t_minor, t_suffix = parse_sm(target)
    d_major, d_minor, _ = parse_sm(device)
    if formats <= {"ptx"}:
        return (d_major, d_minor) >= (t_major, t_minor)
    if t_suffix:
        return (d_major, d_minor) == (t_major, t_minor)
    return d_major == t_major and d_minor >= t_minor


def check_runnable(
    target: str,
    artifact_backend: str,
    formats: set[str],
    backend: str | None,
    device_arch: str | None,
    location: str | None,
) -> None:
    """Raise a QuartetError when an artifact for ``target`` cannot run on ``backend``/``device_arch``.

    ``backend`` is the runtime backend about to run it (None: the artifact's own);
    ``device_arch`` the device's architecture (``sm_80``...; None: not checked).
    """
    if backend is not None and backend != artifact_backend:
        raise QuartetError(
            f"artifact is built for target {target} (backend {artifact_backend}); "
            f"the {backend} backend cannot run it",
            location,
        )
    if device_arch is None or artifact_backend == "cpu":
        return
    if artifact_backend == "cuda":
        ok = cuda_compatible(target, device_arch, formats)
    else:
        ok = target == device_arch
    if not ok:
        raise QuartetError(
            f"artifact is built for {target} and cannot run on this device ({device_arch}); "
            f"compile it again with --target {device_arch}",
            location,
        )

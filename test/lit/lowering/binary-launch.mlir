// The shared back end alone: a function holding a gpu.launch on memrefs (what transform
// map_forall_to_blocks {generate_gpu_launch} gives) -> gpu.binary + gpu.launch_func, for every
// target: cubin (ptxas of nvidia-cuda-nvcc), PTX, hsaco (llvmlite + ld.lld).
// RUN: quartet-opt %s --pass-pipeline='builtin.module(quartet-gpu-to-binary{target=sm_90})' | %filecheck %s --check-prefix=SM90
// RUN: quartet-opt %s --pass-pipeline='builtin.module(quartet-gpu-to-binary{target=sm_80 emit=ptx})' | %filecheck %s --check-prefix=PTX
// RUN: quartet-opt %s --pass-pipeline='builtin.module(quartet-gpu-to-binary{target=gfx942 emit=obj})' | %filecheck %s --check-prefix=AMD
// RUN: not quartet-opt %s --pass-pipeline='builtin.module(quartet-gpu-to-binary{target=sm_90 emit=ptx},quartet-gpu-to-binary{target=gfx942 emit=ptx})' 2>&1 | %filecheck %s --check-prefix=ERR

func.func @scale(%a: memref<1024xf32>, %b: memref<1024xf32> {quartet.role = "output"}) {
  %c1 = arith.constant 1 : index
  %c4 = arith.constant 4 : index
  %c256 = arith.constant 256 : index
  gpu.launch blocks(%bx, %by, %bz) in (%gx = %c4, %gy = %c1, %gz = %c1)
             threads(%tx, %ty, %tz) in (%sx = %c256, %sy = %c1, %sz = %c1) {
    %i = affine.apply affine_map<(d0, d1) -> (d0 * 256 + d1)>(%bx, %tx)
    %v = memref.load %a[%i] : memref<1024xf32>
    %w = math.exp %v : f32
    memref.store %w, %b[%i] : memref<1024xf32>
    gpu.terminator
  }
  return
}

// SM90: module attributes {gpu.container_module}
// SM90: gpu.launch_func @scale_kernel::@scale_kernel blocks in (%{{.*}}, %{{.*}}, %{{.*}}) threads in (%{{.*}}, %{{.*}}, %{{.*}}) args(%arg0 : memref<1024xf32>, %arg1 : memref<1024xf32>)
// SM90-NOT: gpu.launch blocks
// SM90: gpu.binary @scale_kernel <#gpu.select_object<0 : i64>> [#gpu.object<#nvvm.target<O = 3, chip = "sm_90", features = "+ptx80">, bin = "\7FELF\02\01\01

// PTX: gpu.binary @scale_kernel {{.*}}chip = "sm_80"{{.*}}assembly = "{{.*}}.target sm_80{{.*}}.visible .entry scale_kernel(

// The AMDGPU object before linking: ELF64, OS/ABI AMDGPU-HSA (0x40) v4, e_type 1 (relocatable),
// e_machine 0xE0 (EM_AMDGPU). (The linked hsaco, e_type 3, is checked in test_binaries.py: it
// needs ld.lld.)
// AMD: gpu.binary @scale_kernel {{.*}}#rocdl.target<O = 3, chip = "gfx942">, bin = "\7FELF\02\01\01@\04\00\00\00\00\00\00\00\01\00\E0\00

// ERR: error: PTX exists only for NVIDIA targets, not 'gfx942'

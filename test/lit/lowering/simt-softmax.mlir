// A fused softmax tile (what Welder makes of torch-mlir's decomposition) becomes ONE row kernel:
// 16-byte loads, the max and the sum folded per thread and combined with warp shuffles, then
// one gpu.binary launched from the bufferized host function.
// RUN: quartet-opt %s --pass-pipeline='builtin.module(quartet-lower-gpu{target=sm_90 stop_after=kernels})' | %filecheck %s --check-prefix=KERNEL
// RUN: quartet-opt %s --pass-pipeline='builtin.module(quartet-lower-gpu{target=sm_90})' | %filecheck %s --check-prefix=BIN

#id = affine_map<(d0, d1) -> (d0, d1)>
#row = affine_map<(d0, d1) -> (d0)>
#bc = affine_map<(d0, d1) -> (d0, 0)>
func.func @softmax(%x: tensor<64x256xf16>) -> tensor<64x256xf16> {
  %ninf = arith.constant 0xFF800000 : f32
  %zero = arith.constant 0.0 : f32
  %r = "quartet.tile"() ({
    %e = tensor.empty() : tensor<64x256xf32>
    %xf = linalg.generic {indexing_maps = [#id, #id], iterator_types = ["parallel", "parallel"]}
        ins(%x : tensor<64x256xf16>) outs(%e : tensor<64x256xf32>) {
      ^bb0(%a: f16, %o: f32):
        %0 = arith.extf %a : f16 to f32
        linalg.yield %0 : f32
    } -> tensor<64x256xf32>
    %e1 = tensor.empty() : tensor<64xf32>
    %m0 = linalg.fill ins(%ninf : f32) outs(%e1 : tensor<64xf32>) -> tensor<64xf32>
    %m = linalg.generic {indexing_maps = [#id, #row], iterator_types = ["parallel", "reduction"]}
        ins(%xf : tensor<64x256xf32>) outs(%m0 : tensor<64xf32>) {
      ^bb0(%a: f32, %o: f32):
        %0 = arith.maximumf %a, %o : f32
        linalg.yield %0 : f32
    } -> tensor<64xf32>
    %mx = tensor.expand_shape %m [[0, 1]] output_shape [64, 1] : tensor<64xf32> into tensor<64x1xf32>
    %ex = linalg.generic {indexing_maps = [#id, #bc, #id], iterator_types = ["parallel", "parallel"]}
        ins(%xf, %mx : tensor<64x256xf32>, tensor<64x1xf32>) outs(%e : tensor<64x256xf32>) {
      ^bb0(%a: f32, %b: f32, %o: f32):
        %0 = arith.subf %a, %b : f32
        %1 = math.exp %0 : f32
        linalg.yield %1 : f32
    } -> tensor<64x256xf32>
    %s0 = linalg.fill ins(%zero : f32) outs(%e1 : tensor<64xf32>) -> tensor<64xf32>
    %s = linalg.generic {indexing_maps = [#id, #row], iterator_types = ["parallel", "reduction"]}
        ins(%ex : tensor<64x256xf32>) outs(%s0 : tensor<64xf32>) {
      ^bb0(%a: f32, %o: f32):
        %0 = arith.addf %a, %o : f32
        linalg.yield %0 : f32
    } -> tensor<64xf32>
    %eh = tensor.empty() : tensor<64x256xf16>
    %y = linalg.generic {indexing_maps = [#id, #row, #id], iterator_types = ["parallel", "parallel"]}
        ins(%ex, %s : tensor<64x256xf32>, tensor<64xf32>) outs(%eh : tensor<64x256xf16>) {
      ^bb0(%a: f32, %b: f32, %o: f16):
        %0 = arith.divf %a, %b : f32
        %1 = arith.truncf %0 : f32 to f16
        linalg.yield %1 : f16
    } -> tensor<64x256xf16>
    gpu.yield %y : tensor<64x256xf16>
  }) {threads = 128 : i64} : () -> tensor<64x256xf16>
  return %r : tensor<64x256xf16>
}

// KERNEL-LABEL: func.func private @q0_body(
// KERNEL-SAME: index,
// KERNEL-SAME: memref<64x256xf16> {quartet.role = "input"}
// KERNEL-SAME: memref<64x256xf16> {quartet.role = "output"}
// KERNEL-SAME: quartet.block_program = 128 : i64, quartet.family = "row"
// KERNEL: vector.load {{.*}} {alignment = 16 : i64} : memref<64x256xf16>, vector<8xf16>
// KERNEL: arith.extf {{.*}} : vector<8xf16> to vector<8xf32>
// KERNEL: arith.maximumf {{.*}} : vector<8xf32>
// KERNEL: vector.reduction <maximumf>, {{.*}} : vector<8xf32> into f32
// KERNEL: gpu.shuffle  xor {{.*}} : f32
// KERNEL: math.exp {{.*}} : vector<8xf32>
// KERNEL: vector.reduction <add>
// KERNEL: gpu.shuffle  xor
// The quotient is truncated to f16 right after: one fp32 reciprocal per row, a multiply per
// element (no per-element IEEE division).
// KERNEL-NOT: arith.divf {{.*}} : vector<8xf32>
// KERNEL: arith.divf %{{.*}}, %{{.*}} : f32
// KERNEL-NOT: arith.divf {{.*}} : vector<8xf32>
// KERNEL: arith.mulf {{.*}} : vector<8xf32>
// KERNEL: arith.truncf {{.*}} : vector<8xf32> to vector<8xf16>
// KERNEL: vector.store {{.*}} {alignment = 16 : i64} : memref<64x256xf16>, vector<8xf16>
// KERNEL: return
// KERNEL-LABEL: func.func @q0(
// KERNEL: gpu.launch blocks({{.*}}) in ({{.*}} = %c8, {{.*}}) threads({{.*}}) in ({{.*}} = %c128
// KERNEL-NEXT: func.call @q0_body(

// BIN: module attributes {gpu.container_module}
// BIN-LABEL: func.func @softmax(
// BIN: %[[IN:.*]] = bufferization.to_buffer %arg0 read_only : tensor<64x256xf16> to memref<64x256xf16>
// BIN: %[[OUT:.*]] = memref.alloc() : memref<64x256xf16>
// BIN: gpu.launch_func @q0_kernel::@q0_kernel blocks in ({{.*}}) threads in ({{.*}}) args(%[[IN]] : memref<64x256xf16>, %[[OUT]] : memref<64x256xf16>)
// BIN: %[[R:.*]] = bufferization.to_tensor %[[OUT]] restrict writable
// BIN: return %[[R]]
// BIN: gpu.binary @q0_kernel <#gpu.select_object<0 : i64>> [#gpu.object<#nvvm.target<O = 3, chip = "sm_90", features = "+ptx80">, bin = "\7FELF
// BIN-NOT: quartet.tile

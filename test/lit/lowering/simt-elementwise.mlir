// gelu(x + b) * s with a broadcast bias: the flat builder, one 16-byte vector per thread (the
// chip model asks for two, but 64K elements fill only 32 blocks), the
// bias read with a vector load along the inner loop, erf through libdevice.
// RUN: quartet-opt %s --pass-pipeline='builtin.module(quartet-lower-gpu{target=sm_90 stop_after=kernels})' | %filecheck %s
// RUN: quartet-opt %s --pass-pipeline='builtin.module(quartet-lower-gpu{target=sm_80})' | %filecheck %s --check-prefix=SM80

#id = affine_map<(d0, d1) -> (d0, d1)>
#col = affine_map<(d0, d1) -> (d1)>
func.func @gelu_bias_scale(%x: tensor<128x512xf16>, %b: tensor<512xf16>, %s: tensor<128x512xf16>) -> tensor<128x512xf16> {
  %half = arith.constant 0.5 : f16
  %one = arith.constant 1.0 : f16
  %rsqrt2 = arith.constant 0.70710678 : f16
  %r = "quartet.tile"() ({
    %e = tensor.empty() : tensor<128x512xf16>
    %y = linalg.generic {indexing_maps = [#id, #col, #id, #id], iterator_types = ["parallel", "parallel"]}
        ins(%x, %b, %s : tensor<128x512xf16>, tensor<512xf16>, tensor<128x512xf16>) outs(%e : tensor<128x512xf16>) {
      ^bb0(%a: f16, %bb: f16, %ss: f16, %o: f16):
        %0 = arith.addf %a, %bb : f16
        %1 = arith.mulf %0, %rsqrt2 : f16
        %2 = math.erf %1 : f16
        %3 = arith.addf %2, %one : f16
        %4 = arith.mulf %0, %half : f16
        %5 = arith.mulf %4, %3 : f16
        %6 = arith.mulf %5, %ss : f16
        linalg.yield %6 : f16
    } -> tensor<128x512xf16>
    gpu.yield %y : tensor<128x512xf16>
  }) : () -> tensor<128x512xf16>
  return %r : tensor<128x512xf16>
}

// The block program: virtual block %[[VB]] of 32, 256 threads, no shared memory.
// CHECK-LABEL: func.func private @q0_body(
// CHECK-SAME: %[[VB:[a-z0-9]+]]: index, %[[X:[a-z0-9]+]]: memref<128x512xf16> {quartet.role = "input"}, %[[B:[a-z0-9]+]]: memref<512xf16> {quartet.role = "input"}, %[[S:[a-z0-9]+]]: memref<128x512xf16> {quartet.role = "input"}, %[[O:[a-z0-9]+]]: memref<128x512xf16> {quartet.role = "output"}
// CHECK-SAME: quartet.block_program = 256 : i64, quartet.family = "row", quartet.shared_bytes = 0 : i64, quartet.virtual_grid = array<i64: 32, 1, 1>
// CHECK: vector.load %[[X]][{{.*}}] {alignment = 16 : i64} : memref<128x512xf16>, vector<8xf16>
// CHECK: vector.load %[[B]][{{.*}}] {alignment = 16 : i64} : memref<512xf16>, vector<8xf16>
// CHECK: vector.load %[[S]]
// CHECK: arith.addf {{.*}} : vector<8xf16>
// CHECK: math.erf {{.*}} : vector<8xf16>
// 32 blocks x 256 threads x 8 elements cover the 128x512 elements exactly: no guard.
// CHECK-NOT: scf.if
// CHECK: vector.store {{.*}}, %[[O]][{{.*}}] {alignment = 16 : i64} : memref<128x512xf16>, vector<8xf16>
// The standalone kernel calls it with blockIdx.x.
// CHECK-LABEL: func.func @q0(
// CHECK: gpu.launch blocks(%[[BX:[a-z0-9]+]], {{.*}}) in ({{.*}} = %c32, {{.*}}) threads({{.*}}) in ({{.*}} = %c256,
// CHECK-NEXT: func.call @q0_body(%[[BX]],

// SM80: gpu.launch_func @q0_kernel::@q0_kernel
// SM80: gpu.binary @q0_kernel {{.*}}#nvvm.target<O = 3, chip = "sm_80", features = "+ptx80">, bin = "\7FELF

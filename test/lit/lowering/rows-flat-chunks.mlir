// An element-wise chain large enough that the chip model gives each thread two 16-byte vectors
// (issue 13): both chunks' loads are issued before any arithmetic, each chunk a coalesced sweep
// of the block (the second 256 x 8 elements after the first), and the last block, which runs
// past the 4097 x 2048 elements, clamps its loads and guards its stores.
// RUN: quartet-opt %s --pass-pipeline='builtin.module(roller-config{target=sm_90}, quartet-lower-gpu{target=sm_90 stop_after=kernels})' | %filecheck %s

#id = affine_map<(d0, d1) -> (d0, d1)>
#col = affine_map<(d0, d1) -> (d1)>
func.func @bias_relu(%x: tensor<4097x2048xf16>, %b: tensor<2048xf16>) -> tensor<4097x2048xf16> {
  %zero = arith.constant 0.0 : f16
  %r = "quartet.tile"() ({
    %e = tensor.empty() : tensor<4097x2048xf16>
    %y = linalg.generic {indexing_maps = [#id, #col, #id], iterator_types = ["parallel", "parallel"]}
        ins(%x, %b : tensor<4097x2048xf16>, tensor<2048xf16>) outs(%e : tensor<4097x2048xf16>) {
      ^bb0(%a: f16, %bb: f16, %o: f16):
        %0 = arith.addf %a, %bb : f16
        %1 = arith.maximumf %0, %zero : f16
        linalg.yield %1 : f16
    } -> tensor<4097x2048xf16>
    gpu.yield %y : tensor<4097x2048xf16>
  }) : () -> tensor<4097x2048xf16>
  return %r : tensor<4097x2048xf16>
}

// CHECK-LABEL: func.func private @q0_body(
// CHECK-SAME: %[[VB:[a-z0-9]+]]: index, %[[X:[a-z0-9]+]]: memref<4097x2048xf16> {quartet.role = "input"}, %[[B:[a-z0-9]+]]: memref<2048xf16> {quartet.role = "input"}, %[[O:[a-z0-9]+]]: memref<4097x2048xf16> {quartet.role = "output"}
// CHECK-SAME: quartet.block_program = 256 : i64, quartet.family = "row", quartet.shared_bytes = 0 : i64, quartet.virtual_grid = array<i64: 2049, 1, 1>
// CHECK: arith.muli %[[VB]], %c2
// CHECK: arith.cmpi ult, {{.*}}, %c8390656
// CHECK: arith.minui {{.*}}, %c8390648
// CHECK-NOT: arith.addf
// CHECK: vector.load %[[X]][{{.*}}] {alignment = 16 : i64} : memref<4097x2048xf16>, vector<8xf16>
// CHECK-NEXT: vector.load %[[X]][{{.*}}] {alignment = 16 : i64} : memref<4097x2048xf16>, vector<8xf16>
// CHECK-NEXT: vector.load %[[B]][{{.*}}] {alignment = 16 : i64} : memref<2048xf16>, vector<8xf16>
// CHECK-NEXT: vector.load %[[B]][{{.*}}] {alignment = 16 : i64} : memref<2048xf16>, vector<8xf16>
// CHECK: arith.addf {{.*}} : vector<8xf16>
// CHECK: arith.maximumf {{.*}} : vector<8xf16>
// CHECK: arith.addf {{.*}} : vector<8xf16>
// CHECK: scf.if
// CHECK-NEXT: vector.store {{.*}}, %[[O]][{{.*}}] {alignment = 16 : i64} : memref<4097x2048xf16>, vector<8xf16>
// CHECK: scf.if
// CHECK-NEXT: vector.store {{.*}}, %[[O]][{{.*}}] {alignment = 16 : i64} : memref<4097x2048xf16>, vector<8xf16>
// CHECK-LABEL: func.func @q0(
// CHECK: gpu.launch blocks({{.*}}) in ({{.*}} = %c2049, {{.*}}) threads({{.*}}) in ({{.*}} = %c256,

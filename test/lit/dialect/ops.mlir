// RUN: quartet-opt %s --split-input-file | %filecheck %s
// RUN: quartet-opt %s --split-input-file | quartet-opt --split-input-file | %filecheck %s
// RUN: quartet-opt %s --split-input-file --mlir-print-op-generic | quartet-opt --split-input-file | %filecheck %s

// A tile with its full schedule: one block_tile/thread_tile entry per loop of the root op
// (matmul: i, j, k), one smem_padding entry per input.
// CHECK-LABEL: func.func @configured_tile
// CHECK:         %[[T:.*]] = "quartet.tile"() ({
// CHECK-NEXT:      %[[M:.*]] = linalg.matmul ins(%arg0, %arg1 : tensor<64x32xf16>, tensor<32x128xf16>) outs(%arg2 : tensor<64x128xf32>)
// CHECK-NEXT:      gpu.yield %[[M]] : tensor<64x128xf32>
// CHECK-NEXT:    }) {block_tile = array<i64: 64, 128, 32>, grid = array<i64: 1, 1>, smem_padding = array<i64: 8, 8>, target = "sm_90", tensor_core = true, thread_tile = array<i64: 32, 64, 32>, threads = 128 : i64} : () -> tensor<64x128xf32>
// CHECK:         return %[[T]]
func.func @configured_tile(%a: tensor<64x32xf16>, %b: tensor<32x128xf16>, %c: tensor<64x128xf32>) -> tensor<64x128xf32> {
  %0 = "quartet.tile"() ({
    %1 = linalg.matmul ins(%a, %b : tensor<64x32xf16>, tensor<32x128xf16>) outs(%c : tensor<64x128xf32>) -> tensor<64x128xf32>
    gpu.yield %1 : tensor<64x128xf32>
  }) {block_tile = array<i64: 64, 128, 32>, thread_tile = array<i64: 32, 64, 32>, smem_padding = array<i64: 8, 8>,
      tensor_core = true, target = "sm_90", grid = array<i64: 1, 1>, threads = 128} : () -> tensor<64x128xf32>
  return %0 : tensor<64x128xf32>
}

// -----

// A Welder-fused tile: the matmul result stays in shared memory (edge level 1) for the relu.
// CHECK-LABEL: func.func @fused_tile
// CHECK:         "quartet.tile"() ({
// CHECK:           linalg.matmul
// CHECK:           linalg.generic
// CHECK:           gpu.yield
// CHECK:         }) {edge_levels = array<i64: 1>} : () -> tensor<16x16xf32>
func.func @fused_tile(%a: tensor<16x8xf32>, %b: tensor<8x16xf32>, %c: tensor<16x16xf32>) -> tensor<16x16xf32> {
  %0 = "quartet.tile"() ({
    %1 = linalg.matmul ins(%a, %b : tensor<16x8xf32>, tensor<8x16xf32>) outs(%c : tensor<16x16xf32>) -> tensor<16x16xf32>
    %2 = linalg.generic {indexing_maps = [affine_map<(d0, d1) -> (d0, d1)>, affine_map<(d0, d1) -> (d0, d1)>],
                         iterator_types = ["parallel", "parallel"]} ins(%1 : tensor<16x16xf32>) outs(%c : tensor<16x16xf32>) {
    ^bb0(%in: f32, %out: f32):
      %zero = arith.constant 0.0 : f32
      %r = arith.maximumf %in, %zero : f32
      linalg.yield %r : f32
    } -> tensor<16x16xf32>
    gpu.yield %2 : tensor<16x16xf32>
  }) {edge_levels = array<i64: 1>} : () -> tensor<16x16xf32>
  return %0 : tensor<16x16xf32>
}

// -----

// Rammer/Grinder: two independent tiles side by side on 8 vEUs, in a device-side loop.
// CHECK-LABEL: func.func @uvirtual
// CHECK:         "quartet.uvirtual"() ({
// CHECK:           scf.for
// CHECK:             "quartet.vtask"() ({
// CHECK:               "quartet.tile"()
// CHECK:             }) {step = 0 : i64, veu_begin = 0 : i64, veu_count = 4 : i64}
// CHECK:             "quartet.vtask"() ({
// CHECK:             }) {step = 0 : i64, veu_begin = 4 : i64, veu_count = 4 : i64}
// CHECK:         }) {num_veus = 8 : i64, resultSegmentSizes = array<i32: 1, 0, 0, 0, 0, 0, 0, 0>} : () -> tensor<32xf32>
func.func @uvirtual(%x: tensor<32xf32>, %y: tensor<32xf32>, %n: index) -> tensor<32xf32> {
  %0 = "quartet.uvirtual"() ({
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %r = scf.for %i = %c0 to %n step %c1 iter_args(%acc = %x) -> (tensor<32xf32>) {
      %a = "quartet.vtask"() ({
        %t = "quartet.tile"() ({
          %e = linalg.add ins(%acc, %y : tensor<32xf32>, tensor<32xf32>) outs(%acc : tensor<32xf32>) -> tensor<32xf32>
          gpu.yield %e : tensor<32xf32>
        }) : () -> tensor<32xf32>
        gpu.yield %t : tensor<32xf32>
      }) {veu_begin = 0 : i64, veu_count = 4 : i64, step = 0 : i64} : () -> tensor<32xf32>
      %b = "quartet.vtask"() ({
        %t = "quartet.tile"() ({
          %e = linalg.mul ins(%acc, %y : tensor<32xf32>, tensor<32xf32>) outs(%acc : tensor<32xf32>) -> tensor<32xf32>
          gpu.yield %e : tensor<32xf32>
        }) : () -> tensor<32xf32>
        gpu.yield %t : tensor<32xf32>
      }) {veu_begin = 4 : i64, veu_count = 4 : i64, step = 0 : i64} : () -> tensor<32xf32>
      %s = arith.addf %a, %b : tensor<32xf32>
      scf.yield %s : tensor<32xf32>
    }
    gpu.yield %r : tensor<32xf32>
  }) {num_veus = 8 : i64, resultSegmentSizes = array<i32: 1, 0, 0, 0, 0, 0, 0, 0>} : () -> tensor<32xf32>
  return %0 : tensor<32xf32>
}

// -----

// A tile with no schedule yet (fresh from quartet-outline-tiles) is valid.
// CHECK-LABEL: func.func @unconfigured
// CHECK:         "quartet.tile"() ({
// CHECK-NEXT:      linalg.fill
// CHECK-NEXT:      gpu.yield
// CHECK-NEXT:    }) : () -> tensor<7xf32>
func.func @unconfigured(%o: tensor<7xf32>, %v: f32) -> tensor<7xf32> {
  %0 = "quartet.tile"() ({
    %1 = linalg.fill ins(%v : f32) outs(%o : tensor<7xf32>) -> tensor<7xf32>
    gpu.yield %1 : tensor<7xf32>
  }) : () -> tensor<7xf32>
  return %0 : tensor<7xf32>
}

// -----

// A uvirtual yields values of several types in groups of one type each (resultSegmentSizes):
// a loop carries a token (i64) and a hidden state (f32).
// CHECK-LABEL: func.func @uvirtual_types
// CHECK:         "quartet.uvirtual"() ({
// CHECK:         }) {num_veus = 2 : i64, resultSegmentSizes = array<i32: 2, 1, 0, 0, 0, 0, 0, 0>} : () -> (tensor<4xf32>, tensor<4xf32>, tensor<1xi64>)
func.func @uvirtual_types(%x: tensor<4xf32>, %t: tensor<1xi64>) -> (tensor<4xf32>, tensor<1xi64>) {
  %0:3 = "quartet.uvirtual"() ({
    gpu.yield %x, %x, %t : tensor<4xf32>, tensor<4xf32>, tensor<1xi64>
  }) {num_veus = 2 : i64, resultSegmentSizes = array<i32: 2, 1, 0, 0, 0, 0, 0, 0>} : () -> (tensor<4xf32>, tensor<4xf32>, tensor<1xi64>)
  return %0#1, %0#2 : tensor<4xf32>, tensor<1xi64>
}

// Hand-given schedules that do not fit the hardware, and an op the policy cannot read:
// one-line errors that name the op and the reason.
// RUN: not quartet-opt %s --split-input-file --pass-pipeline='builtin.module(roller-config{target=sm_90})' 2>&1 | filecheck %s

// CHECK: roller-config-invalid.mlir:[[# @LINE + 2]]:8: error: 'quartet.tile' op with root 'linalg.matmul': hand-given schedule does not fit sm_90 (h200): 264192 bytes of shared memory per block for its staged inputs, at most 232448
func.func @too_much_shared_memory(%a: tensor<1024x1024xf16>, %b: tensor<1024x1024xf16>, %c: tensor<1024x1024xf32>) -> tensor<1024x1024xf32> {
  %r = "quartet.tile"() ({
    %m = linalg.matmul ins(%a, %b : tensor<1024x1024xf16>, tensor<1024x1024xf16>) outs(%c : tensor<1024x1024xf32>) -> tensor<1024x1024xf32>
    gpu.yield %m : tensor<1024x1024xf32>
  }) {block_tile = array<i64: 256, 256, 256>, thread_tile = array<i64: 16, 16, 256>} : () -> tensor<1024x1024xf32>
  return %r : tensor<1024x1024xf32>
}

// -----

// CHECK: roller-config-invalid.mlir:[[# @LINE + 2]]:8: error: 'quartet.tile' op with root 'linalg.matmul': hand-given schedule does not fit sm_90 (h200): 4096 threads per block, at most 1024
func.func @too_many_threads(%a: tensor<1024x1024xf32>, %b: tensor<1024x1024xf32>, %c: tensor<1024x1024xf32>) -> tensor<1024x1024xf32> {
  %r = "quartet.tile"() ({
    %m = linalg.matmul ins(%a, %b : tensor<1024x1024xf32>, tensor<1024x1024xf32>) outs(%c : tensor<1024x1024xf32>) -> tensor<1024x1024xf32>
    gpu.yield %m : tensor<1024x1024xf32>
  }) {block_tile = array<i64: 64, 64, 16>, thread_tile = array<i64: 1, 1, 16>} : () -> tensor<1024x1024xf32>
  return %r : tensor<1024x1024xf32>
}

// -----

// CHECK: roller-config-invalid.mlir:[[# @LINE + 2]]:8: error: 'quartet.tile' op with root 'linalg.matmul': hand-given schedule does not fit sm_90 (h200): about {{[0-9]+}} registers per thread for its thread tile [32, 32, 16], at most 255
func.func @too_many_registers(%a: tensor<1024x1024xf32>, %b: tensor<1024x1024xf32>, %c: tensor<1024x1024xf32>) -> tensor<1024x1024xf32> {
  %r = "quartet.tile"() ({
    %m = linalg.matmul ins(%a, %b : tensor<1024x1024xf32>, tensor<1024x1024xf32>) outs(%c : tensor<1024x1024xf32>) -> tensor<1024x1024xf32>
    gpu.yield %m : tensor<1024x1024xf32>
  }) {block_tile = array<i64: 64, 64, 16>, thread_tile = array<i64: 32, 32, 16>} : () -> tensor<1024x1024xf32>
  return %r : tensor<1024x1024xf32>
}

// -----

// CHECK: roller-config-invalid.mlir:[[# @LINE + 2]]:8: error: 'quartet.tile' op with root 'linalg.matmul': hand-given schedule does not fit sm_90 (h200): the warp tile's n extent 4 (loops [1]) is not a multiple of the mma fragment's 8
func.func @not_a_fragment(%a: tensor<1024x1024xf16>, %b: tensor<1024x1024xf16>, %c: tensor<1024x1024xf32>) -> tensor<1024x1024xf32> {
  %r = "quartet.tile"() ({
    %m = linalg.matmul ins(%a, %b : tensor<1024x1024xf16>, tensor<1024x1024xf16>) outs(%c : tensor<1024x1024xf32>) -> tensor<1024x1024xf32>
    gpu.yield %m : tensor<1024x1024xf32>
  }) {block_tile = array<i64: 128, 128, 32>, thread_tile = array<i64: 64, 4, 32>, tensor_core = true} : () -> tensor<1024x1024xf32>
  return %r : tensor<1024x1024xf32>
}

// -----

// CHECK: roller-config-invalid.mlir:[[# @LINE + 4]]:8: error: 'quartet.tile' op with root 'linalg.generic' is not supported by roller-config on sm_90 (h200): indexing expression 'd0 floordiv 2' uses 'floordiv' (only sums of dK, dK * c and constants are supported)
#half = affine_map<(d0) -> (d0 floordiv 2)>
#id = affine_map<(d0) -> (d0)>
func.func @unsupported_map(%x: tensor<32xf32>, %y: tensor<64xf32>) -> tensor<64xf32> {
  %r = "quartet.tile"() ({
    %g = linalg.generic {indexing_maps = [#half, #id], iterator_types = ["parallel"]} ins(%x : tensor<32xf32>) outs(%y : tensor<64xf32>) {
    ^bb0(%p: f32, %o: f32):
      linalg.yield %p : f32
    } -> tensor<64xf32>
    gpu.yield %g : tensor<64xf32>
  }) : () -> tensor<64xf32>
  return %r : tensor<64xf32>
}

// -----

// CHECK: roller-config-invalid.mlir:[[# @LINE + 2]]:8: error: 'quartet.tile' op with root 'linalg.softmax' is not supported by roller-config on sm_90 (h200): its loops cannot be read (it does not generalize to a linalg.generic)
func.func @softmax_op(%x: tensor<64x128xf32>, %y: tensor<64x128xf32>) -> tensor<64x128xf32> {
  %r = "quartet.tile"() ({
    %s = linalg.softmax dimension(1) ins(%x : tensor<64x128xf32>) outs(%y : tensor<64x128xf32>) -> tensor<64x128xf32>
    gpu.yield %s : tensor<64x128xf32>
  }) : () -> tensor<64x128xf32>
  return %r : tensor<64x128xf32>
}

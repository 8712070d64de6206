// From plain linalg: one tile per operator (quartet-outline-tiles), then Roller's tile programs.
// The linalg.fill tile is configured like any elementwise op (its scalar operand is rank 0).
// RUN: quartet-opt %s --pass-pipeline='builtin.module(quartet-outline-tiles, roller-config{target=sm_90})' | filecheck %s

// CHECK-LABEL: func.func @linear_relu
// CHECK: "quartet.tile"() ({
// CHECK-NEXT: linalg.fill
// CHECK-NEXT: gpu.yield
// CHECK-NEXT: }) {block_tile = array<i64: {{[0-9]+}}, {{[0-9]+}}>, grid = array<i64: {{[0-9]+}}, {{[0-9]+}}>, kernel = "row", smem_padding = array<i64: 0>, target = "sm_90", tensor_core = false, thread_tile = array<i64: {{[0-9]+}}, {{[0-9]+}}>, threads = {{[0-9]+}} : i64} : () -> tensor<512x1024xf32>
// CHECK: "quartet.tile"() ({
// CHECK-NEXT: linalg.matmul
// CHECK-NEXT: gpu.yield
// CHECK-NEXT: }) {block_tile = array<i64: {{[0-9]+}}, {{[0-9]+}}, {{[0-9]+}}>, grid = array<i64: {{[0-9]+}}, {{[0-9]+}}>, kernel = "gemm", smem_padding = array<i64: {{[0-9]+}}, {{[0-9]+}}>, target = "sm_90", tensor_core = true, thread_tile = array<i64: {{[0-9]+}}, {{[0-9]+}}, {{[0-9]+}}>, threads = {{[0-9]+}} : i64}
// CHECK: "quartet.tile"() ({
// CHECK-NEXT: linalg.generic
// CHECK: }) {block_tile = array<i64: {{[0-9]+}}, {{[0-9]+}}>, grid = array<i64: {{[0-9]+}}, {{[0-9]+}}>, kernel = "row", smem_padding = array<i64: 0>, target = "sm_90", tensor_core = false, thread_tile = array<i64: 1, {{[0-9]+}}>, threads = {{[0-9]+}} : i64}
#id = affine_map<(d0, d1) -> (d0, d1)>
func.func @linear_relu(%x: tensor<512x768xf16>, %w: tensor<768x1024xf16>) -> tensor<512x1024xf32> {
  %zero = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<512x1024xf32>
  %acc = linalg.fill ins(%zero : f32) outs(%e : tensor<512x1024xf32>) -> tensor<512x1024xf32>
  %mm = linalg.matmul ins(%x, %w : tensor<512x768xf16>, tensor<768x1024xf16>) outs(%acc : tensor<512x1024xf32>) -> tensor<512x1024xf32>
  %relu = linalg.generic {indexing_maps = [#id, #id], iterator_types = ["parallel", "parallel"]} ins(%mm : tensor<512x1024xf32>) outs(%e : tensor<512x1024xf32>) {
  ^bb0(%v: f32, %o: f32):
    %c0 = arith.constant 0.0 : f32
    %r = arith.maximumf %v, %c0 : f32
    linalg.yield %r : f32
  } -> tensor<512x1024xf32>
  return %relu : tensor<512x1024xf32>
}

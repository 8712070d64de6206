// rammer-schedule: the tiles of a segment side by side on the vEUs of one quartet.uvirtual.
// Before: Roller's tiles (one per operator, top-4 schedules kept as kernel versions).
// After: one uvirtual holding one vtask per tile in execution order; the two independent
// matmuls share wave (step) 0 on disjoint vEU ranges, the add waits for both at step 1.
// RUN: quartet-opt %s --split-input-file --pass-pipeline='builtin.module(roller{target=sm_90 topk=4})' | %filecheck %s --check-prefix=BEFORE
// RUN: quartet-opt %s --split-input-file --pass-pipeline='builtin.module(roller{target=sm_90 topk=4},rammer-schedule{target=sm_90},rammer-check)' | %filecheck %s
// RUN: quartet-opt %s --split-input-file --pass-pipeline='builtin.module(rammer{target=sm_90 sync=barrier})' | %filecheck %s --check-prefix=BARRIER
// RUN: quartet-opt %s --split-input-file --pass-pipeline='builtin.module(rammer{target=cpu})' | %filecheck %s --check-prefix=CPU

// BEFORE-LABEL: func.func @branches
// BEFORE-COUNT-3: "quartet.tile"
// BEFORE-NOT:     quartet.uvirtual

// CHECK-LABEL: func.func @branches
// CHECK:         %[[U:.*]] = "quartet.uvirtual"() ({
// CHECK:           %[[A:.*]] = "quartet.vtask"() ({
// CHECK-NEXT:        %[[TA:.*]] = "quartet.tile"() ({
// CHECK:               linalg.matmul ins(%arg0, %arg1
// CHECK:             gpu.yield %[[TA]]
// CHECK-NEXT:      }) {step = 0 : i64, veu_begin = 0 : i64, veu_count = [[N:[0-9]+]] : i64}
// CHECK:           %[[B:.*]] = "quartet.vtask"() ({
// CHECK:               linalg.matmul ins(%arg0, %arg2
// CHECK:           }) {step = 0 : i64, veu_begin = [[N]] : i64, veu_count = [[N]] : i64}
// CHECK:           %[[C:.*]] = "quartet.vtask"() ({
// CHECK:               linalg.add ins(%[[A]], %[[B]]
// CHECK:           }) {step = 1 : i64, veu_begin = 0 : i64
// CHECK:           gpu.yield %[[C]]
// CHECK-NEXT:    }) {alone_us = {{.*}}, blocks_per_unit = {{[0-9]+}} : i64, estimate_us = {{.*}}, num_veus = {{[0-9]+}} : i64, registers = {{[0-9]+}} : i64, resultSegmentSizes = array<i32: 1, 0, 0, 0, 0, 0, 0, 0>, shared_bytes = {{[0-9]+}} : i64, sync = "counters", threads = 128 : i64}
// CHECK-NEXT:    return %[[U]]

// BARRIER-LABEL: func.func @branches
// BARRIER:         "quartet.uvirtual"
// BARRIER:         sync = "barrier"

// On the CPU the schedule is computed for 16 cores (one vEU each); the CPU lowering runs the
// vtasks in this order.
// CPU-LABEL: func.func @branches
// CPU:         "quartet.uvirtual"
// CPU-COUNT-3:   "quartet.vtask"
// CPU:         num_veus = 16 : i64
func.func @branches(%x: tensor<64x128xf32>, %w1: tensor<128x64xf32>, %w2: tensor<128x64xf32>) -> tensor<64x64xf32> {
  %zero = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<64x64xf32>
  %f = linalg.fill ins(%zero : f32) outs(%e : tensor<64x64xf32>) -> tensor<64x64xf32>
  %a = linalg.matmul ins(%x, %w1 : tensor<64x128xf32>, tensor<128x64xf32>) outs(%f : tensor<64x64xf32>) -> tensor<64x64xf32>
  %b = linalg.matmul ins(%x, %w2 : tensor<64x128xf32>, tensor<128x64xf32>) outs(%f : tensor<64x64xf32>) -> tensor<64x64xf32>
  %s = linalg.add ins(%a, %b : tensor<64x64xf32>, tensor<64x64xf32>) outs(%e : tensor<64x64xf32>) -> tensor<64x64xf32>
  return %s : tensor<64x64xf32>
}

// -----

// Branches stacked and averaged (torch.stack(...).mean(0)): the concatenation of contiguous
// slices stays a view inside the uvirtual (the branches write their slices in place), the
// reshape too; the reduction over the stacked branches waits for all of them.
// CHECK-LABEL: func.func @stacked
// CHECK:         "quartet.uvirtual"() ({
// CHECK-COUNT-2:   linalg.matmul
// CHECK:           %[[CAT:.*]] = tensor.concat dim(0)
// CHECK-NEXT:      tensor.expand_shape %[[CAT]]
// CHECK:           "quartet.vtask"() ({
// CHECK:             linalg.generic
// CHECK:           }) {step = 1 : i64
// CHECK:         }) {
// CHECK-NOT:     tensor.concat
#id3 = affine_map<(d0, d1, d2) -> (d0, d1, d2)>
#sum = affine_map<(d0, d1, d2) -> (d1, d2)>
func.func @stacked(%x: tensor<64x128xf32>, %w1: tensor<128x64xf32>, %w2: tensor<128x64xf32>) -> tensor<64x64xf32> {
  %zero = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<64x64xf32>
  %f = linalg.fill ins(%zero : f32) outs(%e : tensor<64x64xf32>) -> tensor<64x64xf32>
  %a = linalg.matmul ins(%x, %w1 : tensor<64x128xf32>, tensor<128x64xf32>) outs(%f : tensor<64x64xf32>) -> tensor<64x64xf32>
  %b = linalg.matmul ins(%x, %w2 : tensor<64x128xf32>, tensor<128x64xf32>) outs(%f : tensor<64x64xf32>) -> tensor<64x64xf32>
  %cat = tensor.concat dim(0) %a, %b : (tensor<64x64xf32>, tensor<64x64xf32>) -> tensor<128x64xf32>
  %st = tensor.expand_shape %cat [[0, 1], [2]] output_shape [2, 64, 64] : tensor<128x64xf32> into tensor<2x64x64xf32>
  %m = linalg.generic {indexing_maps = [#id3, #sum], iterator_types = ["reduction", "parallel", "parallel"]}
      ins(%st : tensor<2x64x64xf32>) outs(%f : tensor<64x64xf32>) {
    ^bb0(%in: f32, %out: f32):
      %r = arith.addf %in, %out : f32
      linalg.yield %r : f32
  } -> tensor<64x64xf32>
  return %m : tensor<64x64xf32>
}

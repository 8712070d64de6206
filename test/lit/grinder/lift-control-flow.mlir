// grinder-lift-control-flow: loops and branches around tiles move into one quartet.uvirtual.
// Before: Roller's tiles inside an scf.while (a data-dependent trip count: i < n, n an input)
// and inside an scf.if; the host would read the predicate back every iteration.
// After: the loop / branch is inside a uvirtual, every tile a vtask (Rammer's waves), the
// choice and the cost model's estimates recorded; control=host keeps the loop on the host.
// RUN: quartet-opt %s --split-input-file --pass-pipeline='builtin.module(roller{target=sm_90})' | %filecheck %s --check-prefix=BEFORE
// RUN: quartet-opt %s --split-input-file --pass-pipeline='builtin.module(grinder{target=sm_90})' | %filecheck %s
// RUN: quartet-opt %s --split-input-file --pass-pipeline='builtin.module(grinder{target=sm_90 control=host})' | %filecheck %s --check-prefix=HOST
// RUN: quartet-opt %s --split-input-file --pass-pipeline='builtin.module(grinder{target=sm_90 max_iterations=100})' | %filecheck %s --check-prefix=BOUND

#s = affine_map<() -> ()>
#m = affine_map<(d0, d1) -> (d0, d1)>

// BEFORE-LABEL: func.func @counted
// BEFORE:         scf.while
// BEFORE:           scf.condition
// BEFORE:         } do {
// BEFORE-COUNT-2:   "quartet.tile"
// BEFORE-NOT:     quartet.uvirtual

// CHECK-LABEL: func.func @counted
// CHECK:         %[[U:.*]] = "quartet.uvirtual"() ({
// CHECK:           scf.while
// CHECK:             "quartet.vtask"() ({
// CHECK-NEXT:          "quartet.tile"
// CHECK:                 arith.cmpi slt
// CHECK:             }) {step = 0 : i64, veu_begin = {{[0-9]+}} : i64, veu_count = {{[0-9]+}} : i64}
// CHECK:             scf.condition
// CHECK:           } do {
// CHECK:             "quartet.vtask"() ({
// CHECK:                 arith.addi
// CHECK:             }) {step = 1 : i64
// CHECK:             "quartet.vtask"() ({
// CHECK:                 linalg.matmul
// CHECK:             }) {step = 1 : i64
// CHECK:             scf.yield
// CHECK:           } attributes {quartet.control = "device"}
// CHECK:           gpu.yield
// CHECK-NEXT:    }) {blocks_per_unit = {{.*}}, control = "device", estimate_us = {{.*}}, graph_us = {{.*}}, host_us = {{.*}}, num_veus = {{[0-9]+}} : i64, {{.*}}sync = "barrier"
// CHECK:         return

// HOST-LABEL: func.func @counted
// HOST-NOT:     quartet.uvirtual
// HOST:         scf.while
// HOST:         quartet.control = "host"

// BOUND-LABEL: func.func @counted
// BOUND:         scf.while
// BOUND:         quartet.max_iterations = 100 : i64
func.func @counted(%x: tensor<4x32xf32>, %n: tensor<i64>, %w: tensor<32x32xf32>) -> tensor<4x32xf32> {
  %zero = arith.constant 0.000000e+00 : f32
  %one = arith.constant 1 : i64
  %c0 = arith.constant dense<0> : tensor<i64>
  %r:2 = scf.while (%i = %c0, %h = %x) : (tensor<i64>, tensor<4x32xf32>) -> (tensor<i64>, tensor<4x32xf32>) {
    %b = tensor.empty() : tensor<i1>
    %lt = linalg.generic {indexing_maps = [#s, #s, #s], iterator_types = []} ins(%i, %n : tensor<i64>, tensor<i64>) outs(%b : tensor<i1>) {
    ^bb0(%a: i64, %c: i64, %o: i1):
      %t = arith.cmpi slt, %a, %c : i64
      linalg.yield %t : i1
    } -> tensor<i1>
    %p = tensor.extract %lt[] : tensor<i1>
    scf.condition(%p) %i, %h : tensor<i64>, tensor<4x32xf32>
  } do {
  ^bb0(%i: tensor<i64>, %h: tensor<4x32xf32>):
    %e = tensor.empty() : tensor<i64>
    %next = linalg.generic {indexing_maps = [#s, #s], iterator_types = []} ins(%i : tensor<i64>) outs(%e : tensor<i64>) {
    ^bb0(%a: i64, %o: i64):
      %t = arith.addi %a, %one : i64
      linalg.yield %t : i64
    } -> tensor<i64>
    %e2 = tensor.empty() : tensor<4x32xf32>
    %z = linalg.fill ins(%zero : f32) outs(%e2 : tensor<4x32xf32>) -> tensor<4x32xf32>
    %mm = linalg.matmul ins(%h, %w : tensor<4x32xf32>, tensor<32x32xf32>) outs(%z : tensor<4x32xf32>) -> tensor<4x32xf32>
    %th = linalg.generic {indexing_maps = [#m, #m], iterator_types = ["parallel", "parallel"]} ins(%mm : tensor<4x32xf32>) outs(%e2 : tensor<4x32xf32>) {
    ^bb0(%a: f32, %o: f32):
      %t = math.tanh %a : f32
      linalg.yield %t : f32
    } -> tensor<4x32xf32>
    scf.yield %next, %th : tensor<i64>, tensor<4x32xf32>
  }
  return %r#1 : tensor<4x32xf32>
}

// -----

#m = affine_map<(d0, d1) -> (d0, d1)>

// A branch on a predicate the device computes: both regions' tiles are vtasks of one
// uvirtual, the branch result a value of the device program.
// CHECK-LABEL: func.func @branch
// CHECK:         "quartet.uvirtual"() ({
// CHECK:           scf.if
// CHECK:             "quartet.vtask"
// CHECK:           } else {
// CHECK:             "quartet.vtask"
// CHECK:           } {quartet.control = "device"}
// CHECK:         control = "device"
func.func @branch(%p: tensor<i1>, %x: tensor<8x64xf32>) -> tensor<8x64xf32> {
  %b = tensor.extract %p[] : tensor<i1>
  %e = tensor.empty() : tensor<8x64xf32>
  %r = scf.if %b -> (tensor<8x64xf32>) {
    %t = linalg.generic {indexing_maps = [#m, #m], iterator_types = ["parallel", "parallel"]} ins(%x : tensor<8x64xf32>) outs(%e : tensor<8x64xf32>) {
    ^bb0(%a: f32, %o: f32):
      %v = math.tanh %a : f32
      linalg.yield %v : f32
    } -> tensor<8x64xf32>
    scf.yield %t : tensor<8x64xf32>
  } else {
    %t = linalg.generic {indexing_maps = [#m, #m], iterator_types = ["parallel", "parallel"]} ins(%x : tensor<8x64xf32>) outs(%e : tensor<8x64xf32>) {
    ^bb0(%a: f32, %o: f32):
      %v = arith.negf %a : f32
      linalg.yield %v : f32
    } -> tensor<8x64xf32>
    scf.yield %t : tensor<8x64xf32>
  }
  return %r : tensor<8x64xf32>
}

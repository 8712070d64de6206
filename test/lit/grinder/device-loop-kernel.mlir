// The persistent kernel of a Grinder uvirtual (quartet-lower-gpu{stop_after=kernels}): one
// gpu.launch whose every block walks the same device program. Before the loop, the carried
// values are copied into their buffers (grid-stride copies) and all blocks meet at a grid
// barrier; the loop is an scf.while on the device: its condition runs the predicate's task,
// the watchdog (trap after 10 s), and a grid barrier whose last block reads the predicate
// (memref<1xi8>) and publishes it to every block (so all take the same path); the body runs
// the tasks of its waves, copies the yielded values back into the carried buffers, and the
// loop goes round with no host round trip.
// RUN: quartet-opt %s --pass-pipeline='builtin.module(grinder{target=sm_90},quartet-lower-gpu{target=sm_90 stop_after=kernels})' | %filecheck %s
// And once lowered to binaries: one launch of one kernel for the whole loop.
// RUN: quartet-opt %s --pass-pipeline='builtin.module(grinder{target=sm_90},quartet-lower-gpu{target=sm_90})' | %filecheck %s --check-prefix=BIN

// CHECK-LABEL: func.func private @q0_t0(%arg0: index, %arg1: memref<i64> {quartet.role = "input"}, %arg2: memref<i64> {quartet.role = "input"}, %arg3: memref<i8> {quartet.role = "output"})
// CHECK:         arith.cmpi slt
// CHECK-LABEL: func.func private @q0_t1(
// CHECK:         arith.addi
// CHECK-LABEL: func.func private @q0_t2(
// CHECK-LABEL: func.func @q0(
// CHECK-SAME:    memref<7xi64> {quartet.role = "output"}
// CHECK:         gpu.launch blocks(%[[B:.*]], %{{.*}}, %{{.*}}) in (%{{.*}} = %c[[VEUS:[0-9]+]],
// CHECK:           "mov.u64 $0, %globaltimer;"
// CHECK:           scf.for
// CHECK:             memref.load
// CHECK:             memref.store
// CHECK:           "atom.acq_rel.gpu.add.u64 $0, [$1], $2;"
// CHECK:           scf.while (%{{.*}} = %c0_i64) : (i64) -> i64 {
// CHECK:             func.call @q0_t0(
// CHECK:             "trap;"
// CHECK:             "atom.acq_rel.gpu.add.u64 $0, [$1], $2;"
// CHECK:             memref.load %{{.*}}[%{{.*}}] : memref<1xi8>
// CHECK:             "st.release.gpu.u64 [$0], $1;"
// CHECK:             "ld.acquire.gpu.u64 $0, [$1];"
// CHECK:             scf.condition
// CHECK:           } do {
// CHECK:             func.call @q0_t1(
// CHECK:             func.call @q0_t2(
// CHECK:             scf.for
// CHECK:             scf.yield
// CHECK:           gpu.terminator

// BIN-LABEL: func.func @counted
// BIN:         gpu.launch_func @q0_kernel
// BIN-NOT:     gpu.launch_func
// BIN-NOT:     scf.while
// BIN:         return

#s = affine_map<() -> ()>
#m = affine_map<(d0, d1) -> (d0, d1)>




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


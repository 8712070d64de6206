// The persistent kernel of a uvirtual (quartet-lower-gpu{stop_after=kernels}): the tasks'
// bodies - the two identical matmuls share one - and one gpu.launch whose blocks walk the tasks
// in order: thread 0 reads the call count (epoch), each block runs its vEU's blocks of a task
// and signals its completion counter with a release; the add waits (acquire spin with a
// watchdog) for both matmuls; the last block to finish moves the epoch on.
// RUN: quartet-opt %s --pass-pipeline='builtin.module(rammer{target=sm_90},quartet-lower-gpu{target=sm_90 stop_after=kernels})' | %filecheck %s
// And once lowered to binaries: one launch of one kernel for the whole function.
// RUN: quartet-opt %s --pass-pipeline='builtin.module(rammer{target=sm_90},quartet-lower-gpu{target=sm_90})' | %filecheck %s --check-prefix=BIN

// And as an artifact (quartet-opt -o, as for roller): one cooperative persistent kernel, one
// launch, a zeroed synchronisation buffer; the CPU artifact of the same pipeline runs the tasks.
// RUN: rm -rf %t && mkdir -p %t
// RUN: quartet-opt %s --pass-pipeline='builtin.module(rammer{target=sm_90})' -o %t/rammer90.qrt
// RUN: %PYTHON -c "from quartet.runtime.artifact import load_manifest; m = load_manifest('%t/rammer90.qrt'); k, = m.kernels; print(k.cooperative, len(k.persistent.tasks), m.buffer_map[k.persistent.sync].zeroed, len(list(m.steps())))" | %filecheck %s --check-prefix=QRT
// QRT: True 3 True 1
// RUN: quartet-opt %s --pass-pipeline='builtin.module(rammer{target=cpu})' -o %t/rammer.qrt
// RUN: %PYTHON -c "import numpy as np, quartet.runtime as rt; p = rt.load('%t/rammer.qrt'); r = np.random.default_rng(0); x, w1, w2 = (r.standard_normal(s, dtype=np.float32) for s in ((64, 128), (128, 64), (128, 64))); print(bool(np.allclose(p(x, w1, w2), x @ w1 + x @ w2, rtol=1e-4, atol=1e-4)))" | %filecheck %s --check-prefix=CPU
// CPU: True

// CHECK-LABEL: func.func private @q0_t0(%arg0: index, %arg1: memref<64x128xf32>
// CHECK-NOT:   func.func private @q0_t1
// CHECK-LABEL: func.func private @q0_t2(%arg0: index
// CHECK-LABEL: func.func @q0(
// CHECK-SAME:    memref<7xi64> {quartet.role = "output"}
// CHECK:         gpu.launch blocks(%[[B:.*]], %{{.*}}, %{{.*}}) in (%{{.*}} = %c[[VEUS:[0-9]+]],
// CHECK:           "ld.acquire.gpu.u64 $0, [$1];"
// CHECK:           func.call @q0_t0(%{{.*}}, %arg0, %arg1, %arg2)
// CHECK:           gpu.barrier
// CHECK:           "fence.acq_rel.gpu;"
// CHECK:           "red.release.gpu.add.u64 [$0], $1;"
// CHECK:           func.call @q0_t0(%{{.*}}, %arg0, %arg3, %arg4)
// CHECK:           "red.release.gpu.add.u64 [$0], $1;"
// CHECK:           "mov.u64 $0, %globaltimer;"
// CHECK:           scf.while
// CHECK:             "ld.acquire.gpu.u64 $0, [$1];"
// CHECK:             "trap;"
// CHECK:           gpu.barrier
// CHECK:           func.call @q0_t2(%{{.*}}, %arg5, %arg6, %arg7)
// CHECK:         "atom.acq_rel.gpu.add.u64 $0, [$1], $2;"
// CHECK:         "st.release.gpu.u64 [$0], $1;"

// BIN-LABEL: func.func @branches
// BIN:         gpu.launch_func {{ *}}@q0_kernel::@q0_kernel blocks in (%c{{[0-9]+}}, %c1, %c1{{.*}}) threads in (%c128,
// BIN-SAME:      memref<7xi64>
// BIN-NOT:     gpu.launch_func
// BIN:         return
func.func @branches(%x: tensor<64x128xf32>, %w1: tensor<128x64xf32>, %w2: tensor<128x64xf32>) -> tensor<64x64xf32> {
  %zero = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<64x64xf32>
  %f = linalg.fill ins(%zero : f32) outs(%e : tensor<64x64xf32>) -> tensor<64x64xf32>
  %a = linalg.matmul ins(%x, %w1 : tensor<64x128xf32>, tensor<128x64xf32>) outs(%f : tensor<64x64xf32>) -> tensor<64x64xf32>
  %b = linalg.matmul ins(%x, %w2 : tensor<64x128xf32>, tensor<128x64xf32>) outs(%f : tensor<64x64xf32>) -> tensor<64x64xf32>
  %s = linalg.add ins(%a, %b : tensor<64x64xf32>, tensor<64x64xf32>) outs(%e : tensor<64x64xf32>) -> tensor<64x64xf32>
  return %s : tensor<64x64xf32>
}

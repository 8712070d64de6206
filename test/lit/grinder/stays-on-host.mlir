// A loop whose body cannot stay on the device stays on the host, never miscompiled: with
// verbose=true the pass says why (a remark at the loop), and records it on the loop.
// RUN: quartet-opt %s --pass-pipeline='builtin.module(grinder{target=sm_90 verbose=true})' 2>&1 >/dev/null | %filecheck %s --check-prefix=REMARK
// RUN: quartet-opt %s --pass-pipeline='builtin.module(grinder{target=sm_90})' | %filecheck %s

#s = affine_map<() -> ()>

// REMARK: {{.*}}:17:10: remark: 'scf.while' stays on the host: 'tensor.insert_slice' cannot run in a device program

// CHECK-LABEL: func.func @host_loop
// CHECK-NOT:     quartet.uvirtual
// CHECK:         scf.while
// CHECK:         quartet.control = "host", quartet.host_reason = "'tensor.insert_slice' cannot run in a device program"
func.func @host_loop(%x: tensor<8xf32>, %n: tensor<i64>) -> tensor<8xf32> {
  %one = arith.constant 1 : i64
  %c0 = arith.constant dense<0> : tensor<i64>
  %r:2 = scf.while (%i = %c0, %h = %x) : (tensor<i64>, tensor<8xf32>) -> (tensor<i64>, tensor<8xf32>) {
    %b = tensor.empty() : tensor<i1>
    %lt = linalg.generic {indexing_maps = [#s, #s, #s], iterator_types = []} ins(%i, %n : tensor<i64>, tensor<i64>) outs(%b : tensor<i1>) {
    ^bb0(%a: i64, %c: i64, %o: i1):
      %t = arith.cmpi slt, %a, %c : i64
      linalg.yield %t : i1
    } -> tensor<i1>
    %p = tensor.extract %lt[] : tensor<i1>
    scf.condition(%p) %i, %h : tensor<i64>, tensor<8xf32>
  } do {
  ^bb0(%i: tensor<i64>, %h: tensor<8xf32>):
    %e = tensor.empty() : tensor<i64>
    %next = linalg.generic {indexing_maps = [#s, #s], iterator_types = []} ins(%i : tensor<i64>) outs(%e : tensor<i64>) {
    ^bb0(%a: i64, %o: i64):
      %t = arith.addi %a, %one : i64
      linalg.yield %t : i64
    } -> tensor<i64>
    %part = tensor.extract_slice %h[0] [4] [1] : tensor<8xf32> to tensor<4xf32>
    %shifted = tensor.insert_slice %part into %h[4] [4] [1] : tensor<4xf32> into tensor<8xf32>
    scf.yield %next, %shifted : tensor<i64>, tensor<8xf32>
  }
  return %r#1 : tensor<8xf32>
}

// RUN: quartet-opt --list-passes | %filecheck %s
// CHECK: Quartet passes:
// CHECK-DAG: quartet-outline-tiles {{ +}}wrap every linalg op of every function in its own quartet.tile
// CHECK-DAG: quartet-inline-tiles {{ +}}move the ops of every quartet.tile back in place
// CHECK: Quartet pipelines:

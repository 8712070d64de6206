"""quartet.bench: the benchmark harness of issue 5 (see bench/README.md).

``suite`` holds the workloads (plain PyTorch modules, inputs, FLOPs and fewest bytes);
``build`` compiles them with Quartet here, ``run`` times Quartet against PyTorch eager and
torch.compile on the GPU machine, ``report`` writes RESULTS.md and the plots;
``artifact_weights`` carries large weights as a seed. Importing the package loads nothing.
"""

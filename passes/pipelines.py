"""Named pipelines: each compiler is a pipeline over the same IR (DESIGN.md).

``roller{target=T}``: linalg on tensors -> casts and transposes in front of contractions
folded into mixed-precision contractions (``roller-fold-casts``) -> one ``quartet.tile`` per
linalg op (``quartet-outline-tiles``) -> one per operator (``roller-fuse``: fills, casts and element-wise
ops join the op that owns their iteration space) -> Roller's tile programs -> kernels. For a GPU target the result holds ``gpu.binary`` ops (cubin for ``sm_*``,
hsaco for ``gfx*``) and ``gpu.launch_func`` calls; for ``target=cpu`` it is LLVM-dialect code
for the ExecutionEngine.
"""

from __future__ import annotations

from .registry import register_pipeline

GPU_TARGETS = ("sm_90", "sm_80", "gfx942")


@register_pipeline("roller", "outline tiles, configure them with Roller and lower them to "
                             "kernels (gpu.binary per operator, or LLVM for target=cpu)",
                   options={"target": "sm_90 (default), sm_80, gfx942 or cpu",
                            "topk": "schedules kept per tile (default 1)"})
def roller(options: dict[str, str]) -> list[str]:
    target = options.get("target", "sm_90")
    topk = options.get("topk", "1")
    lower = "quartet-lower-cpu" if target == "cpu" else f"quartet-lower-gpu{{target={target}}}"
    return ["roller-fold-casts", "quartet-outline-tiles", f"roller-fuse{{target={target}}}",
            f"roller-config{{target={target} topk={topk}}}", lower]

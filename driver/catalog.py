"""Every Quartet pass and pipeline, registered once by :func:`quartet.driver.registry.load_all`.

Add a line here when you add a pass; the order is the order of ``--list-passes``.
"""

from quartet.driver import pipelines
from quartet.driver.lowering_passes import GpuToBinary, LowerCpu, LowerGpu
from quartet.driver.registry import register
from quartet.passes.data_movement import OutlineDataMovement
from quartet.passes.grinder.check import GrinderCheck
from quartet.passes.grinder.lift_control_flow import GrinderLift
from quartet.passes.outline import InlineTiles, OutlineTiles
from quartet.passes.rammer.check import RammerCheck
from quartet.passes.rammer.schedule import RammerSchedule
from quartet.passes.roller.casts import RollerFoldCasts
from quartet.passes.roller.config import RollerConfig
from quartet.passes.roller.fuse import RollerFuse
from quartet.passes.roller.split import RollerSplitReductions
from quartet.passes.welder.fuse import WelderFuse
from quartet.passes.welder.views import WelderCollapseViews

for _pass in (OutlineTiles, InlineTiles, RollerConfig, RollerFuse, RollerFoldCasts,
              RollerSplitReductions,
              OutlineDataMovement, RammerSchedule, RammerCheck, GrinderLift,
              GrinderCheck, WelderCollapseViews, WelderFuse, LowerCpu, LowerGpu,
              GpuToBinary):
    register(_pass)

pipelines.register_all()

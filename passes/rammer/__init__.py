"""Rammer (OSDI'20): independent operators side by side in one persistent kernel.

* ``graph.py``     the data-flow graph of tiles, cut into segments a persistent kernel can hold;
* ``versions.py``  kernel versions of a tile from Roller's top-k schedules (rKernel versions);
* ``wavefront.py`` wavefront scheduling of the tiles' thread blocks (rTasks) onto vEUs, the
                   version per tile, the vEU count from occupancy, counters or grid barriers;
* ``schedule.py``  the pass ``rammer-schedule``: each segment -> one ``quartet.uvirtual`` of
                   ``quartet.vtask``s;
* ``check.py``     the pass ``rammer-check``: the schedule checker on the CPU
                   (``lowering/compose/vdevice.py``) on every uvirtual.

The lowering builds one persistent kernel per uvirtual (``lowering/build_persistent.py``,
``lowering/compose/persistent.py``).
"""

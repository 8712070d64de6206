"""Grinder (Cocktailer, OSDI'23): loops and branches moved into the device program.

* ``liftable.py``          what a device program may hold, and why not (the remark);
* ``loops.py``             static trip counts (a small interpreter of the control slice),
                           while -> for, unrolling;
* ``schedule.py``          Rammer's wavefront over every region of a lifted program;
* ``cost.py``              device loop vs host loop (vs CUDA graph, estimated only);
* ``lift_control_flow.py`` the pass ``grinder-lift-control-flow``;
* ``check.py``             the pass ``grinder-check``.

The lowering: ``lowering/device_program.py``, ``build_device_program.py``,
``host_device_program.py``, ``compose/device_loops.py``.
"""

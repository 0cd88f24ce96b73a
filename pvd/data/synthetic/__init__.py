"""Procedural ShapeNet-like shapes: airplanes, chairs, cars, tables and lamps.

Frame: ShapeNetCore.v2's canonical frame (see :mod:`pvd.data.cameras`): +y up, the front faces
-z, left-right symmetric about x = 0; every shape is finally centred at its bounding-box centre
with the bounding-box diagonal scaled to 1.

The modules, each imported by name (this file exports nothing): :mod:`.parts` (convex parts,
the union's surface sampling and the primitives builders compose), one shape program per
category (:mod:`.airplane`, :mod:`.chair`, :mod:`.table`, :mod:`.car`, :mod:`.lamp`: its
parameter table and builder), :mod:`.categories` (the registry and ``generate_shape``) and
:mod:`.writer` (the HDF5 dataset file).
"""

"""Readers that turn ShapeNet trees, and a user's own folders, into pvd's one HDF5 schema.

Three sources (the layouts are those of the published archives), one reader module each,
where its layout is described: :mod:`.pc15k` (ShapeNetCore.v2.PC15k point clouds, optionally
joined with the 3D-R2N2 renderings), :mod:`.core` (ShapeNetCore.v2 meshes) and
:mod:`.folder` (a user's meshes or point clouds). A reader lists its tree into a
:class:`~.tasks.Plan` of one :class:`~.tasks.Task` per shape; :mod:`.runner` converts the
tasks and writes the file. :mod:`.categories` holds the synset names and the hashed splits
and seeds, :mod:`.trees` what the readers share to recognise and list a tree. This file
exports nothing: import from those modules (``datasets/shapenet.py`` is the command line).

Every skip (a corrupt file, a shape without renderings, ...) is named with its reason in the
summary; ``strict=True`` makes any skip fatal. The output is deterministic: shapes are
written in sorted order, random draws are seeded from the model id, and worker processes
return results in order.
"""

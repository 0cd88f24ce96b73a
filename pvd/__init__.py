"""pvd: point-voxel diffusion for explicit 3D generation."""

__version__ = "0.1.0"

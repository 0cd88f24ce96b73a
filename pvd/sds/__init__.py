"""The score-distillation (SDS) lifting baseline: a view-conditioned 2D prior, a voxel radiance field, and the distillation loop."""

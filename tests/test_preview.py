"""pvd.preview: panels a person can read (size, layout, label, one frame for points and mesh)."""

import numpy as np
import trimesh

from pvd.preview import LABEL_HEIGHT, PANEL, preview, stack_rows


def test_layout_label_and_shared_frame():
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.4)
    points = np.asarray(trimesh.sample.sample_surface(sphere, 2000, seed=0)[0])
    view = np.zeros((137, 137, 4), dtype=np.uint8)
    view[40:100, 40:100] = (200, 30, 30, 255)
    image = preview("chair-0001", points, view, sphere)
    assert image.shape == (LABEL_HEIGHT + PANEL + 4, 5 * (PANEL + 2) + 2, 3) and PANEL >= 256
    label = image[:LABEL_HEIGHT]
    assert (label < 100).any() and (label == 255).mean() > 0.8  # dark text on white
    panel = lambda i: image[LABEL_HEIGHT + 2 : LABEL_HEIGHT + 2 + PANEL, 2 + i * (PANEL + 2) : 2 + i * (PANEL + 2) + PANEL]  # noqa: E731
    assert (panel(0)[..., 0] > 150).any() and (panel(0)[..., 1] < 60).any()  # the red input view
    # points and mesh in one frame: the sphere spans the same pixels in both (bounding boxes within 4 px)
    def box(i):
        rows, cols = np.nonzero((panel(i) < 250).any(-1))
        return np.array([rows.min(), rows.max(), cols.min(), cols.max()])
    for cloud, mesh in ((1, 3), (2, 4)):
        assert np.abs(box(cloud) - box(mesh)).max() <= 4 and box(mesh)[1] - box(mesh)[0] > PANEL / 2
    without = preview("x", points, None, None, no_mesh_reason="no mesh")
    assert without.shape[1] == 3 * (PANEL + 2) + 2
    assert stack_rows([image, without]).shape == (2 * image.shape[0] + 4, image.shape[1], 3)

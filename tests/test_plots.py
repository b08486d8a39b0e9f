"""The screening's pictures are written and are real images."""

import numpy as np
import pytest
from pymatgen.core import Composition

from crystalgan_jax.screening import hull as hulls, plots


def hull():
    return hulls.Hull.build(["Pd", "Ni", "H"], {"Pd": 0.0, "Ni": 0.0, "H": 0.0},
                            [("PdH", Composition("PdH"), -0.3), ("NiH", Composition("NiH"), -0.2),
                             ("Pd3Ni", Composition("Pd3Ni"), -0.05)])


def check_png(path, min_side=200):
    from matplotlib.image import imread

    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = imread(str(path))
    assert img.ndim == 3 and min(img.shape[:2]) >= min_side
    assert np.asarray(img[..., :3]).std() > 0.01  # something drawn, not a blank canvas
    return img


def test_phase_diagram_and_histogram_pngs(tmp_path):
    candidates = [("PdNiH2", 0.05), ("Pd2NiH3", 0.3), ("PdNi3H", 1.2), ("PdNiH", None)]
    substitution = [("Pd3NiH4", 0.12), ("PdNiH2", 0.0)]
    p = plots.phase_diagram_png(hull(), tmp_path / "pd" / "phase_diagram.png",
                                candidates=candidates, substitution=substitution, title="t")
    check_png(p)
    h = plots.e_hull_histogram_png([0.05, 0.3, 1.2, None], [0.12, 0.0],
                                   tmp_path / "hist.png", threshold=0.1)
    check_png(h)
    # empty inputs still give a picture (the hull alone, an empty histogram)
    check_png(plots.phase_diagram_png(hull(), tmp_path / "empty.png"))
    check_png(plots.e_hull_histogram_png([], [], tmp_path / "empty_hist.png"))


def test_triangle_coordinates():
    els = ["Pd", "Ni", "H"]
    assert plots.triangle_xy("Pd", els) == pytest.approx((0.0, 0.0))
    assert plots.triangle_xy("Ni", els) == pytest.approx((1.0, 0.0))
    assert plots.triangle_xy("H2", els) == pytest.approx((0.5, np.sqrt(3) / 2))
    assert plots.triangle_xy("PdNiH2", els) == pytest.approx((0.5, np.sqrt(3) / 4))
    with pytest.raises(ValueError):
        plots.phase_diagram_png(hulls.Hull.build(["Pd", "H"], {"Pd": 0, "H": 0}, []),
                                "/tmp/x.png")

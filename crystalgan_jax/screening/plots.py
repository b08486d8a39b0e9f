"""Pictures of a screening: the A-B-H ternary phase diagram and E_hull histograms.

Drawn with matplotlib's object API on an Agg canvas (no pyplot, no display needed):

- :func:`phase_diagram_png`: the composition triangle A (left), B (right), H (top); the
  hull's stable phases joined by its tie lines (the facets of pymatgen's PhaseDiagram);
  candidates placed by composition and coloured by E_hull, the substitution baseline's
  marked apart (squares);
- :func:`e_hull_histogram_png`: E_hull of the generator's candidates against the
  substitution baseline's.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from pymatgen.core import Composition

from crystalgan_jax.screening.hull import Hull

SQRT3_2 = math.sqrt(3) / 2
Point = tuple[str, float]  # (formula, E_hull in eV/atom)


def _figure(size=(6.4, 5.6)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=120)
    FigureCanvasAgg(fig)
    return fig


def triangle_xy(composition: Composition | str, elements: Sequence[str]) -> tuple[float, float]:
    """Cartesian point of a composition in the triangle elements[0] (0, 0), [1] (1, 0), [2] top."""
    c = Composition(composition).fractional_composition
    _, xb, xh = (float(c[e]) for e in elements)
    return xb + 0.5 * xh, SQRT3_2 * xh


def phase_diagram_png(hull: Hull, path: Path, *, candidates: Sequence[Point] = (),
                      substitution: Sequence[Point] = (), title: str = "",
                      e_max: float = 0.5) -> Path:
    """The ternary phase diagram of ``hull`` with candidates on it, written as a PNG.

    Args:
      hull: the system's hull (three elements: A, B, H).
      path: the PNG to write (folders made).
      candidates, substitution: ``(formula, E_hull)`` of the generator's candidates and of
        the substitution baseline's structures; colour scale 0 .. ``e_max`` eV/atom
        (clipped), both sets on the same scale.
    """
    if len(hull.elements) != 3:
        raise ValueError(f"a ternary diagram needs three elements, got {hull.elements}")
    diagram = hull.phase_diagram()
    elements = [str(e) for e in hull.elements]
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    corners = np.array([[0, 0], [1, 0], [0.5, SQRT3_2], [0, 0]])
    ax.plot(corners[:, 0], corners[:, 1], color="black", lw=1.2)
    stable = list(diagram.stable_entries)
    xy = [triangle_xy(e.composition, elements) for e in stable]
    for facet in diagram.facets:
        for i in range(len(facet)):
            for j in range(i + 1, len(facet)):
                p, q = diagram.qhull_entries[facet[i]], diagram.qhull_entries[facet[j]]
                (x1, y1), (x2, y2) = (triangle_xy(e.composition, elements) for e in (p, q))
                ax.plot([x1, x2], [y1, y2], color="0.6", lw=0.8, zorder=1)
    ax.scatter([p[0] for p in xy], [p[1] for p in xy], s=40, c="black", zorder=3,
               label="hull phases")
    for e, (x, y) in zip(stable, xy):
        ax.annotate(e.composition.reduced_formula, (x, y), textcoords="offset points",
                    xytext=(4, 4), fontsize=7)
    scatter = None
    for points, marker, label in ((candidates, "o", "generator"),
                                  (substitution, "s", "substitution")):
        pts = [(triangle_xy(f, elements), e) for f, e in points if e is not None]
        if not pts:
            continue
        scatter = ax.scatter([p[0][0] for p in pts], [p[0][1] for p in pts],
                             c=np.clip([p[1] for p in pts], 0.0, e_max), cmap="viridis_r",
                             vmin=0.0, vmax=e_max, marker=marker, s=28, alpha=0.8,
                             edgecolors="red" if marker == "s" else "none", linewidths=0.8,
                             zorder=2, label=label)
    if scatter is not None:
        fig.colorbar(scatter, ax=ax, shrink=0.7, label="E_hull (eV/atom)")
    for (x, y), name, (dx, dy) in zip(corners[:3], elements, ((-0.05, -0.05), (0.02, -0.05),
                                                             (-0.02, 0.03))):
        ax.text(x + dx, y + dy, name, fontsize=12, weight="bold")
    ax.set_aspect("equal")
    ax.set_xlim(-0.1, 1.1)
    ax.set_ylim(-0.1, 1.0)
    ax.axis("off")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title or f"{'-'.join(elements)} hull")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def e_hull_histogram_png(generator: Sequence[float], substitution: Sequence[float],
                         path: Path, *, bins: int = 30, threshold: float | None = None,
                         title: str = "") -> Path:
    """Histogram of E_hull (eV/atom) of the generator's candidates and of substitution's."""
    gen = [float(e) for e in generator if e is not None and math.isfinite(e)]
    sub = [float(e) for e in substitution if e is not None and math.isfinite(e)]
    fig = _figure((6.4, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    both = gen + sub
    edges = np.histogram_bin_edges(both if both else [0.0, 1.0], bins=bins)
    if gen:
        ax.hist(gen, bins=edges, alpha=0.6, label=f"generator ({len(gen)})")
    if sub:
        ax.hist(sub, bins=edges, alpha=0.6, label=f"substitution ({len(sub)})")
    if threshold is not None:
        ax.axvline(threshold, color="black", ls="--", lw=1, label=f"stable <= {threshold:g}")
    ax.set_xlabel("E_hull (eV/atom)")
    ax.set_ylabel("structures")
    ax.legend(fontsize=8)
    ax.set_title(title or "Energy above the hull")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path

"""Preparing a run: its inputs read and checked, the settings it learns from them, the
encoding and the networks. A single run and a population prepare the same way
(:func:`prepare`), so a population's members train with the settings a single run of
theirs would learn.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Callable

import jax
import numpy as np

from crystalgan_jax.core import cells, encoding
from crystalgan_jax.materials import io
from crystalgan_jax.pipeline.errors import SettingsError
from crystalgan_jax.pipeline.spec import MAX_BLOCK_ROWS, PopulationSpec, RunSpec
from crystalgan_jax import train


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A run's inputs, ready to train on.

    Attributes:
      spec: the run spec with the learned settings filled in (:func:`learned_settings`).
      ah, bh: the domains as read.
      layout: the encoding's rows.
      x, y: the encoded domains, host float32 arrays ``[N, ...]``.
      nets: the networks for this layout.
      shifts: the geometric penalty's lattice shifts (:func:`train.penalty_shifts`).
      guide: ``spec.guide``'s structures encoded in the layout, host float32 ``[K, ...]``
        (they join both stage-3 domains: :func:`train.stage_data`), or None.
      guide_sources: their files.
    """

    spec: RunSpec
    ah: io.Domain
    bh: io.Domain
    layout: encoding.Layout
    x: encoding.Crystal
    y: encoding.Crystal
    nets: train.Networks
    shifts: jax.Array
    guide: encoding.Crystal | None = None
    guide_sources: tuple[str, ...] = ()


def covalent_radii(element_a: str, element_b: str) -> tuple[float, float, float]:
    """Covalent radii (Angstrom) of H, A and B, as the strict criterion takes them."""
    from crystalgan_jax.materials.evaluation import covalent_radius

    return tuple(covalent_radius(s) for s in ("H", element_a, element_b))


def load_domains(spec: RunSpec, log: Callable[[str], None] | None = None
                 ) -> tuple[io.Domain, io.Domain]:
    """Reads the AH and BH domains (folders or ``.mat`` files) and checks their sizes.

    Warnings of the readers (duplicate inputs) go to ``log`` as ``warning: ...`` lines.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", io.DuplicateStructureWarning)
        ah = io.read_domain(spec.data_ah, spec.element_a, mat_block=encoding.A_BLOCK + 1)
        bh = io.read_domain(spec.data_bh, spec.element_b, mat_block=encoding.B_BLOCK + 1)
    for w in caught:
        if log is not None and issubclass(w.category, io.DuplicateStructureWarning):
            log(f"warning: {w.message}")
        elif not issubclass(w.category, io.DuplicateStructureWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    check_sizes((ah, bh), spec)
    return ah, bh


def check_sizes(domains: tuple[io.Domain, ...], spec: RunSpec) -> None:
    """Refuses a structure with more atoms in a block than the block's rows.

    The limit is ``spec.n_h`` / ``spec.n_metal`` where set, else :data:`MAX_BLOCK_ROWS`.

    Raises:
      io.StructureFileError: naming the structure, its count and how to allow it.
    """
    for domain in domains:
        for structure, source in zip(domain.structures, domain.sources):
            for symbol, limit, flag in ((io.HYDROGEN, spec.n_h, "n_h"),
                                        (domain.metal, spec.n_metal, "n_metal")):
                count = int(structure.composition[symbol])
                if count > (limit or MAX_BLOCK_ROWS):
                    why = (f"more than --{flag}={limit}" if limit else
                           f"more than the {MAX_BLOCK_ROWS} rows a block is padded to by "
                           "default (every structure is padded to the largest)")
                    raise io.StructureFileError(
                        source, f"{count} {symbol} atoms: {why}; pass --{flag}={count} "
                        "to allow it (memory and time grow with it)")


def check_compositions(spec: RunSpec, layout: encoding.Layout) -> None:
    """Refuses a target composition (composition sampling) with more atoms in a block than
    the layout's rows: the generator has no rows to put them in.

    Raises:
      SettingsError: naming the composition, the block and the flag that allows it.
    """
    if not spec.train.composition_sampling:
        return
    for counts in spec.train.target_compositions:
        for count, rows, symbol, flag in zip(counts, layout.rows, layout.symbols,
                                             ("n_h", "n_metal", "n_metal")):
            if count > rows:
                raise SettingsError(
                    f"--target_compositions: {':'.join(map(str, counts))} asks for {count} "
                    f"{symbol} atoms, the layout has {rows} rows for {symbol}; pass "
                    f"--{flag}={count} to allow it")


def with_clash_radii(pop: PopulationSpec) -> PopulationSpec:
    """Fills in the covalent radii of H, A and B where some member uses the clash term
    (l7 > 0) and none are given."""
    base = pop.base
    if any(m.weights.l7 > 0 for m in pop.members) and not any(base.train.clash_radii):
        radii = covalent_radii(base.element_a, base.element_b)
        base = dataclasses.replace(base, train=dataclasses.replace(base.train,
                                                                   clash_radii=radii))
        pop = dataclasses.replace(pop, base=base)
    return pop


def prepare(spec: RunSpec, log: Callable[[str], None] | None = None) -> Prepared:
    """Reads, checks and encodes the domains, learns the settings ``spec`` leaves to the
    data, and builds the networks."""
    ah, bh = load_domains(spec, log)
    spec = learned_settings(spec, ah, bh)
    layout = encoding.Layout.fit(spec.element_a, spec.element_b, ah.structures + bh.structures,
                                 n_h=spec.n_h, n_a=spec.n_metal, n_b=spec.n_metal)
    check_compositions(spec, layout)
    x, y = (encoding.encode_batch(d.structures, layout, sources=d.sources, dtype=np.float32)
            for d in (ah, bh))
    lattices = np.concatenate([np.asarray(x.lattice), np.asarray(y.lattice)])
    nets = train.Networks.build(layout.rows, train.length_scale(lattices), spec.train)
    guide, guide_sources = None, ()
    if spec.guide:
        structures, guide_sources = io.read_structure_files(spec.guide)
        # the layout stays the training data's: a guide structure that does not fit is
        # refused (naming its file), not allowed to change the networks
        guide = encoding.encode_batch(structures, layout, sources=guide_sources,
                                      dtype=np.float32)
    return Prepared(spec, ah, bh, layout, x, y, nets,
                    train.penalty_shifts(lattices, spec.train), guide, guide_sources)


def learned_settings(spec: RunSpec, ah: io.Domain, bh: io.Domain) -> RunSpec:
    """crystalgan_plus: distance windows, distance and hydrogen-fraction quantiles and the
    smallest plane spacing from the training data.

    Only where the configuration asks for them and leaves them unset, so a resumed run
    (whose config.json holds them) compares equal.
    """
    cfg = spec.train
    changes = {}
    if cfg.window_weight > 0 and not cfg.pair_windows:
        from crystalgan_jax.materials import candidates

        changes["pair_windows"] = candidates.learn_windows(
            ah.structures, bh.structures, spec.element_a, spec.element_b,
            cfg.window_percentiles, cfg.d1, cfg.d2)
    if cfg.distance_weight > 0 and not cfg.distance_quantiles:
        from crystalgan_jax.materials import candidates

        changes["distance_quantiles"] = candidates.learn_distance_quantiles(
            ah.structures, bh.structures, spec.element_a, spec.element_b,
            cfg.distance_levels, cfg.d1, cfg.d2)
    if cfg.composition_weight > 0 and not cfg.h_fraction_quantiles:
        from crystalgan_jax.materials import candidates

        changes["h_fraction_quantiles"] = candidates.learn_h_fraction_quantiles(
            ah.structures, bh.structures, cfg.distance_levels)
    if cfg.composition_sampling and not cfg.target_compositions:
        from crystalgan_jax.materials import candidates

        changes["target_compositions"] = candidates.learn_compositions(
            ah.structures, bh.structures, spec.element_a, spec.element_b)
    if (cfg.rescale_volume or cfg.site_projection != "off") and not cfg.block_volumes:
        from crystalgan_jax.materials import candidates

        changes["block_volumes"] = candidates.learn_block_volumes(
            ah.structures, bh.structures, spec.element_a, spec.element_b)
    if cfg.spacing_weight > 0 and cfg.min_plane_spacing == 0:
        lattices = np.array([s.lattice.matrix for s in ah.structures + bh.structures])
        changes["min_plane_spacing"] = round(float(cells.plane_spacings(lattices).min()), 4)
    if not changes:
        return spec
    return dataclasses.replace(spec, train=dataclasses.replace(cfg, **changes))

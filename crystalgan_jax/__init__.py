"""crystalgan_jax: CrystalGAN in JAX/Flax, generating ternary A-B-H crystal structures from
binary hydrides, and the materials tooling around it.

The tiers, one subpackage each:

* :mod:`crystalgan_jax.core`: the reusable JAX pieces (encoding, geometry, losses, models);
* :mod:`crystalgan_jax.train`: training the method (configuration, state, steps, stages,
  populations stacked and sharded, checkpoints);
* :mod:`crystalgan_jax.pipeline`: a run end to end (spec, preparation, the stage loop,
  outputs, the run folder, command-line flags, tables);
* :mod:`crystalgan_jax.materials`: structure files, datasets, evaluation, candidates,
  substitution, exports, reports;
* :mod:`crystalgan_jax.screening`: relaxation and stability with a universal potential
  (the optional ``screen`` extra).

The names below are the public API, imported on first use (so that ``import
crystalgan_jax`` stays cheap and scripts can set up the process before JAX loads)::

    import crystalgan_jax as cg
    result = cg.run(cg.RunSpec(data_ah="data/PdH", data_bh="data/NiH", element_a="Pd",
                               element_b="Ni", output_dir="runs/pdni"))
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the module that defines it
_EXPORTS = {
    # core
    "Crystal": "crystalgan_jax.core.encoding",
    "Layout": "crystalgan_jax.core.encoding",
    "Weights": "crystalgan_jax.core.losses",
    # train
    "TrainConfig": "crystalgan_jax.train",
    "METHODS": "crystalgan_jax.train",
    "Checkpoints": "crystalgan_jax.train.checkpoints",
    # pipeline
    "RunSpec": "crystalgan_jax.pipeline.spec",
    "PopulationSpec": "crystalgan_jax.pipeline.spec",
    "Member": "crystalgan_jax.pipeline.spec",
    "make_members": "crystalgan_jax.pipeline.spec",
    "run": "crystalgan_jax.pipeline.job",
    "RunResult": "crystalgan_jax.pipeline.job",
    "PopulationResult": "crystalgan_jax.pipeline.job",
    "prepare": "crystalgan_jax.pipeline.prepare",
    "RunError": "crystalgan_jax.pipeline.errors",
    "DivergenceError": "crystalgan_jax.pipeline.errors",
    # materials
    "read_domain": "crystalgan_jax.materials.io",
    "read_structure": "crystalgan_jax.materials.io",
    "StructureFileError": "crystalgan_jax.materials.io",
    "evaluate_structures": "crystalgan_jax.materials.evaluation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # looked up once
        return value
    raise AttributeError(f"module 'crystalgan_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)

"""The losses of one stage as functions of its parameters (L_G1/L_D1, L_G2/L_D2, the GAN's).

Also the input noise of crystalgan_plus (:func:`perturb`), and :func:`stage_losses`,
which gives a stage's pair of losses in the form a train step takes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from crystalgan_jax.core import losses
from crystalgan_jax.core.encoding import Crystal
from crystalgan_jax.train.config import TrainConfig
from crystalgan_jax.train.stages import (Stage, uses_clash, uses_composition,
                                         uses_distances, uses_windows)
from crystalgan_jax.train.state import Networks, apply_discriminator, apply_generator


def concat_crystals(a: Crystal, b: Crystal) -> Crystal:
    """Two batches of crystals ``[Na]``, ``[Nb]`` joined into one ``[Na + Nb]``."""
    return jax.tree_util.tree_map(lambda x, y: jnp.concatenate([x, y]), a, b)


def cross_domain_generator_loss(gparams: dict, dparams: dict, x: Crystal, y: Crystal, *,
                                stage: Stage, nets: Networks, cfg: TrainConfig,
                                shifts: jax.Array, key: jax.Array | None = None
                                ) -> tuple[jax.Array, jax.Array]:
    """L_G1 (stage 1) or L_G2 (stage 3) on minibatches x, y; returns (loss, logged terms).

    With ``cfg.composition_sampling`` the stage-3 geometric terms judge the generated
    structures occupied as generation will occupy them (:func:`sample_compositions`, with
    ``key``): every row a target composition may fill gets its positions trained, not
    only the rows the generator's own occupancies keep.
    """
    gen = nets.generator(stage.name)
    scale = gen.length_scale
    g_xy, g_yx = stage.generators
    d_x, d_y = stage.discriminators
    fake_y, _ = apply_generator(gen, gparams[g_xy], x)
    fake_x, _ = apply_generator(gen, gparams[g_yx], y)
    rec_x, rec_x_logits = apply_generator(gen, gparams[g_yx], fake_y)
    rec_y, rec_y_logits = apply_generator(gen, gparams[g_xy], fake_x)
    gan_fwd = losses.generator_adversarial(apply_discriminator(nets.discriminator, dparams[d_y], fake_y))
    gan_bwd = losses.generator_adversarial(apply_discriminator(nets.discriminator, dparams[d_x], fake_x))
    w = cfg.weights
    rec_xv = losses.cycle(rec_x, rec_x_logits, x, scale, w.occupancy)
    rec_yv = losses.cycle(rec_y, rec_y_logits, y, scale, w.occupancy)
    terms = [gan_fwd, rec_xv, gan_bwd, rec_yv]
    geo1 = geo2 = clash = jnp.zeros((), jnp.float32)
    if stage.geometric:
        # The penalty runs on both generated directions: these are the final x_AHB2, y_BHA2.
        generated = soft = concat_crystals(fake_y, fake_x)
        if cfg.composition_sampling:
            if key is None:
                raise ValueError("composition_sampling needs a key")
            generated = sample_compositions(generated, cfg.target_compositions,
                                            composition_key(key))
        geo1, geo2 = losses.geometric(generated, shifts, cfg.d1, cfg.d2, cfg.classes,
                                      cfg.geometry_form)
        terms += [geo1, geo2]
        if uses_clash(stage, cfg):
            clash = losses.clash(generated, shifts, cfg.clash_radii, cfg.clash_factor)
            terms += [clash]
    total = losses.generator_objective(gan_fwd, rec_xv, gan_bwd, rec_yv, geo1, geo2, w, clash)
    if stage.geometric and cfg.method == "crystalgan_plus":
        total, plus_terms = _plus_terms(total, generated, cfg, shifts, soft)
        terms += plus_terms
    return total, jnp.stack([total] + terms)


def _plus_terms(total: jax.Array, generated: Crystal, cfg: TrainConfig,
                shifts: jax.Array, occupancies: Crystal) -> tuple[jax.Array, list[jax.Array]]:
    """crystalgan_plus's additions to L_G2 and what they log (:func:`~.stages.metric_names`).

    ``occupancies``: the same structures with the generator's own occupancy
    probabilities, which the composition term reads (``generated`` may be occupied by
    composition sampling instead)."""
    terms = []
    if uses_windows(cfg):
        win = losses.windows(generated, shifts, cfg.pair_windows)
        total = total + cfg.window_weight * win
        terms.append(win)
    if uses_distances(cfg):
        dist = losses.distance_matching(generated, shifts, cfg.distance_quantiles)
        total = total + cfg.distance_weight * dist
        terms.append(dist)
    if uses_composition(cfg):
        comp = losses.composition_matching(occupancies, cfg.h_fraction_quantiles)
        total = total + cfg.composition_weight * comp
        terms.append(comp)
    if cfg.spacing_weight > 0:
        cell = losses.cell_spacing(generated, cfg.min_plane_spacing)
        total = total + cfg.spacing_weight * cell
        terms.append(cell)
    terms.append(jax.lax.stop_gradient(losses.outside_image_fraction(generated, shifts)))
    return total, terms


def cross_domain_discriminator_loss(dparams: dict, gparams: dict, x: Crystal, y: Crystal, *,
                                    stage: Stage, nets: Networks) -> jax.Array:
    """L_D1 or L_D2: each discriminator on its domain's data against generated samples."""
    gen = nets.generator(stage.name)
    g_xy, g_yx = stage.generators
    d_x, d_y = stage.discriminators
    fake_y = jax.lax.stop_gradient(apply_generator(gen, gparams[g_xy], x)[0])
    fake_x = jax.lax.stop_gradient(apply_generator(gen, gparams[g_yx], y)[0])
    disc = nets.discriminator
    return losses.discriminator_objective(
        apply_discriminator(disc, dparams[d_x], x), apply_discriminator(disc, dparams[d_x], fake_x),
        apply_discriminator(disc, dparams[d_y], y), apply_discriminator(disc, dparams[d_y], fake_y))


def occupy(crystal: Crystal, counts: jax.Array) -> Crystal:
    """One structure with exactly ``counts[b]`` atoms in block b (H, A, B; ``[3]`` ints).

    In each block the rows whose occupancy probability is highest become atoms (mask 1),
    the rest padding (0); ties go to the earlier row. A count above the block's rows
    occupies every row. Lift over a batch with ``jax.vmap``.
    """
    masks = []
    for b, m in enumerate(crystal.masks):
        rank = jnp.argsort(jnp.argsort(-m, stable=True), stable=True)  # 0 = likeliest row
        masks.append((rank < counts[b]).astype(m.dtype))
    return crystal.replace(masks=tuple(masks))


def sample_compositions(crystals: Crystal, compositions, key: jax.Array) -> Crystal:
    """Each structure of a batch ``[n]`` occupied (:func:`occupy`) with a composition drawn
    uniformly from ``compositions`` ``[C, 3]`` (n_H, n_A, n_B atom counts; a config's
    ``target_compositions``)."""
    if len(compositions) == 0:
        raise ValueError("composition sampling needs target compositions (the runner "
                         "learns them from the training cells)")
    targets = jnp.asarray(compositions, jnp.int32)
    pick = jax.random.randint(key, (crystals.lattice.shape[0],), 0, targets.shape[0])
    return jax.vmap(occupy)(crystals, targets[pick])


def composition_key(key: jax.Array) -> jax.Array:
    """The stream composition sampling draws from, apart from ``key``'s other uses (the
    inputs' noise and pairings stay those of a run without it)."""
    return jax.random.fold_in(key, 0x636F6D70)  # "comp"


def sample_noise(key: jax.Array, count: int, cfg: TrainConfig) -> jax.Array:
    """Gaussian latent vectors ``[count, latent_dim]`` for the GAN baseline."""
    return jax.random.normal(key, (count, cfg.latent_dim), jnp.float32)


def sample_crystals(params: dict, nets: Networks, key: jax.Array, count: int,
                    cfg: TrainConfig) -> Crystal:
    """``count`` crystals from the GAN baseline's noise generator (params["G_noise"])."""
    z = sample_noise(key, count, cfg)
    return nets.noise_generator(params["G_noise"], z)[0]


def gan_generator_loss(gparams: dict, dparams: dict, real: Crystal, key: jax.Array, *,
                       nets: Networks, cfg: TrainConfig) -> tuple[jax.Array, jax.Array]:
    """Plain GAN: -E[log D(G(z))] with z Gaussian; returns (loss, logged terms)."""
    fake = sample_crystals(gparams, nets, key, real.lattice.shape[0], cfg)
    loss = losses.generator_adversarial(
        apply_discriminator(nets.discriminator, dparams["D_all"], fake))
    return loss, jnp.stack([loss])


def gan_discriminator_loss(dparams: dict, gparams: dict, real: Crystal, key: jax.Array, *,
                           nets: Networks, cfg: TrainConfig) -> jax.Array:
    """Plain GAN: -E[log D(y)] - E[log(1 - D(G(z)))] over the union of both domains."""
    fake = jax.lax.stop_gradient(sample_crystals(gparams, nets, key, real.lattice.shape[0], cfg))
    disc = nets.discriminator
    return losses.discriminator(apply_discriminator(disc, dparams["D_all"], real),
                                apply_discriminator(disc, dparams["D_all"], fake))


def stage_losses(stage: Stage, nets: Networks, cfg: TrainConfig, shifts: jax.Array):
    """(generator loss, discriminator loss), both as f(gp, dp, batch, key)."""
    if stage.name == "gan":
        def g_loss(gp, dp, batch, key):
            return gan_generator_loss(gp, dp, batch[0], key, nets=nets, cfg=cfg)

        def d_loss(dp, gp, batch, key):
            return gan_discriminator_loss(dp, gp, batch[0], key, nets=nets, cfg=cfg)
        return g_loss, d_loss

    noisy = stage.geometric and cfg.input_noise > 0  # crystalgan_plus: noise into stage 3

    def g_loss(gp, dp, batch, key):
        batch = perturb_batch(batch, key, cfg.input_noise) if noisy else batch
        return cross_domain_generator_loss(gp, dp, *batch, stage=stage, nets=nets, cfg=cfg,
                                           shifts=shifts, key=key)

    def d_loss(dp, gp, batch, key):
        batch = perturb_batch(batch, key, cfg.input_noise) if noisy else batch
        return cross_domain_discriminator_loss(dp, gp, *batch, stage=stage, nets=nets)
    return g_loss, d_loss


def perturb(crystals: Crystal, key: jax.Array, sigma: float) -> Crystal:
    """Adds N(0, sigma^2) (Angstrom) to every lattice entry and position; masks unchanged.

    The stage-3 generators are deterministic maps; noise on their input is what lets one
    input pair give several distinct outputs (crystalgan_plus).
    """
    keys = jax.random.split(key, 1 + len(crystals.positions))
    lattice = crystals.lattice + sigma * jax.random.normal(keys[0], crystals.lattice.shape)
    positions = tuple(p + sigma * jax.random.normal(k, p.shape)
                      for k, p in zip(keys[1:], crystals.positions))
    return crystals.replace(lattice=lattice, positions=positions)


def perturb_batch(batch: tuple, key: jax.Array, sigma: float) -> tuple:
    """:func:`perturb` on each domain's minibatch with its own key."""
    return tuple(perturb(c, k, sigma) for c, k in zip(batch, jax.random.split(key, len(batch))))

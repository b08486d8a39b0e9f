"""CrystalGAN in JAX/Flax."""

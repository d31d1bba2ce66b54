"""Training of the mugv video VAE: losses, discriminator, data, EMA, parallelism, trainer."""

"""The Twin Network Augmentation (TNA) trainer, built on the fused kernels of ``tna_kernels``."""

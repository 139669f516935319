"""Packaging for tna-kernels: fused spiking-neuron kernels (C++ on CPU, Triton on CUDA)."""
from pathlib import Path

from setuptools import find_packages, setup

TRAIN = ["scikit-learn", "scipy", "matplotlib", "pyyaml", "mlxtend"]
NIR = ["nir>=1.0.6", "h5py"]

setup(
    name="tna-kernels",
    version="0.1.0",
    description="Fused Triton/C++ kernels for spiking neural networks and the Twin Network Augmentation trainer",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=(find_packages(include=["tna_kernels", "tna_kernels.*"]) + ["tna_kernels.csrc"]
              + find_packages("python", include=["tna", "tna.*"])),
    package_dir={"tna_kernels.csrc": "csrc", "tna": "python/tna"},
    package_data={"tna_kernels.csrc": ["*.cpp", "*.h"]},
    install_requires=["torch>=2.4", "triton>=3.0; platform_system == 'Linux'", "numpy", "tqdm", "ninja"],
    extras_require={
        "train": TRAIN,
        "dvs": ["tonic", "aedat"],
        "explain": ["captum"] + TRAIN,
        "nir": NIR,
        "peers": ["spikingjelly", "snntorch", "norse", "nirtorch"] + NIR,
        "dev": ["pytest", "pytest-benchmark", "hypothesis", "aedat", "captum"] + TRAIN + NIR,
    },
    entry_points={"console_scripts": [
        "tna-train=tna.cli:train_main",
        "tna-prune=tna.cli:prune_main",
        "tna-export=tna.cli:export_main",
        "tna-eval=tna.cli:eval_main",
        "tna-explain=tna.cli:explain_main",
    ]},
)

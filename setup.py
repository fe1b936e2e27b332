"""rlvf: C3PO (Stephan et al., ICML 2024) in plain PyTorch.

The top-level kernels/ directory is installed as the subpackage ``rlvf.kernels``: a top-level
package named ``kernels`` would shadow Hugging Face's ``kernels`` library, which transformers probes.
"""
from setuptools import find_packages, setup

setup(
    name="rlvf",
    version="0.1.0",
    description="C3PO: learning from verbal feedback without overgeneralization, in plain PyTorch",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # every subpackage of rlvf/ (tinyworld, ...) plus kernels/ as rlvf.kernels; `make check-wheel`
    # installs the built wheel outside the checkout and runs the tiny-world sampling stage from it
    packages=["rlvf", *(f"rlvf.{p}" for p in find_packages("rlvf")), "rlvf.kernels"],
    package_dir={"rlvf": "rlvf", "rlvf.kernels": "kernels"},
    package_data={
        "rlvf": ["py.typed", "tinyworld/feedbacks/*.yaml", "tinyworld/model/*"],
    },
    install_requires=[
        "torch>=2.4",
        "transformers>=4.46",
        "safetensors>=0.4.3",
        "datasets>=2.20",
        "httpx>=0.27",
        "numpy>=1.24",
        "pyyaml>=6.0",
        "tqdm>=4.66",
        "matplotlib>=3.7",  # the evaluation report's bar chart
    ],
    extras_require={
        # peft is a test oracle only (adapter format), never imported by rlvf itself. triton runs the
        # kernel tests in its CPU interpreter; optional at run time (CUDA only), and only where wheels exist.
        "test": [
            "pytest>=8",
            "peft>=0.13",
            "triton>=3.0; platform_system == 'Linux' and platform_machine == 'x86_64'",
        ],
        "bench": ["peft>=0.13", "trl>=0.12", "liger-kernel>=0.5"],
        "wandb": ["wandb"],
        "tensorboard": ["tensorboard"],
    },
)

from setuptools import find_packages, setup

from cortexd import __version__

setup(
    name="cortexd",
    version=__version__,
    description="Serve cortex.yaml APIs (Python, ONNX, TensorFlow) on one NVIDIA machine",
    packages=find_packages(include=["cortexd", "cortexd.*"]),
    python_requires=">=3.10",
    install_requires=[
        "sanic>=23.12",
        "pyyaml>=6",
        "nvidia-ml-py>=12",
        "psutil>=5.9",
        "numpy>=1.24",
        # onnxruntime-gpu has wheels for x86_64 Linux only; elsewhere (aarch64 edge boxes such as
        # NVIDIA Jetson, macOS) the CPU build keeps `pip install cortexd` working.
        "onnxruntime-gpu>=1.17; platform_machine == 'x86_64' and sys_platform == 'linux'",
        "onnxruntime>=1.17; platform_machine != 'x86_64' or sys_platform != 'linux'",
        "packaging>=21",  # requirements_check reads requirements.txt lines with it
        "sdnotify>=0.3",
        "prometheus-client>=0.19",
        "ujson>=5",  # the hot path parses JSON with it (falls back to json); sanic needs it anyway
        # the V2 gRPC service (serve --grpc-port); cortexd/v2/pb/ is generated code, and it
        # loads only on runtimes at least as new as its generator (scripts/gen_v2_grpc.py)
        "grpcio>=1.81.1",
        "protobuf>=6.33.5,<8",
    ],
    extras_require={
        # TensorFlow on the CPU. Not together with [gpu], which brings TensorFlow with CUDA:
        # both distributions install the same `tensorflow` package and would overwrite each other.
        "tensorflow": ["tensorflow-cpu>=2.15; platform_machine == 'x86_64'"],
        # Every framework on the GPU from one install, from pip wheels (no system CUDA toolkit):
        # onnxruntime-gpu and TensorFlow with the CUDA 12 and cuDNN 9 libraries as nvidia-*-cu12
        # wheels that both load. TensorFlow (2.18 to 2.21) is built for CUDA 12 only, and
        # onnxruntime-gpu moved to CUDA 13 in 1.27, so onnxruntime-gpu stays below 1.27 here; two
        # CUDA majors in one environment would mean two cuDNNs overwriting each other. TensorFlow
        # from 2.18 on, for cuDNN 9 (2.17 wanted cuDNN 8). Needs an NVIDIA driver for CUDA 12
        # (>= 525). Linux x86_64 only: neither ships CUDA wheels elsewhere.
        "gpu": [
            "onnxruntime-gpu[cuda,cudnn]>=1.20,<1.27; platform_machine == 'x86_64' and sys_platform == 'linux'",
            "tensorflow[and-cuda]>=2.18; platform_machine == 'x86_64' and sys_platform == 'linux'",
        ],
        # PyTorch for Python predictors (examples/pytorch-iris); the index's default build for the
        # platform (CUDA on x86_64 Linux from PyPI). Kept out of install_requires: it is large.
        "torch": ["torch>=2.1"],
        "s3": ["boto3>=1.28"],
        "test": ["pytest>=7", "pytest-timeout>=2", "onnx>=1.15", "scikit-learn>=1.3", "moto[server]>=5", "boto3>=1.28",
                 "tritonclient[http,grpc]>=2.40"],  # the V2 tests speak to cortexd with Triton's own client
    },
    entry_points={"console_scripts": ["cortexd=cortexd.cli:main"]},
)

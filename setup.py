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
        "onnxruntime-gpu>=1.17",
        "sdnotify>=0.3",
        "prometheus-client>=0.19",
        "ujson>=5",  # the hot path parses JSON with it (falls back to json); sanic needs it anyway
        # the V2 gRPC service (serve --grpc-port); cortexd/v2/pb/ is generated code, and it
        # loads only on runtimes at least as new as its generator (scripts/gen_v2_grpc.py)
        "grpcio>=1.81.1",
        "protobuf>=6.33.5,<8",
    ],
    extras_require={
        "tensorflow": ["tensorflow-cpu>=2.15; platform_machine == 'x86_64'"],
        "s3": ["boto3>=1.28"],
        "test": ["pytest>=7", "pytest-timeout>=2", "onnx>=1.15", "scikit-learn>=1.3", "moto[server]>=5", "boto3>=1.28",
                 "tritonclient[http,grpc]>=2.40"],  # the V2 tests speak to cortexd with Triton's own client
    },
    entry_points={"console_scripts": ["cortexd=cortexd.cli:main"]},
)

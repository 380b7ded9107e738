"""What to tell a user whose predictor imports a package that is not installed.

Cortex's predictor images came with a set of packages (scikit-learn, pandas, torch, ...), so
projects written for Cortex often import them without listing them in requirements.txt.
cortexd installs only what the project's requirements.txt names; the error then names the
package to add (by its pip name: `import sklearn` needs `scikit-learn`).
"""
from __future__ import annotations

# import name -> pip name, for the packages Cortex's images shipped (v0.11-v0.35).
CORTEX_IMAGE_PACKAGES: dict[str, str] = {
    "boto3": "boto3",
    "botocore": "boto3",
    "cloudpickle": "cloudpickle",
    "cv2": "opencv-python",
    "Cython": "Cython",
    "dill": "dill",
    "fastapi": "fastapi",
    "google": "google-cloud-storage",
    "joblib": "joblib",
    "keras": "Keras",
    "msgpack": "msgpack",
    "nltk": "nltk",
    "np_utils": "np-utils",
    "numpy": "numpy",
    "onnxruntime": "onnxruntime",
    "pandas": "pandas",
    "PIL": "Pillow",
    "requests": "requests",
    "skimage": "scikit-image",
    "sklearn": "scikit-learn",
    "scipy": "scipy",
    "six": "six",
    "starlette": "starlette",
    "statsmodels": "statsmodels",
    "sympy": "sympy",
    "tensor2tensor": "tensor2tensor",
    "tensorflow": "tensorflow",
    "tensorflow_hub": "tensorflow-hub",
    "tensorflow_serving": "tensorflow-serving-api",
    "torch": "torch",
    "torchvision": "torchvision",
    "xgboost": "xgboost",
    "yaml": "pyyaml",
}


def missing_package_hint(exc: BaseException) -> str | None:
    """For an import of a module that is not installed: which package to add and where.

    None for any other exception (including an ImportError raised inside an installed
    package, which a requirements line would not fix)."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    top = exc.name.split(".", 1)[0]
    pip_name = CORTEX_IMAGE_PACKAGES.get(top)
    if pip_name is not None:
        return (f"the package {pip_name} (import {top}) is not installed: Cortex's images included it, "
                f"cortexd installs only what the project lists; add `{pip_name}` to requirements.txt "
                "next to cortex.yaml")
    return (f"the module {top} is not installed: add the package that provides it to requirements.txt "
            "next to cortex.yaml")

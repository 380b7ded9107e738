# The package's metadata and settings live in pyproject.toml. This shim stays for the tools that
# still look for setup.py: `pip install -e .` with pips older than 21.3 (no PEP 660 editable
# installs) and packaging/build-deb.sh, which builds the .deb's wheel from a copy of setup.py,
# pyproject.toml and cortexd/.
from setuptools import setup

setup()

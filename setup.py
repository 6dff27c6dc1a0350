"""Bolt: lightweight sandboxes on one Debian/Ubuntu host, behind an HTTPS JSON API and TCP shells."""

import re

from setuptools import find_packages, setup

with open("bolt/__init__.py") as f:
    version = re.search(r'__version__ = "([^"]+)"', f.read()).group(1)

setup(
    name="bolt-sandbox",
    version=version,
    description=__doc__,
    long_description=open("README.rst").read(),
    long_description_content_type="text/x-rst",
    license="MIT",
    python_requires=">=3.11",
    # twisted.plugins is a namespace without __init__.py: listing it installs the twistd dropin.
    packages=find_packages(exclude=["tests", "tests.*"]) + ["twisted.plugins"],
    package_data={"twisted.plugins": ["bolt_plugin.py"]},
    install_requires=[
        "twisted[tls]>=23.10",
        "klein>=23.5",
        "pyopenssl>=23.2",
        "service-identity>=23.1",
        "psutil>=5.9",
        "netifaces>=0.11",
    ],
    extras_require={"test": ["treq>=23.11", "hypothesis>=6.90"]},
    classifiers=[
        "Framework :: Twisted",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3.11",
    ],
)

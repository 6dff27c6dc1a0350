"""Bolt: lightweight sandboxes on one Debian/Ubuntu host, behind an HTTPS JSON API and TCP shells."""

import os
import re
import shlex

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
HELPER_SOURCE = os.path.join("bolt", "host", "native", "bolt-sandbox.c")
HELPER_BINARY = os.path.join("bolt", "host", "native", "bolt-sandbox")


class build_py_with_helper(build_py):
    """build_py, then compile the native sandbox helper into the built package."""

    def run(self):
        super().run()
        if self.dry_run:
            return
        target = os.path.join(self.build_lib, HELPER_BINARY)
        self.mkpath(os.path.dirname(target))
        compiler = shlex.split(os.environ.get("CC", "cc"))
        self.spawn(compiler + ["-O2", "-Wall", "-Wextra", "-Werror", "-o", target,
                               os.path.join(HERE, HELPER_SOURCE), "-lseccomp"])

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + [os.path.join(self.build_lib, HELPER_BINARY)]


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
    package_data={"twisted.plugins": ["bolt_plugin.py"], "bolt.host.native": ["bolt-sandbox.c"]},
    cmdclass={"build_py": build_py_with_helper},
    install_requires=[
        "twisted[tls]>=23.10",
        "klein>=23.5",
        "pyopenssl>=23.2",
        "service-identity>=23.1",
        "psutil>=5.9",
        "netifaces>=0.11",
    ],
    extras_require={"test": ["treq>=23.11", "hypothesis>=6.90", "schemathesis>=4.0"]},
    entry_points={"console_scripts": ["bolt = bolt.cli.main:main"]},
    classifiers=[
        "Framework :: Twisted",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3.11",
    ],
)

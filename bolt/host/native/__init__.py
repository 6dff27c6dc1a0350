"""The native sandbox helper, ``bolt-sandbox``, built from ``bolt-sandbox.c`` in this directory.

``pip install .`` compiles it into the installed package (see ``setup.py``).  For development it can
be compiled in place, next to this file::

    cc -O2 -Wall -Wextra -Werror -o bolt/host/native/bolt-sandbox bolt/host/native/bolt-sandbox.c -lseccomp

(libseccomp: the Debian package ``libseccomp-dev`` to build, ``libseccomp2`` to run.)

:func:`binary_path` looks next to this module first, then in the installed package on ``sys.path``
(so that tests run from a source checkout, which import ``bolt`` from the checkout, use the installed
helper unless one was compiled in place).  After changing the C source, reinstall or recompile.
"""

from __future__ import annotations

import os
import sys

BINARY_NAME = "bolt-sandbox"
SOURCE_NAME = "bolt-sandbox.c"
_RELATIVE = os.path.join("bolt", "host", "native", BINARY_NAME)


class HelperMissing(FileNotFoundError):
    """The ``bolt-sandbox`` binary was not built or is not executable."""


def _usable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def binary_path() -> str:
    """The absolute path of the built ``bolt-sandbox`` helper.

    Raises :class:`HelperMissing` with instructions when there is none.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    local = os.path.join(here, BINARY_NAME)
    if _usable(local):
        return local
    for entry in sys.path:
        if not entry or not os.path.isabs(entry):
            continue  # the current directory is the checkout itself, checked above
        candidate = os.path.join(entry, _RELATIVE)
        if _usable(candidate):
            return candidate
    source = os.path.join(here, SOURCE_NAME)
    raise HelperMissing(
        f"the sandbox helper {local} is missing or not executable (and no installed bolt on sys.path "
        f"has one): reinstall bolt (pip install .) or compile it with: "
        f"cc -O2 -Wall -Wextra -Werror -o {local} {source} -lseccomp"
    )

"""The errors a load reports to the operator, in a module of their own because every
stage raises them: the command turns a ``LoadError`` into a message naming the
problem and a non-zero exit, and ``ProduceError`` says that producing stopped part-way
with the checkpoint at the last acknowledged line.
"""

from __future__ import annotations


class LoadError(Exception):
    """A problem the operator must fix (bad argument, changed file, broker failure)."""


class ProduceError(LoadError):
    """Producing failed part-way; the checkpoint holds what was acknowledged."""

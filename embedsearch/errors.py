"""The errors embedsearch raises, by class (public path; they live in the shared contract)."""

from embedsearch.contract.errors import *  # noqa: F403
from embedsearch.contract.errors import __all__  # noqa: F401

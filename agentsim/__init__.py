"""agentsim: a discrete-event simulator of agent inference on heterogeneous GPU clusters."""
from importlib.metadata import PackageNotFoundError, version

from .catalog import Catalog, load_catalog
from .deployment import Deployment
from .errors import InputError
from .servicetime import StepCoeffs, Stretch, step_cost, step_times

try:
    __version__ = version("agentsim")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+source"

__all__ = ["Catalog", "Deployment", "InputError", "StepCoeffs", "Stretch", "load_catalog", "step_cost", "step_times",
           "__version__"]

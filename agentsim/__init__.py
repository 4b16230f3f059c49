"""agentsim: a discrete-event simulator of agent inference on heterogeneous GPU clusters.

The entry points below are imported on first use (``agentsim.simulate`` loads the simulator,
``agentsim.Catalog`` the catalog), so ``import agentsim`` and ``agentsim --help`` stay cheap.
"""
import importlib

# exported name -> the submodule that defines it
_LAZY = {
    "Catalog": "catalog", "load_catalog": "catalog",
    "Deployment": "deployment",
    "InputError": "errors",
    "StepCoeffs": "servicetime", "Stretch": "servicetime", "step_cost": "servicetime", "step_times": "servicetime",
    "simulate": "api",
    "Scenario": "scenario",
    "Result": "result",
    "estimate": "estimate",
}

__all__ = ["Catalog", "Deployment", "InputError", "Result", "Scenario", "StepCoeffs", "Stretch", "estimate",
           "load_catalog", "simulate", "step_cost", "step_times", "__version__"]


def __getattr__(name: str):
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version  # local: importlib.metadata costs ~10 ms
        try:
            value = version("agentsim")
        except PackageNotFoundError:  # running from a source tree without installing
            value = "0.0.0+source"
    elif name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        # ``agentsim.estimate`` is also the submodule's name: the module is callable (see estimate.py),
        # so it is the same object however it was first imported.
        value = module if name == "estimate" else getattr(module, name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

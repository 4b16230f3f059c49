"""agentsim: a discrete-event simulator of agent inference on heterogeneous GPU clusters.

The entry points below are imported on first use (``agentsim.simulate`` loads the simulator,
``agentsim.Catalog`` the catalog), so ``import agentsim`` and ``agentsim --help`` stay cheap.
"""
import importlib
import importlib.abc
import importlib.util
import sys
import warnings

# exported name -> the submodule that defines it
_LAZY = {
    "Catalog": "model.catalog", "load_catalog": "model.catalog",
    "Deployment": "model.deployment",
    "InputError": "util.errors",
    "StepCoeffs": "model.servicetime", "Stretch": "model.servicetime", "step_cost": "model.servicetime",
    "step_times": "model.servicetime",
    "simulate": "run.api",
    "Scenario": "run.scenario",
    "Result": "results.result",
    "estimate": "studies.estimate",
    "capacity_utilisation": "studies.utilisation",
}

__all__ = ["Catalog", "Deployment", "InputError", "Result", "Scenario", "StepCoeffs", "Stretch", "capacity_utilisation",
           "estimate",
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
        # ``agentsim.estimate`` is also the old submodule's name: the module is callable (see estimate.py),
        # so it is the same object however it was first imported.
        value = module if name == "estimate" else getattr(module, name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


# -- the flat module paths of 0.x, kept for one release (see CHANGELOG.md) ----------------------------
#: old top-level module -> its home in the layer folders
MOVED = {
    "api": "run.api",
    "atomic": "util.atomic",
    "block_cache": "serving.block_cache",
    "build": "run.build",
    "calibrate": "studies.calibrate",
    "calibrate_load": "studies.calibrate_load",
    "capacity": "studies.capacity",
    "catalog": "model.catalog",
    "client": "workload.client",
    "clock": "provider.clock",
    "cluster": "serving.cluster",
    "deployment": "model.deployment",
    "distributions": "workload.distributions",
    "diurnal": "workload.diurnal",
    "engine": "serving.engine",
    "engine_reference": "serving.engine_reference",
    "errors": "util.errors",
    "estimate": "studies.estimate",
    "estimators": "studies.estimators",
    "executor": "studies.executor",
    "experiments": "studies.experiments",
    "gateway": "provider.gateway",
    "grid": "studies.grid",
    "hardware": "model.hardware",
    "jsonout": "util.jsonout",
    "limits": "provider.limits",
    "llm": "model.llm",
    "metrics": "results.metrics",
    "opfit": "model.opfit",
    "opgrid": "model.opgrid",
    "opmodel": "model.opmodel",
    "optables": "model.optables",
    "outdir": "util.outdir",
    "plots": "results.plots",
    "policies": "provider.policies",
    "populations": "workload.populations",
    "prefix_cache": "serving.prefix_cache",
    "presets": "model.presets",
    "profiles": "workload.profiles",
    "replay": "run.replay",
    "report": "results.report",
    "request": "serving.request",
    "result": "results.result",
    "retry": "workload.retry",
    "scenario": "run.scenario",
    "scheduling": "serving.scheduling",
    "servicetime": "model.servicetime",
    "sessions": "workload.sessions",
    "sim": "run.sim",
    "slicing": "studies.slicing",
    "sources": "workload.sources",
    "stats": "util.stats",
    "sweep": "studies.sweep",
    "theory": "studies.theory",
    "trace_readers": "workload.trace_readers",
    "traces": "run.traces",
    "utilisation": "studies.utilisation",
    "validate": "studies.validate",
    "validation_systems": "studies.validation_systems",
    "workload": "run.checks",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import agentsim.catalog`` (a 0.x path) gives ``agentsim.model.catalog`` itself, with a
    DeprecationWarning naming the new path; the module is not loaded twice."""

    def find_spec(self, fullname, path=None, target=None):
        parts = fullname.split(".")
        if len(parts) < 2 or parts[0] != __name__ or parts[1] not in MOVED:
            return None
        new = ".".join([__name__, MOVED[parts[1]], *parts[2:]])
        return importlib.util.spec_from_loader(fullname, self, origin=new)

    def create_module(self, spec):
        warnings.warn(f"{spec.name} has moved to {spec.origin}; the old path goes in the next release",
                      DeprecationWarning, stacklevel=2)
        module = importlib.import_module(spec.origin)
        self._specs = getattr(self, "_specs", {})
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module) -> None:
        # the import system stamped the alias spec on the real module: give it its own back
        module.__spec__ = self._specs.pop(module.__spec__.name, module.__spec__)


sys.meta_path.append(_MovedModules())

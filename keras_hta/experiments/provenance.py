"""What produced a results file: the command, package versions, Python and the CPUs."""

import os
import platform
import sys

PACKAGES = ("keras", "tensorflow", "tensorflow-cpu", "jax", "jaxlib", "torch", "numpy", "scipy", "mnist1d",
            "keras-tuner", "keras-hub")


def package_versions(packages=PACKAGES):
    """`{distribution: version}` for those of `packages` that are installed."""
    import importlib.metadata as md

    found = {}
    for name in packages:
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return found


def cpu_threads():
    """The CPUs this process may run on (its affinity where the OS tells it), and the machine's count."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {"usable": usable, "machine": os.cpu_count()}


def record(command=None):
    """The provenance block a results file carries: command, versions, Python, backend, threads, load."""
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        load = None
    return {
        "command": command or " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
        "versions": package_versions(),
        "python": platform.python_version(),
        "backend": os.environ.get("KERAS_BACKEND") or _configured_backend(),
        "cpus": cpu_threads(),
        "load_average": load,
    }


def _configured_backend():
    """The backend Keras uses, read without importing Keras where it has not been imported."""
    keras = sys.modules.get("keras")
    return keras.backend.backend() if keras is not None else None

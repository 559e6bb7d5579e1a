"""What produced a results file: the command, the code's commit, package versions, Python, the backend, the CPU
(its model and vector instruction sets, which change a run's numbers: kernels differ by instruction set) and the
thread settings, and the load."""

import functools
import os
import platform
import subprocess
import sys

# TensorFlow's thread and kernel settings, which `keras-hta compare --threads` fixes (recorded as they were).
THREAD_ENV = ("TF_ENABLE_ONEDNN_OPTS", "TF_DETERMINISTIC_OPS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")
# The vector instruction sets recorded when the CPU offers them (x86-64, then Arm), as /proc/cpuinfo names them.
VECTOR_SETS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
               "avx512_fp16", "amx_tile", "amx_bf16", "asimd", "sve", "sve2")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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


def cpu():
    """`{"model": ..., "vector": [...]}`: the CPU's model name and the vector instruction sets of `VECTOR_SETS` it offers.

    Read from /proc/cpuinfo on Linux; elsewhere the platform's processor name and no sets.
    """
    model, flags = None, []
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key in ("model name", "Model") and value and model is None:
            model = value
        elif key in ("flags", "Features") and not flags:
            flags = value.split()
    return {"model": model or platform.processor() or platform.machine(),
            "vector": [name for name in VECTOR_SETS if name in flags]}


# What can change a run's numbers: the library and harness, the benchmark scripts, the examples, the package's
# settings. Documentation, tests and results files do not.
CODE = ("keras_hta", "benchmarks/*.py", "examples", "setup.py", "pyproject.toml")


@functools.lru_cache(maxsize=None)
def commit():
    """`{"commit": sha, "dirty": bool}` of the code this process runs, or None outside a git checkout.

    Read once per process, when first asked: the code a process imported is
    the code at its start, however long it runs. `dirty`: that code (`CODE`)
    differs from the commit.
    """
    def git(*args):
        return subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True, timeout=60)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode:
            return None
        status = git("status", "--porcelain", "--untracked-files=no", "--", *CODE)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def script_elsewhere(argv0=None):
    """The path of the script this process runs when it is one of this repository's scripts (`benchmarks/`,
    `examples/`) taken from another checkout, else None.

    `commit()` describes the tree the package was imported from; a script of
    another checkout (a worktree running `benchmarks/study.py` with this tree's
    package installed in development mode) runs code that commit does not
    name, so the record calls that code dirty and names the script.
    """
    path = sys.argv[0] if argv0 is None and sys.argv else argv0
    if not path or not path.endswith(".py") or not os.path.isfile(path):
        return None
    real = os.path.realpath(path)
    folder, name = os.path.split(os.path.dirname(real))[1], os.path.basename(real)
    ours = folder in ("benchmarks", "examples") and os.path.isfile(os.path.join(ROOT, folder, name))
    return real if ours and not real.startswith(os.path.realpath(ROOT) + os.sep) else None


def thread_settings():
    """The thread and determinism settings a run had: the variables of `THREAD_ENV`, and TensorFlow's pools if started."""
    settings = {name: os.environ.get(name) for name in THREAD_ENV}
    tf = sys.modules.get("tensorflow")
    if tf is not None:
        settings["intra_op"] = tf.config.threading.get_intra_op_parallelism_threads()
        settings["inter_op"] = tf.config.threading.get_inter_op_parallelism_threads()
    return settings


def record(command=None):
    """The provenance block a results file carries: command, commit, versions, Python, backend, CPU, threads, load."""
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        load = None
    code, elsewhere = commit(), script_elsewhere()
    if code is not None and elsewhere:
        code = {**code, "dirty": True, "script": elsewhere}
    return {
        "command": command or " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
        "code": code,
        "versions": package_versions(),
        "python": platform.python_version(),
        "backend": os.environ.get("KERAS_BACKEND") or _configured_backend(),
        "cpu": cpu(),
        "cpus": cpu_threads(),
        "threads": thread_settings(),
        "load_average": load,
    }


def _configured_backend():
    """The backend Keras uses, read without importing Keras where it has not been imported."""
    keras = sys.modules.get("keras")
    return keras.backend.backend() if keras is not None else None

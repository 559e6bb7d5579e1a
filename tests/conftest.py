"""Test setup under any Keras backend: the backend pinned, two logical CPU devices for
the distribution tests, quiet TF, a gradient helper, and markers.

The tests run on the backend `KERAS_BACKEND` names, else on TensorFlow (the
backend of the README's test extras): a `~/.keras/keras.json` does not choose
it. Every subprocess a test starts runs on the same backend unless the test
names another: it inherits the pinned variable (`run_bounded` also sets it
where a test passes an environment of its own without it).

`@pytest.mark.tensorflow_only` marks what TensorFlow is the point of
(tf.distribute, SavedModel, the tf.data pipeline); those tests are skipped on
the other backends. `@pytest.mark.harness` marks the harness's and the
package's tests, which run on TensorFlow (skipped on the others; CI runs them
in its TensorFlow passes); the library's tests run under every backend
(`.ci/run`). `@pytest.mark.extras` marks tests that need a package the
README's test extras do not install (JAX or PyTorch beside TensorFlow,
keras-hub): they skip, saying so, where it is missing. `@pytest.mark.slow`
marks the tests the README's test command leaves out (pyproject.toml's
`-m "not slow"`); `-m slow` runs them, and CI does.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")  # the test processes' backend, pinned (see above)
if os.environ.get("KERAS_BACKEND") == "jax" and "host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    # two host devices for keras.distribution tests (a test's subprocess may set its own count)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import keras  # noqa: E402

BACKEND = keras.backend.backend()

if BACKEND == "tensorflow":
    import tensorflow as tf

    _cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(_cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    except RuntimeError:  # already initialised by another import
        pass
elif BACKEND == "torch":
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))  # erratic timings and slow tests otherwise


def pytest_configure(config):
    config.addinivalue_line("markers", "tensorflow_only: needs the TensorFlow backend (tf.distribute, SavedModel)")
    config.addinivalue_line("markers", "harness: the experiment harness and package checks, run on TensorFlow "
                                       "(CI's TensorFlow passes); `-m 'not harness'` runs the library's tests")
    config.addinivalue_line("markers", "extras: needs a package the README's test extras do not install (JAX or "
                                       "PyTorch beside TensorFlow, keras-hub); skips where it is missing")
    config.addinivalue_line("markers", "slow: left out by the README's test command (-m 'not slow' in "
                                       "pyproject.toml); CI runs them (-m slow)")


def pytest_collection_modifyitems(config, items):
    if BACKEND == "tensorflow":
        return
    skip = pytest.mark.skip(reason=f"TensorFlow only; KERAS_BACKEND={BACKEND}")
    harness = pytest.mark.skip(reason=f"the harness's tests run on TensorFlow (CI runs them there); "
                                      f"KERAS_BACKEND={BACKEND}")
    for item in items:
        if "tensorflow_only" in item.keywords:
            item.add_marker(skip)
        elif "harness" in item.keywords:
            item.add_marker(harness)


def needs(module, why=""):
    """Skips the calling test, with the reason, where `module` is not installed (the README's extras lack it)."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        pytest.skip(f"needs {module}, which the README's test extras do not install{why}; CI's later pass has it")


@pytest.fixture(autouse=True, scope="session")
def _keras_hta_cache(tmp_path_factory):
    """keras_hta.experiments.data's cache: never the user's ~/.keras during tests.

    A folder of pytest's own temporary tree, so it goes with the tree: removed
    after a passing run (tmp_path_retention_policy in pyproject.toml)."""
    if "KERAS_HTA_CACHE" in os.environ:
        yield
        return
    os.environ["KERAS_HTA_CACHE"] = str(tmp_path_factory.mktemp("keras_hta_cache"))
    yield
    del os.environ["KERAS_HTA_CACHE"]


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)
    yield
    keras.backend.clear_session()


def gradients(fn, variables):
    """The gradients of the scalar `fn()` with respect to Keras `variables`, on any backend."""
    if BACKEND == "tensorflow":
        with tf.GradientTape() as tape:
            value = fn()
        return tape.gradient(value, [v.value for v in variables])
    if BACKEND == "jax":
        import jax

        def of(values):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return fn()

        return jax.grad(of)([v.value for v in variables])
    value = fn()
    return torch.autograd.grad(value, [v.value for v in variables])


def dense_network(n_in=4, n_out=3, hidden=None, l2=0.0, batch_norm=False, seed=0):
    """A tiny Functional network with deterministic initial weights."""
    init = keras.initializers.GlorotUniform(seed=seed)
    reg = keras.regularizers.L2(l2) if l2 else None
    inputs = keras.Input((n_in,))
    h = inputs
    if hidden:
        h = keras.layers.Dense(hidden, kernel_initializer=init, kernel_regularizer=reg)(h)
        if batch_norm:
            h = keras.layers.BatchNormalization()(h)
        h = keras.layers.Activation("tanh")(h)
    outputs = keras.layers.Dense(
        n_out, kernel_initializer=init, bias_initializer=keras.initializers.RandomNormal(seed=seed + 1),
        kernel_regularizer=reg,
    )(h)
    return keras.Model(inputs, outputs)


def regression_data(n=16, n_in=4, n_out=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, n_in)).astype("float32")
    y = rng.normal(size=(n, n_out)).astype("float32")
    return x, y


@pytest.fixture(scope="session")
def mirrored():
    """One MirroredStrategy over the two logical CPUs for the whole session:
    two strategy instances in one process issue collective ops whose instance
    keys collide ("Shape mismatch in the collective instance")."""
    if BACKEND != "tensorflow" or len(tf.config.list_logical_devices("CPU")) < 2:
        pytest.skip("needs TensorFlow and two logical CPU devices")
    return tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])


def twin_views(model):
    """Every twin of a HomotopyModel as a view, θ first: `[model.twin(0), model.twin(1), ...]`."""
    return [model.twin(k) for k in range(model.num_groups)]


# No test depends on the machine's speed: a subprocess gets this bound only to catch a hang.
HANG_S = 3600


def run_bounded(args, **kwargs):
    """`subprocess.run(args, **kwargs)` bounded by HANG_S (any `timeout` given is replaced): fails saying it hung.

    The subprocess runs on the tests' backend unless `env` names another.
    """
    import subprocess

    kwargs.pop("timeout", None)
    kwargs["env"] = dict(os.environ if kwargs.get("env") is None else kwargs["env"])
    kwargs["env"].setdefault("KERAS_BACKEND", BACKEND)
    try:
        return subprocess.run(args, timeout=HANG_S, **kwargs)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung: {' '.join(map(str, args))[:200]} gave no answer in {HANG_S} s "
                    "(a bound for hangs only, not a speed test)")


def communicate_bounded(proc, bound=HANG_S):
    """`proc.communicate()` bounded by `bound` seconds; kills the process and fails saying it hung."""
    import subprocess

    try:
        return proc.communicate(timeout=bound)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"hung: process {proc.args!r:.200} gave no answer in {bound} s (a bound for hangs only)")


def benchmark_script(name):
    """The module of `benchmarks/<name>.py`, imported as when it runs: with the folder (and `common`) on the path."""
    import sys

    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
    sys.path.insert(0, folder)
    try:
        return __import__(name)
    finally:
        sys.path.remove(folder)


def not_installed(folder, names):
    """A folder to put first on a subprocess's PYTHONPATH so that `import name` fails for each of `names`, as where the
    package is not installed (an ImportError, as Keras' optional imports expect), whatever this environment has."""
    for name in names:
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "__init__.py").write_text(
            f'raise ImportError("No module named {name!r} (not installed here: tests/conftest.py)")\n')
    return str(folder)

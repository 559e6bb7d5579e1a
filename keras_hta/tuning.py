"""keras-tuner search over HTA's L schedule, split, anchor and twin count."""

try:
    import keras_tuner
except ImportError as error:  # an extra, not a core dependency
    raise ImportError(
        "keras_hta.tuning needs keras-tuner: pip install \"keras-hta[tuner]\" (or keras-tuner)."
    ) from error

import keras_hta
from keras_hta import schedules as schedules_lib

KINDS = ("linear", "geometric")


def _space(hp, name, value, make):
    """A fixed value, a list of choices, or a (low, high) range.

    `make` builds a range (`hp.Int`, a log `hp.Float`); for categorical
    hyperparameters it is `None` and a tuple is a list of choices too.
    """
    if isinstance(value, tuple) and make is not None:
        return make(name, *value)
    if isinstance(value, (list, tuple)):
        return hp.Choice(name, list(value))
    return hp.Fixed(name, value)


class HomotopyHyperModel(keras_tuner.HyperModel):
    """A keras-tuner `HyperModel` that trains its model with HTA.

    `build(hp)` calls your `build_fn(hp)`, wraps the returned (compiled)
    Keras model in a `HomotopyModel` with a sampled split, anchor and number
    of twins, and compiles it with the same optimizer, loss and metrics.
    `fit(hp, model, ...)` samples the L schedule and appends a
    `HomotopyScheduler` to the tuner's callbacks (never replacing them).
    Every hyperparameter is declared in `build`, so trial 0 samples them
    too.

    Each search-space argument takes a fixed value, a list of choices, or a
    `(low, high)` range (log-sampled for L).

    Hyperparameters: `homotopy_split`, `homotopy_anchor`,
    `homotopy_num_groups`, `homotopy_l_start`, `homotopy_l_stop`,
    `homotopy_schedule` (linear or geometric), `homotopy_values` (how many
    values of L) and `homotopy_epochs_per_value`.

    Args:
        build_fn: Callable `hp -> keras.Model`, compiled (its compile
            settings are reused) or not (then pass `compile_kwargs`).
        l_start: Float, list or `(low, high)`: the first L.
        l_stop: Float, list or `(low, high)`: the last L.
        schedule: `"linear"`, `"geometric"` or a list of both.
        values: Integer, list or `(low, high)`: how many values of L.
        epochs_per_value: Integer, list or `(low, high)`.
        split: String or list of `"channels"`, `"layers"`, `"random"`.
        anchor: String or list of `"zeros"`, `"init"`.
        num_groups: Integer or list.
        norm: `"squared"` or `"l2"` (not tuned).
        penalty_update: `"proximal"` (default) or `"gradient"` (needed by
            `norm="l2"`); not tuned.
        compile_kwargs: Dict for `compile()` when `build_fn` returns an
            uncompiled model.
        name, tunable: As for `keras_tuner.HyperModel`.

    Example:

    ```python
    def build(hp):
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(hp.Int("units", 8, 32)),
                                  keras.layers.Dense(2)])
        model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        return model

    tuner = keras_tuner.RandomSearch(keras_hta.tuning.HomotopyHyperModel(build),
                                     objective="val_accuracy", max_trials=4)
    tuner.search(x, y, validation_split=0.2, epochs=4)
    best_schedule = keras_hta.tuning.HomotopyHyperModel.schedule_from_hp(
        tuner.get_best_hyperparameters()[0])
    ```
    """

    def __init__(self, build_fn, l_start=(1e-3, 1.0), l_stop=(1e-3, 1.0), schedule=("linear", "geometric"),
                 values=(2, 6), epochs_per_value=(1, 4), split="channels", anchor=["zeros", "init"],
                 num_groups=2, norm="squared", penalty_update="proximal", compile_kwargs=None, name=None,
                 tunable=True):
        super().__init__(name=name, tunable=tunable)
        if not callable(build_fn):
            raise TypeError(f"Argument `build_fn` must be callable. Received: build_fn={build_fn!r}")
        for kind in ([schedule] if isinstance(schedule, str) else list(schedule)):
            if kind not in KINDS:
                raise ValueError(f"Argument `schedule` must hold {KINDS}. Received: schedule={schedule!r}")
        self.build_fn = build_fn
        self.space = {
            "l_start": l_start, "l_stop": l_stop, "values": values, "epochs_per_value": epochs_per_value,
            "schedule": schedule,
            "split": split, "anchor": anchor, "num_groups": num_groups,
        }
        self.norm = norm
        self.penalty_update = penalty_update
        self.compile_kwargs = compile_kwargs

    def declare(self, hp):
        """Declares (or reads) every HTA hyperparameter in `hp`; returns them."""
        s = self.space
        log_float = lambda n, lo, hi: hp.Float(n, lo, hi, sampling="log")  # noqa: E731
        return {
            "split": _space(hp, "homotopy_split", s["split"], None),
            "anchor": _space(hp, "homotopy_anchor", s["anchor"], None),
            "num_groups": _space(hp, "homotopy_num_groups", s["num_groups"], hp.Int),
            "l_start": _space(hp, "homotopy_l_start", s["l_start"], log_float),
            "l_stop": _space(hp, "homotopy_l_stop", s["l_stop"], log_float),
            "schedule": _space(hp, "homotopy_schedule", s["schedule"], None),
            "values": _space(hp, "homotopy_values", s["values"], hp.Int),
            "epochs_per_value": _space(hp, "homotopy_epochs_per_value", s["epochs_per_value"], hp.Int),
        }

    def build(self, hp):
        choices = self.declare(hp)
        network = self.build_fn(hp)
        compile_config = network.get_compile_config() if network.compiled else None
        model = keras_hta.HomotopyModel.from_model(
            network, split=choices["split"], anchor=choices["anchor"], num_groups=int(choices["num_groups"]),
            norm=self.norm, penalty_update=self.penalty_update, homotopy_l=float(choices["l_start"]),
        )
        if compile_config is not None:
            model.compile_from_config(compile_config)
        elif self.compile_kwargs is not None:
            model.compile(**self.compile_kwargs)
        else:
            raise ValueError("`build_fn` returned an uncompiled model: compile it, or pass `compile_kwargs`.")
        return model

    @staticmethod
    def schedule_from_hp(hp):
        """The schedule object that a trial's hyperparameters describe."""
        start, stop = float(hp.get("homotopy_l_start")), float(hp.get("homotopy_l_stop"))
        values, epv = int(hp.get("homotopy_values")), int(hp.get("homotopy_epochs_per_value"))
        if values < 2 or start == stop:
            return schedules_lib.Constant(start)
        if hp.get("homotopy_schedule") == "geometric":
            return schedules_lib.Geometric(start, stop, (stop / start) ** (1.0 / (values - 1)), epv)
        return schedules_lib.Linear(start, stop, (stop - start) / (values - 1), epv)

    def fit(self, hp, model, *args, **kwargs):
        self.declare(hp)
        callbacks = list(kwargs.get("callbacks") or [])
        callbacks.append(keras_hta.HomotopyScheduler(self.schedule_from_hp(hp)))
        kwargs["callbacks"] = callbacks
        return model.fit(*args, **kwargs)

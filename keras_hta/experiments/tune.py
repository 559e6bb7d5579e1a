"""`keras-hta tune`: a keras-tuner search over HTA's L schedule on the compare data sets.

The objective is measured on the validation split held out of the training
data; the test set is never read.
"""

import argparse


def add_tune_parser(sub):
    from keras_hta.experiments.compare import add_data_model_arguments

    p = sub.add_parser(
        "tune",
        help="search L schedules (and split, anchor) with keras-tuner",
        description="A small keras-tuner search over HTA's L schedule on the compare data sets and models.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_data_model_arguments(p)
    p.add_argument("--tuner", choices=["random", "bayesian", "hyperband"], default="random",
                   help="keras-tuner's search")
    p.add_argument("--max-trials", type=int, default=6, help="trials of the search")
    p.add_argument("--norm", choices=["squared", "l2"], default="squared",
                   help="squared (the paper's formula) or l2 (the authors' code; needs --penalty-update gradient)")
    p.add_argument("--penalty-update", choices=["proximal", "gradient"], default="proximal",
                   help="proximal (the penalties applied exactly) or gradient (an explicit step)")
    p.add_argument("--seed", type=int, default=0, help="the search's seed")
    p.add_argument("--directory", default="tune_results", help="keras-tuner's folder")
    p.set_defaults(func=run_tune, epochs=6)


def run_tune(args):
    from keras_hta.experiments import compare

    config = compare.data_model_config(args, ("width", "epochs", "batch_size", "lr", "momentum", "weight_decay",
                                              "train_size", "test_size", "val_size"))
    if args.max_trials < 1:
        raise ValueError(f"Argument `--max-trials` must be >= 1. Received: --max-trials {args.max_trials}")
    if args.seed < 0:
        raise ValueError(f"Argument `--seed` must be >= 0. Received: --seed {args.seed}")
    compare.check_writable_folder(args.directory, "--directory")
    compare.check_norm_flags(args.norm, args.penalty_update)
    import keras  # after every flag is checked
    import keras_tuner

    from keras_hta.tuning import HomotopyHyperModel

    from keras_hta.experiments import models
    verbose = compare.fit_verbosity(args)
    d = compare.load_data(config, args.tfds_dir, args.cache_dir)
    keras.utils.set_random_seed(args.seed)
    # The tuner's objective is measured on the validation split; the test set is never read.
    train, val, _, shape = compare.make_pipelines(d, config, args.seed)
    classes = len(d["class_names"])

    def build(hp):
        keras.utils.set_random_seed(args.seed)
        network = models.get(config["model"], config["width"], classes, shape)
        network.compile(
            optimizer=keras.optimizers.SGD(config["lr"], momentum=config["momentum"],
                                           weight_decay=config["weight_decay"] or None),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"],
        )
        return network

    hypermodel = HomotopyHyperModel(build, norm=args.norm, penalty_update=args.penalty_update)
    common = dict(objective="val_accuracy", directory=args.directory, project_name=config["model"],
                  seed=args.seed, overwrite=True)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if len(tf.config.list_logical_devices("GPU")) > 1:
            common["distribution_strategy"] = tf.distribute.MirroredStrategy()
    if args.tuner == "hyperband":
        tuner = keras_tuner.Hyperband(hypermodel, max_epochs=config["epochs"], **common)
    elif args.tuner == "bayesian":
        tuner = keras_tuner.BayesianOptimization(hypermodel, max_trials=args.max_trials, **common)
    else:
        tuner = keras_tuner.RandomSearch(hypermodel, max_trials=args.max_trials, **common)
    tuner.search(train, validation_data=val, epochs=config["epochs"], verbose=verbose, shuffle=False)

    names = ["homotopy_schedule", "homotopy_l_start", "homotopy_l_stop", "homotopy_values",
             "homotopy_epochs_per_value", "homotopy_split", "homotopy_anchor"]
    print("\n| trial | val_accuracy | " + " | ".join(n[len("homotopy_"):] for n in names) + " |")
    print("|" + "---|" * (len(names) + 2))
    for trial in sorted(tuner.oracle.trials.values(), key=lambda t: -(t.score or 0)):
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in (trial.hyperparameters.get(n) for n in names)]
        score = "failed" if trial.score is None else f"{trial.score:.4f}"
        number = int(trial.trial_id) + 1 if str(trial.trial_id).isdigit() else trial.trial_id  # as its log counts
        print(f"| {number} | {score} | " + " | ".join(cells) + " |")
    best = HomotopyHyperModel.schedule_from_hp(tuner.get_best_hyperparameters()[0])
    print(f"\nBest schedule: {best!r}")
    return best

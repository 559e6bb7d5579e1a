"""
Title: HTA on several processes and hosts (JAX or TensorFlow)
Description: One HomotopyModel trained by N processes with the engine Keras
drives on the backend: JAX's multi-process runtime with Keras' `DataParallel`,
or TensorFlow's `MultiWorkerMirroredStrategy`.

Every process runs this same script with the list of all processes'
addresses and its own index. On JAX, `keras.distribution.initialize` connects
the processes through the first address (the coordinator), `DataParallel`
lays every weight, twin, anchor and optimizer slot out replicated on every
device of every process, and each process feeds its own rows of every global
batch; on CPUs the collectives are Gloo's, on GPUs and TPUs JAX picks NCCL or
the interconnect itself. On TensorFlow the addresses become `TF_CONFIG`'s
worker list, `keras_hta.multi_worker_strategy()` creates the strategy (with the
workaround for keras-team/keras#20585), and every worker feeds the whole data;
the strategy gives each its share. BatchNormalization is `synchronized=True`
on TensorFlow, so that its statistics are the global batch's, as they are on
JAX.

On real hosts, one command per host (put your hosts' addresses and a free
port; `--process-id` counts from 0, and process 0 is JAX's coordinator and
TensorFlow's chief):

    KERAS_BACKEND=jax python examples/multi_process.py \\
        --addresses 10.0.0.1:8476,10.0.0.2:8476 --process-id 0 --out run
    KERAS_BACKEND=jax python examples/multi_process.py \\
        --addresses 10.0.0.1:8476,10.0.0.2:8476 --process-id 1 --out run

(`KERAS_BACKEND=tensorflow` for MultiWorkerMirroredStrategy, the same flags.)
On one machine, one command starts N local processes on 127.0.0.1 and waits
for them (each with `--devices` CPU devices on JAX):

    KERAS_BACKEND=jax python examples/multi_process.py --local 2 --out run

Each process writes OUT.process<i>.npz (every variable of the model and its
optimizer, keyed by its path) and OUT.process<i>.json (the History). With
`--backup DIR`, `keras.callbacks.BackupAndRestore` keeps one backup per
process (the weights are replicated, so each process restores alone): start
the same commands again after a crash and training resumes from the last
finished epoch, with L and the schedule's position.

Everything HomotopyModel draws at random must be equal on every process:
`split="random"` needs an explicit `seed` when more than one process trains
(HomotopyModel refuses `seed=None` there in one line), and
`keras.utils.set_random_seed` (below) gives every process the same initial
weights.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--addresses", help="HOST:PORT of every process, comma-separated, the same on every process")
parser.add_argument("--process-id", type=int, default=0, help="this process's index in --addresses (default 0)")
parser.add_argument("--local", type=int, metavar="N", help="start N processes on this machine and wait for them")
parser.add_argument("--devices", type=int, default=1, help="JAX: CPU devices per process (default 1)")
parser.add_argument("--twin-batch", default="full", choices=["full", "split"], help="HomotopyModel's twin_batch")
parser.add_argument("--plain", action="store_true", help="train the plain network instead (to compare costs)")
parser.add_argument("--width", type=int, default=8, help="units of each hidden layer (default 8)")
parser.add_argument("--hidden", type=int, default=1, help="hidden layers (default 1)")
parser.add_argument("--learning-rate", type=float, default=0.1)
parser.add_argument("--rows", type=int, default=64, help="examples in the data (default 64)")
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--global-batch", type=int, default=16)
parser.add_argument("--seed", type=int, default=2, help="the random split's seed; -1 for None")
parser.add_argument("--backup", help="a folder for BackupAndRestore (one subfolder per process)")
parser.add_argument("--stop-after", type=int, default=-1,
                    help="raise after this many training steps (to test resuming; -1: never)")
parser.add_argument("--timeout", type=float, default=600, help="--local: seconds before the processes are stopped")
parser.add_argument("--out", default="multi_process_run", help="prefix of the files each process writes")


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def launch(args):
    """Starts `args.local` processes of this script on 127.0.0.1; returns the exit status (0 if all ended 0).

    A process that fails, Ctrl-C or a run past `--timeout` stops the others: none is left behind.
    """
    addresses = ",".join(f"127.0.0.1:{p}" for p in _free_ports(args.local))
    argv = list(sys.argv[1:])
    i = next(i for i, a in enumerate(argv) if a == "--local" or a.startswith("--local="))
    del argv[i:i + (1 if "=" in argv[i] else 2)]
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), *argv, "--addresses", addresses,
                               "--process-id", str(k)]) for k in range(args.local)]
    signal.signal(signal.SIGTERM, _interrupt)  # a SIGTERM to the launcher stops its processes, as Ctrl-C does
    try:
        return _supervise(procs, time.monotonic() + args.timeout, args.timeout)
    except KeyboardInterrupt:
        print("multi_process: interrupted", file=sys.stderr)
        return 130
    finally:
        _stop(procs)


def _supervise(procs, deadline, timeout):
    """Waits for `procs`: the first nonzero exit status, 124 past `deadline`, or 0 once all ended 0."""
    while any(p.poll() is None for p in procs):
        status = next((p.returncode for p in procs if p.returncode), 0)
        if status:
            return status
        if time.monotonic() > deadline:
            print(f"multi_process: stopped after --timeout {timeout:g} s", file=sys.stderr)
            return 124
        time.sleep(0.2)
    return next((p.returncode for p in procs if p.returncode), 0)


def _stop(procs):
    """SIGTERM to each process still running, then up to 10 s each to end before it is killed."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def distribute(args, processes):
    """Connects this process to the others the backend's way; returns (strategy scope, rows this process feeds)."""
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend == "jax":
        # JAX reads these before its backend starts: this process's CPU devices, and Gloo for collectives
        # across processes on CPUs (no effect on GPUs and TPUs).
        flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
        os.environ["XLA_FLAGS"] = " ".join(flags)
        import jax
        import keras

        jax.config.update("jax_num_cpu_devices", args.devices)
        if processes > 1:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
            keras.distribution.initialize(args.addresses, processes, args.process_id)
        # Each process feeds its own rows, so Keras must not shard the data again.
        keras.distribution.set_distribution(keras.distribution.DataParallel(
            devices=keras.distribution.list_devices(), auto_shard_dataset=False))
        import contextlib

        return contextlib.nullcontext(), args.process_id
    if backend == "tensorflow":
        if processes > 1:
            os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": args.addresses.split(",")},
                                                  "task": {"type": "worker", "index": args.process_id}})
            import keras_hta as hta

            return hta.multi_worker_strategy().scope(), None
        import tensorflow as tf

        return tf.distribute.get_strategy().scope(), None
    if processes > 1:
        sys.exit(f"multi_process: KERAS_BACKEND={backend}: Keras' fit runs on one device on PyTorch; "
                 "use jax or tensorflow for this run (a .keras file moves between backends)")
    import contextlib

    return contextlib.nullcontext(), None


def main(args):
    processes = len(args.addresses.split(",")) if args.addresses else 1
    scope, rows = distribute(args, processes)

    import numpy as np

    import keras
    import keras_hta as hta

    rng = np.random.default_rng(0)  # every process builds the same global batches
    x = rng.normal(size=(args.rows, 4)).astype("float32")
    y = np.tanh(x @ rng.normal(size=(4, 3))).astype("float32")
    batch = args.global_batch
    if rows is not None:  # JAX: this process feeds rows [k·b, (k+1)·b) of every global batch, b = batch / processes
        batch = args.global_batch // processes
        steps = len(x) // args.global_batch
        x, y = (a[:steps * args.global_batch].reshape(steps, processes, batch, -1)[:, rows].reshape(-1, a.shape[1])
                for a in (x, y))

    with scope:
        keras.utils.set_random_seed(11)
        inputs = keras.Input((4,))
        h = keras.layers.Dense(args.width)(inputs)
        h = keras.layers.BatchNormalization(synchronized=keras.backend.backend() == "tensorflow")(h)
        h = keras.layers.Activation("tanh")(h)
        for _ in range(args.hidden - 1):
            h = keras.layers.Dense(args.width, activation="tanh")(h)
        network = keras.Model(inputs, keras.layers.Dense(3)(h))
        model = network if args.plain else hta.HomotopyModel.from_model(
            network, split="random", seed=None if args.seed < 0 else args.seed, anchor="init", homotopy_l=0.5,
            twin_batch=args.twin_batch)
        model.compile(optimizer=keras.optimizers.SGD(args.learning_rate, momentum=0.9), loss="mse")

    class EpochTime(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs["seconds"] = time.perf_counter() - self.start

    callbacks = [EpochTime()] if args.plain else [EpochTime(), hta.HomotopyScheduler(hta.schedules.Geometric(0.5, 0.1, 0.5))]
    if args.backup:
        callbacks.append(keras.callbacks.BackupAndRestore(os.path.join(args.backup, f"process{args.process_id}")))
    if args.stop_after >= 0:
        class Stop(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.steps = 0

            def on_train_batch_end(self, batch, logs=None):
                self.steps += 1
                if self.steps == args.stop_after:
                    raise RuntimeError(f"stopped after {self.steps} steps (--stop-after)")

        callbacks.append(Stop())
    try:
        history = model.fit(x, y, batch_size=batch, epochs=args.epochs, shuffle=False, verbose=0,
                            callbacks=callbacks)
    except RuntimeError as e:
        if "--stop-after" not in str(e):
            raise
        print(f"process {args.process_id}: {e}", file=sys.stderr)
        sys.exit(3)
    out = f"{args.out}.process{args.process_id}"
    np.savez(out + ".npz", **{v.path: np.asarray(v) for v in model.variables + model.optimizer.variables})
    with open(out + ".json", "w") as f:
        json.dump({"history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
                   "processes": processes, "backend": keras.backend.backend(),
                   "steps_per_epoch": len(x) // batch,
                   # What each step all-reduces under DataParallel and the strategies: one gradient per trainable
                   # variable (HTA: every twin's).
                   "gradient_bytes": sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
                                         for v in model.trainable_variables)}, f)
    print(f"process {args.process_id} of {processes} ({keras.backend.backend()}): "
          f"final loss {history.history['loss'][-1]:.6f}")


if __name__ == "__main__":
    args = parser.parse_args()
    if args.local:
        if args.local < 1:
            parser.error(f"--local must be at least 1, got {args.local}")
        sys.exit(launch(args))
    if args.addresses and not 0 <= args.process_id < len(args.addresses.split(",")):
        parser.error(f"--process-id {args.process_id} is not an index of --addresses {args.addresses}")
    if args.global_batch % max(1, len((args.addresses or "x").split(","))):
        parser.error(f"--global-batch {args.global_batch} does not divide among the processes")
    main(args)

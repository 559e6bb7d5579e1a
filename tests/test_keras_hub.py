"""HomotopyModel on keras-hub's models at minimal size: tasks (GPT-2 and BERT masked LMs, whose logits reuse the
token embedding; a BERT text classifier; a ResNet image classifier), a BERT backbone under a head of our own, and a
task with a preprocessor (a tokenizer built in memory).

keras-hub is installed without its TensorFlow Text dependency (see `.ci/run`), so these run on every backend.
"""

import importlib.util

import numpy as np
import pytest

import keras
import keras_hta as hta
from conftest import BACKEND, twin_views

pytestmark = pytest.mark.extras
keras_hub = pytest.importorskip("keras_hub", reason="keras-hub: the README's test extras do not install it; CI's "
                                                    "later passes do")

VOCAB, LENGTH = 40, 8
SIZE = dict(vocabulary_size=VOCAB, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32,
            max_sequence_length=LENGTH, dropout=0.0)  # no dropout: every twin's step is then deterministic


def _tokens(n=8, seed=0):
    rng = np.random.default_rng(seed)
    x = {"token_ids": rng.integers(0, VOCAB, (n, LENGTH)).astype("int32"),
         "padding_mask": np.ones((n, LENGTH), "int32")}
    return x, rng


def _causal_lm(seed):
    keras.utils.set_random_seed(seed)
    return keras_hub.models.GPT2CausalLM(backbone=keras_hub.models.GPT2Backbone(**SIZE), preprocessor=None)


def _call(net, x):
    """The net's outputs in inference mode (a keras-hub task's own `predict` needs grain or TensorFlow)."""
    return keras.ops.convert_to_numpy(net(x, training=False))


def _check_served(model, path, x, expected):
    """On TensorFlow, `export_saved_model` writes a SavedModel whose `serve` gives `expected`; elsewhere nothing."""
    if BACKEND != "tensorflow" or importlib.util.find_spec("tensorflow") is None:
        return  # SavedModel export: TensorFlow only (tests/test_backends.py)
    import tensorflow as tf

    hta.export_saved_model(model, str(path))
    served = tf.saved_model.load(str(path))  # kept: its variables live as long as it does
    np.testing.assert_allclose(served.serve(x).numpy(), expected, atol=1e-5)


def test_gpt2_causal_lm_twins_keep_the_tied_embedding_and_step_like_plain_keras():
    x, rng = _tokens()
    y = rng.integers(0, VOCAB, (8, LENGTH))
    task = _causal_lm(0)
    model = hta.HomotopyModel.from_model(task, anchor="init", homotopy_l=0.3, penalty_update="gradient")
    assert len(model.twin(1).weights) == len(task.weights)  # one network: one tied embedding in every twin
    assert len(model.twin_state.twinned()) == len(task.trainable_variables)
    reference = _causal_lm(0)
    plain = keras.Model(reference.inputs, reference.outputs)  # the task's graph and weights, trained by plain fit
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    for m in (plain, model):
        m.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss)
    h_plain = plain.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    h_hta = model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    # At the anchor the penalties' gradient is zero: each twin takes plain SGD's step, the tied embedding's
    # gradient (input and logits) included.
    for net in twin_views(model):
        for got, want in zip(net.get_weights(), reference.get_weights()):
            np.testing.assert_allclose(got, want, atol=2e-6)
    np.testing.assert_allclose(h_hta.history["loss"][0], 2 * h_plain.history["loss"][0], rtol=1e-5)


def test_gpt2_causal_lm_trains_merges_into_its_class_saves_and_reloads(tmp_path):
    x, rng = _tokens()
    y = rng.integers(0, VOCAB, (8, LENGTH))
    model = hta.HomotopyModel.from_model(_causal_lm(1), split="layers", homotopy_l=0.05)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    assert float(model.penalties()[1]) > 0  # the twins moved apart
    expected = _call(model, x)
    for how, net in (("theta", model.network), ("eta", model.twin(1))):
        merged = hta.merge(model, how=how)
        assert isinstance(merged, keras_hub.models.GPT2CausalLM)
        np.testing.assert_allclose(_call(merged, x), _call(net, x), atol=1e-6)
    model.save(tmp_path / "lm.keras")
    restored = keras.models.load_model(tmp_path / "lm.keras")
    np.testing.assert_allclose(_call(restored, x), expected, atol=1e-6)
    np.testing.assert_allclose(_call(restored.twin(1), x), _call(model.twin(1), x), atol=1e-6)
    _check_served(model, tmp_path / "served", x, expected)
    # The task's own generate(), greedy: the merged copy of η generates as the network carrying η's weights.
    mask = np.broadcast_to(np.arange(LENGTH) < 3, (2, LENGTH))  # two prompts of 3 tokens
    prompt = {"token_ids": np.where(mask, x["token_ids"][:2], 0).astype("int32"), "padding_mask": mask}
    in_place = hta.merge(model, how="eta", in_place=True)
    assert in_place is model.network
    for task in (merged, in_place):
        task.compile(sampler="greedy")
    np.testing.assert_array_equal(merged.generate(prompt, stop_token_ids=None)["token_ids"],
                                  in_place.generate(prompt, stop_token_ids=None)["token_ids"])


def test_bert_backbone_under_a_classifier_head_trains_merges_and_exports(tmp_path):
    x, rng = _tokens(n=16)
    x["segment_ids"] = np.zeros_like(x["token_ids"])
    y = rng.integers(0, 2, 16)
    keras.utils.set_random_seed(2)
    backbone = keras_hub.models.BertBackbone(**SIZE)
    inputs = {name: keras.Input((LENGTH,), dtype="int32", name=name) for name in x}
    network = keras.Model(inputs, keras.layers.Dense(2)(backbone(inputs)["pooled_output"]))
    model = hta.HomotopyModel.from_model(network, homotopy_l=0.05)
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    history = model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    assert np.all(np.isfinite(history.history["loss"])) and float(model.penalties()[1]) > 0
    expected = model.predict(x, verbose=0)
    np.testing.assert_allclose(hta.merge(model).predict(x, verbose=0), expected, atol=1e-6)
    _check_served(model, tmp_path / "served", x, expected)


def test_a_task_with_a_preprocessor_warns_and_trains_on_its_preprocessed_batches():
    # A GPT-2 byte-pair tokenizer built in memory (no preset download): "a", "b" and " a", " b".
    vocabulary = {"<|endoftext|>": 0, "a": 1, "b": 2, "Ġ": 3, "Ġa": 4, "Ġb": 5}
    tokenizer = keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary, merges=["Ġ a", "Ġ b"])
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(tokenizer=tokenizer, sequence_length=LENGTH)
    keras.utils.set_random_seed(3)
    task = keras_hub.models.GPT2CausalLM(
        backbone=keras_hub.models.GPT2Backbone(**dict(SIZE, vocabulary_size=len(vocabulary))),
        preprocessor=preprocessor)
    with pytest.warns(UserWarning, match="has a preprocessor .GPT2CausalLMPreprocessor.*preprocessed inputs"):
        model = hta.HomotopyModel.from_model(task, homotopy_l=0.1)
    x, y, weights = preprocessor(["a b a", "b a", "a a b b", "b"])  # the padding is weighted 0
    model.compile(optimizer=keras.optimizers.SGD(0.0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, y, sample_weight=weights, batch_size=4, epochs=1, verbose=0)
    want = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, task(x), sample_weight=weights)
    np.testing.assert_allclose(history.history["f_theta"][0], float(want), rtol=1e-5)


def test_a_backbone_after_enable_lora_trains_only_lora_and_head_in_every_twin(tmp_path):
    x, rng = _tokens(n=8)
    x["segment_ids"] = np.zeros_like(x["token_ids"])
    y = rng.integers(0, 2, 8)
    task = keras_hub.models.BertTextClassifier(_bert(7), num_classes=2, preprocessor=None, dropout=0.0)
    task.backbone.enable_lora(2)
    trained = {v.path for v in task.trainable_variables}
    assert trained and all("lora" in p or not p.startswith(task.backbone.name) for p in trained)
    frozen = {v.path: keras.ops.convert_to_numpy(v) for v in task.variables if v.path not in trained}
    model = hta.HomotopyModel.from_model(task, homotopy_l=0.1, anchor="init")
    assert {task.variables[p].path for p in model.twin_state.twinned()} == trained
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    for k in range(2):
        for v in task.variables:
            mine = model.twin(k).variable(v)
            if v.path in frozen:  # the base weights: one variable, unchanged
                assert mine is v
                np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), frozen[v.path])
    assert float(model.penalties()[1]) > 0  # the LoRA weights and the head moved, twin by twin
    model.save(tmp_path / "lora.keras")
    restored = keras.models.load_model(tmp_path / "lora.keras")
    for k in range(2):
        np.testing.assert_allclose(_call(restored.twin(k), x), _call(model.twin(k), x), atol=1e-6)


def _bert(seed):
    keras.utils.set_random_seed(seed)
    return keras_hub.models.BertBackbone(**SIZE)


TASKS = {  # name: (task, x, y)
    "BertMaskedLM": lambda rng: (  # its logits reuse the token embedding, as GPT-2's do
        keras_hub.models.BertMaskedLM(_bert(4), preprocessor=None),
        dict(_tokens(4)[0], segment_ids=np.zeros((4, LENGTH), "int32"),
             mask_positions=np.array([[1, 5]] * 4, "int32")),
        rng.integers(0, VOCAB, (4, 2))),
    "BertTextClassifier": lambda rng: (
        keras_hub.models.BertTextClassifier(_bert(5), num_classes=3, preprocessor=None, dropout=0.0),
        dict(_tokens(4)[0], segment_ids=np.zeros((4, LENGTH), "int32")), rng.integers(0, 3, 4)),
    "ResNetImageClassifier": lambda rng: (  # convolutions and BatchNorm
        keras_hub.models.ResNetImageClassifier(
            keras_hub.models.ResNetBackbone(
                input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 16],
                stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="basic_block",
                image_shape=(16, 16, 3)),
            num_classes=3, preprocessor=None),
        rng.normal(size=(4, 16, 16, 3)).astype("float32"), rng.integers(0, 3, 4)),
}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_a_task_wraps_trains_and_merges_into_its_class(name):
    rng = np.random.default_rng(6)
    task, x, y = TASKS[name](rng)
    model = hta.HomotopyModel.from_model(task, homotopy_l=0.1)
    assert len(model.twin(1).weights) == len(task.weights)
    model.compile(optimizer=keras.optimizers.SGD(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert float(model.penalties()[1]) > 0
    for how, net in (("theta", model.network), ("eta", model.twin(1))):
        merged = hta.merge(model, how=how)
        assert type(merged) is type(task)
        np.testing.assert_allclose(_call(merged, x), _call(net, x), atol=1e-6)

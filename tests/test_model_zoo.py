"""Models users bring, written the way keras-io's examples and Keras' guides write them, through their whole life.

Each network below is written in the shape its example gives it, sizes shrunk: custom layers with positional
`__init__` arguments and no `get_config`, sublayers kept as attributes, a nested `Sequential` of custom layers, a
`Lambda` of a named function, augmentation layers, recurrent dropout, a frozen inner block, LoRA on a sublayer, a
keras-hub backbone under a head built on its inputs, a keras.applications trunk frozen then partly unfrozen. None of
their classes is registered with Keras, as in the examples: loading takes `custom_objects`, as it does for the plain
Keras model.

Each goes through fit, `merge` of θ, η and their average, `export_model`, `save` and `load_model`, asserting: the
merged model predicts as the twin it was merged from; merge leaves θ (and the wrapped network) as it was; the exported
artifact and the reloaded model predict as the merged model and as the model saved; frozen weights stay as they were.
Export is asserted where Keras' own `model.export` of the same merged network works on this backend; where it does
not, `export_model` must refuse in one line.
"""

import numpy as np
import pytest

import keras
import keras_hta as hta
from keras import layers, ops
from keras_hta import compat
from keras_hta.merge import plain_copy
from conftest import BACKEND, needs

_np = keras.ops.convert_to_numpy


# -- a text Transformer (keras-io: text classification with Transformer) ------------------------------------------


class TransformerBlock(layers.Layer):
    def __init__(self, embed_dim, num_heads, ff_dim, rate=0.1):
        super().__init__()
        self.att = layers.MultiHeadAttention(num_heads=num_heads, key_dim=embed_dim)
        self.ffn = keras.Sequential([layers.Dense(ff_dim, activation="relu"), layers.Dense(embed_dim)])
        self.layernorm1 = layers.LayerNormalization(epsilon=1e-6)
        self.layernorm2 = layers.LayerNormalization(epsilon=1e-6)
        self.dropout1 = layers.Dropout(rate)
        self.dropout2 = layers.Dropout(rate)

    def call(self, inputs):
        attended = self.dropout1(self.att(inputs, inputs))
        out1 = self.layernorm1(inputs + attended)
        return self.layernorm2(out1 + self.dropout2(self.ffn(out1)))


class TokenAndPositionEmbedding(layers.Layer):
    def __init__(self, maxlen, vocab_size, embed_dim):
        super().__init__()
        self.token_emb = layers.Embedding(input_dim=vocab_size, output_dim=embed_dim)
        self.pos_emb = layers.Embedding(input_dim=maxlen, output_dim=embed_dim)

    def call(self, x):
        positions = self.pos_emb(ops.arange(start=0, stop=ops.shape(x)[-1], step=1))
        return self.token_emb(x) + positions


def text_transformer(rng):
    maxlen, vocab = 8, 30
    inputs = layers.Input(shape=(maxlen,))
    x = TokenAndPositionEmbedding(maxlen, vocab, 8)(inputs)
    x = TransformerBlock(8, 2, 8)(x)
    x = layers.GlobalAveragePooling1D()(x)
    x = layers.Dropout(0.1)(x)
    x = layers.Dense(6, activation="relu")(x)
    outputs = layers.Dense(2, activation="softmax")(x)
    data = rng.integers(0, vocab, (16, maxlen)).astype("float32"), rng.integers(0, 2, 16)
    custom = {"TransformerBlock": TransformerBlock, "TokenAndPositionEmbedding": TokenAndPositionEmbedding}
    return keras.Model(inputs=inputs, outputs=outputs), data, "sparse_categorical_crossentropy", custom


# -- a Vision Transformer (keras-io: image classification with ViT) -----------------------------------------------


class Patches(layers.Layer):
    def __init__(self, patch_size):
        super().__init__()
        self.patch_size = patch_size

    def call(self, images):
        shape = ops.shape(images)
        patches = ops.image.extract_patches(images, size=self.patch_size)
        count = (shape[1] // self.patch_size) * (shape[2] // self.patch_size)
        return ops.reshape(patches, (shape[0], count, self.patch_size * self.patch_size * shape[3]))

    def get_config(self):
        config = super().get_config()
        config.update({"patch_size": self.patch_size})
        return config


class PatchEncoder(layers.Layer):
    def __init__(self, num_patches, projection_dim):
        super().__init__()
        self.num_patches = num_patches
        self.projection = layers.Dense(units=projection_dim)
        self.position_embedding = layers.Embedding(input_dim=num_patches, output_dim=projection_dim)

    def call(self, patch):
        positions = ops.expand_dims(ops.arange(start=0, stop=self.num_patches, step=1), axis=0)
        return self.projection(patch) + self.position_embedding(positions)

    def get_config(self):
        config = super().get_config()
        config.update({"num_patches": self.num_patches})
        return config


def mlp(x, hidden_units, dropout_rate):
    for units in hidden_units:
        x = layers.Dense(units, activation=keras.activations.gelu)(x)
        x = layers.Dropout(dropout_rate)(x)
    return x


def vision_transformer(rng):
    x_train = rng.normal(size=(16, 8, 8, 3)).astype("float32")
    data_augmentation = keras.Sequential(
        [layers.Normalization(), layers.Resizing(8, 8), layers.RandomFlip("horizontal"),
         layers.RandomRotation(factor=0.02), layers.RandomZoom(height_factor=0.2, width_factor=0.2)],
        name="data_augmentation")
    data_augmentation.layers[0].adapt(x_train)
    inputs = keras.Input(shape=(8, 8, 3))
    patches = Patches(4)(data_augmentation(inputs))
    encoded = PatchEncoder(4, 8)(patches)
    x1 = layers.LayerNormalization(epsilon=1e-6)(encoded)
    attention = layers.MultiHeadAttention(num_heads=2, key_dim=8, dropout=0.1)(x1, x1)
    x2 = layers.Add()([attention, encoded])
    x3 = mlp(layers.LayerNormalization(epsilon=1e-6)(x2), hidden_units=[16, 8], dropout_rate=0.1)
    encoded = layers.Add()([x3, x2])
    representation = layers.Dropout(0.5)(layers.Flatten()(layers.LayerNormalization(epsilon=1e-6)(encoded)))
    logits = layers.Dense(3)(mlp(representation, hidden_units=[8], dropout_rate=0.5))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return keras.Model(inputs=inputs, outputs=logits), (x_train, rng.integers(0, 3, 16)), loss, {
        "Patches": Patches, "PatchEncoder": PatchEncoder}


# -- an MLP-Mixer: custom layers in a nested Sequential (keras-io: MLP models for image classification) -----------


class MixerPatches(layers.Layer):
    def __init__(self, patch_size, num_patches):
        super().__init__()
        self.patch_size = patch_size
        self.num_patches = num_patches

    def call(self, images):
        patches = ops.image.extract_patches(images, size=self.patch_size)
        return ops.reshape(patches, (ops.shape(images)[0], self.num_patches, ops.shape(patches)[-1]))


class MLPMixerLayer(layers.Layer):
    def __init__(self, num_patches, hidden_units, dropout_rate=0.2, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.mlp1 = keras.Sequential([layers.Dense(units=num_patches), layers.Activation("gelu"),
                                      layers.Dense(units=num_patches), layers.Dropout(rate=dropout_rate)])
        self.mlp2 = keras.Sequential([layers.Dense(units=num_patches), layers.Activation("gelu"),
                                      layers.Dense(units=hidden_units), layers.Dropout(rate=dropout_rate)])
        self.normalize = layers.LayerNormalization(epsilon=1e-6)

    def call(self, inputs):
        x = self.normalize(inputs)
        mlp1_outputs = ops.transpose(self.mlp1(ops.transpose(x, axes=(0, 2, 1))), axes=(0, 2, 1))
        x = mlp1_outputs + inputs
        return x + self.mlp2(self.normalize(x))


def mlp_mixer(rng):
    num_patches, embedding_dim = 4, 8
    blocks = keras.Sequential([MLPMixerLayer(num_patches, embedding_dim, 0.1) for _ in range(2)])
    inputs = layers.Input(shape=(8, 8, 3))
    patches = MixerPatches(4, num_patches)(inputs)
    x = blocks(layers.Dense(units=embedding_dim)(patches))
    representation = layers.Dropout(rate=0.1)(layers.GlobalAveragePooling1D()(x))
    logits = layers.Dense(3)(representation)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    data = rng.normal(size=(16, 8, 8, 3)).astype("float32"), rng.integers(0, 3, 16)
    return keras.Model(inputs=inputs, outputs=logits), data, loss, {"MixerPatches": MixerPatches,
                                                                    "MLPMixerLayer": MLPMixerLayer}


# -- a siamese network with a Lambda of a named function (keras-io: siamese network, contrastive loss) -------------


def euclidean_distance(vects):
    x, y = vects
    sum_square = ops.sum(ops.square(x - y), axis=1, keepdims=True)
    return ops.sqrt(ops.maximum(sum_square, keras.backend.epsilon()))


def contrastive_loss_with_margin(margin=1):
    def contrastive_loss(y_true, y_pred):
        square_pred = ops.square(y_pred)
        margin_square = ops.square(ops.maximum(margin - y_pred, 0))
        return ops.mean((1 - y_true) * square_pred + y_true * margin_square)

    return contrastive_loss


def siamese(rng):
    inputs = layers.Input((6, 6, 1))
    x = layers.BatchNormalization()(inputs)
    x = layers.Conv2D(2, (3, 3), activation="tanh")(x)
    x = layers.AveragePooling2D(pool_size=(2, 2))(x)
    x = layers.Flatten()(layers.BatchNormalization()(x))
    x = layers.Dense(4, activation="tanh")(layers.BatchNormalization()(x))
    embedding_network = keras.Model(inputs, x)
    input_1, input_2 = layers.Input((6, 6, 1)), layers.Input((6, 6, 1))
    merge_layer = layers.Lambda(euclidean_distance, output_shape=(1,))(
        [embedding_network(input_1), embedding_network(input_2)])
    output_layer = layers.Dense(1, activation="sigmoid")(layers.BatchNormalization()(merge_layer))
    pairs = [rng.normal(size=(16, 6, 6, 1)).astype("float32") for _ in range(2)]
    labels = rng.integers(0, 2, (16, 1)).astype("float32")
    loss = contrastive_loss_with_margin(1)
    return (keras.Model(inputs=[input_1, input_2], outputs=output_layer), (pairs, labels),
            loss, {"euclidean_distance": euclidean_distance, "contrastive_loss": loss})


# -- Embedding(mask_zero) and bidirectional recurrent layers with recurrent dropout (keras-io: bidirectional LSTM) --


def bidirectional_rnn(rng):
    inputs = keras.Input(shape=(None,), dtype="int32")
    x = layers.Embedding(30, 8, mask_zero=True)(inputs)
    x = layers.Bidirectional(layers.LSTM(6, return_sequences=True, recurrent_dropout=0.1))(x)
    x = layers.Bidirectional(layers.GRU(6, recurrent_dropout=0.1))(x)
    outputs = layers.Dense(1, activation="sigmoid")(x)
    tokens = rng.integers(1, 30, (16, 7)).astype("int32")
    tokens[:, 5:] = 0  # padding, masked
    return keras.Model(inputs, outputs), (tokens, rng.integers(0, 2, (16, 1)).astype("float32")), \
        "binary_crossentropy", {}


# -- a nested Sequential with a frozen inner block (Keras' transfer-learning guide) --------------------------------


def frozen_inner_block(rng):
    base = keras.Sequential([layers.Dense(8, activation="relu"), layers.BatchNormalization(),
                             layers.Dense(8, activation="relu")], name="base")
    base.build((None, 5))
    base.trainable = False
    model = keras.Sequential([keras.Input((5,)), base, layers.Dense(6, activation="relu"), layers.Dense(1)])
    data = rng.normal(size=(16, 5)).astype("float32"), rng.normal(size=(16, 1)).astype("float32")
    return model, data, "mse", {}


# -- LoRA on a sublayer: MultiHeadAttention's query projection (Keras' LoRA on EinsumDense) ------------------------


def lora_on_attention(rng):
    inputs = keras.Input((4, 6))
    attention = layers.MultiHeadAttention(num_heads=2, key_dim=3, name="attention")
    x = attention(inputs, inputs)
    outputs = layers.Dense(2)(layers.GlobalAveragePooling1D()(x))
    model = keras.Model(inputs, outputs)
    attention.query_dense.enable_lora(2)
    data = rng.normal(size=(16, 4, 6)).astype("float32"), rng.normal(size=(16, 2)).astype("float32")
    return model, data, "mse", {}


# -- a keras-hub backbone after enable_lora under a head built on its inputs (keras-hub's LoRA guide) --------------


def keras_hub_backbone(rng):
    needs("keras_hub")
    import keras_hub

    backbone = keras_hub.models.BertBackbone(vocabulary_size=30, num_layers=1, num_heads=2, hidden_dim=8,
                                             intermediate_dim=16, max_sequence_length=6, dropout=0.0)
    backbone.enable_lora(2)
    pooled = backbone(backbone.input)["pooled_output"]
    outputs = layers.Softmax()(layers.Dense(2)(pooled))
    x = {"token_ids": rng.integers(0, 30, (16, 6)).astype("int32"), "segment_ids": np.zeros((16, 6), "int32"),
         "padding_mask": np.ones((16, 6), "int32")}
    return keras.Model(backbone.input, outputs), (x, rng.integers(0, 2, 16)), "sparse_categorical_crossentropy", {}


# -- a keras.applications trunk, frozen, then partly unfrozen and recompiled (Keras' transfer-learning guide) ------


def applications_trunk(rng):
    trunk = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None,
                                           pooling="avg")
    trunk.trainable = False
    inputs = keras.Input((32, 32, 3))
    outputs = layers.Dense(3)(layers.Dropout(0.2)(trunk(inputs, training=False)))
    data = rng.normal(size=(8, 32, 32, 3)).astype("float32"), rng.integers(0, 3, 8)
    return keras.Model(inputs, outputs), data, keras.losses.SparseCategoricalCrossentropy(from_logits=True), {}


def _unfreeze_top(network):
    trunk = next(layer for layer in network.layers if isinstance(layer, keras.Model))
    for layer in trunk.layers[-6:]:
        if not isinstance(layer, layers.BatchNormalization):  # the guide keeps BatchNormalization frozen
            layer.trainable = True


ZOO = {
    "text_transformer": text_transformer,
    "vision_transformer": vision_transformer,
    "mlp_mixer": mlp_mixer,
    "siamese": siamese,
    "bidirectional_rnn": bidirectional_rnn,
    "frozen_inner_block": frozen_inner_block,
    "lora_on_attention": lora_on_attention,
    "keras_hub_backbone": keras_hub_backbone,
    "applications_trunk": applications_trunk,
}


# -- the life of each ----------------------------------------------------------------------------------------------


def _frozen(network):
    """Every weight created trainable that does not train now (a frozen layer's, LoRA's base kernels), by id."""
    created = compat.created_trainable(network)
    return {id(v): _np(v).copy() for v in network.variables if id(v) in created and not v.trainable}


def _tensors(x, convert):
    return keras.tree.map_structure(convert, x)


def _keras_export_problem(plain, path):
    """None where Keras' own `export` of `plain` works here in the default format, else its error."""
    try:
        plain.export(str(path), format=_default_format(), verbose=False)
    except Exception as error:  # whatever Keras raises
        return error
    return None


def _default_format():
    return "torch" if BACKEND == "torch" else "tf_saved_model"


def _served(path, x):
    """The outputs of the exported artifact at `path` on `x` (one example: a torch program is exported for one)."""
    if BACKEND == "torch":
        import torch

        program = torch.export.load(str(path)).module()
        return _np(program(_tensors(x, lambda t: torch.as_tensor(t))).detach())
    import tensorflow as tf

    served = tf.saved_model.load(str(path))
    return served.serve(_tensors(x, tf.constant)).numpy()


def _keras_rebuilds(network, custom_objects):
    """Whether Keras rebuilds the network from its config as `load_model` does, given the objects a user passes."""
    try:
        with keras.saving.custom_object_scope(custom_objects):
            keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(network))
    except Exception:  # whatever Keras raises
        return False
    return True


def _fit(name, model, network, x, y, loss):
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss=loss)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    if name == "applications_trunk":  # phase 2: the trunk's top trains too, at a lower rate
        _unfreeze_top(network)
        model.compile(optimizer=keras.optimizers.SGD(0.005, momentum=0.9), loss=loss)
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)


def _check_export(model, network, x, tmp_path):
    """`export_model` works wherever Keras' own export of the merged network does, and what it writes serves as the
    merged model predicts; where it cannot export, it says why in one line (Keras' own export fails there too)."""
    path = tmp_path / ("model.pt2" if BACKEND == "torch" else "served")
    copy, _ = plain_copy(network)
    own_problem = _keras_export_problem(copy if copy is not None else network,
                                        tmp_path / ("own.pt2" if BACKEND == "torch" else "own"))
    try:
        plain = hta.export_model(model, path)
    except (ValueError, ImportError) as error:
        assert own_problem is not None, f"Keras' own export works; export_model raised {error!r}"
        assert "\n" not in str(error) and "export" in str(error)
        return
    sample = _exported_shape(network, x)
    np.testing.assert_allclose(_served(path, sample), _np(plain(sample, training=False)), atol=1e-5)
    np.testing.assert_allclose(_served(path, sample), model.predict(sample, verbose=0), atol=1e-5)


def _exported_shape(network, x):
    """One example of `x`, cut to the shape the export takes: a torch program holds every unknown size at 1
    (Keras' own export on PyTorch, without `dynamic_shapes`); a SavedModel takes any."""
    one = keras.tree.map_structure(lambda t: t[:1], x)
    if BACKEND != "torch":
        return one
    specs = keras.tree.flatten(network.inputs)
    leaves = [t[(slice(None),) + tuple(slice(0, 1) if d is None else slice(None) for d in spec.shape[1:])]
              for t, spec in zip(keras.tree.flatten(one), specs)]
    return keras.tree.pack_sequence_as(one, leaves)


MARKS = {"applications_trunk": pytest.mark.slow,  # about a minute on 2 cores
         "keras_hub_backbone": pytest.mark.extras}


@pytest.mark.parametrize("name", [pytest.param(name, marks=MARKS[name]) if name in MARKS else name for name in sorted(ZOO)])
def test_a_model_as_users_write_it_lives_its_whole_life(name, tmp_path):
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    network, (x, y), loss, custom_objects = ZOO[name](rng)
    rebuilds = _keras_rebuilds(network, custom_objects)
    model = hta.HomotopyModel.from_model(network, homotopy_l=0.1)
    frozen = _frozen(network)
    _fit(name, model, network, x, y, loss)
    assert float(model.penalties()[1]) > 0  # the twins moved apart: merging θ, η or their mean differs

    theta = [w.copy() for w in network.get_weights()]
    predicted = model.predict(x, verbose=0)
    for v in network.variables:  # what did not train is as it was
        if id(v) in frozen and not v.trainable:
            np.testing.assert_array_equal(_np(v), frozen[id(v)])

    twins = [model.twin(k).get_weights() for k in range(model.num_groups)]
    for how in ("theta", "eta", "average"):
        if not rebuilds:  # Keras cannot copy it: merge says so in one line, and leaves θ alone
            with pytest.raises(ValueError, match="cannot copy.*in_place=True") as raised:
                hta.merge(model, how=how)
            assert "\n" not in str(raised.value)
        else:
            merged = hta.merge(model, how=how)  # no custom_objects: merge finds what the layers hold
            assert type(merged) is type(network) and merged is not network
            if how == "average":
                for got, *per_twin in zip(merged.get_weights(), *twins):
                    np.testing.assert_allclose(got, np.mean(per_twin, axis=0), rtol=1e-6, atol=1e-7)
            else:
                k = {"theta": 0, "eta": 1}[how]
                np.testing.assert_allclose(merged.predict(x, verbose=0), model.twin(k).predict(x), atol=1e-5)
        for now, before in zip(network.get_weights(), theta):  # θ, the user's network: untouched
            np.testing.assert_array_equal(now, before)
    np.testing.assert_array_equal(model.predict(x, verbose=0), predicted)

    _check_export(model, network, x, tmp_path)
    for now, before in zip(network.get_weights(), theta):
        np.testing.assert_array_equal(now, before)

    if rebuilds:
        model.save(tmp_path / "m.keras")
        restored = keras.models.load_model(tmp_path / "m.keras", custom_objects=custom_objects)
        assert [v.trainable for v in restored.network.variables] == [v.trainable for v in network.variables]
    else:  # refused in one line before anything is written; the weights save whatever the classes
        with pytest.raises(ValueError, match="cannot rebuild the layer") as raised:
            model.save(tmp_path / "m.keras")
        assert "\n" not in str(raised.value) and not (tmp_path / "m.keras").exists()
        model.save_weights(tmp_path / "m.weights.h5")
        keras.utils.set_random_seed(0)
        restored = hta.HomotopyModel.from_model(ZOO[name](np.random.default_rng(0))[0], homotopy_l=0.1)
        restored.load_weights(tmp_path / "m.weights.h5")
    np.testing.assert_allclose(restored.predict(x, verbose=0), predicted, atol=1e-6)
    for k in range(1, model.num_groups):
        np.testing.assert_allclose(restored.twin(k).predict(x), model.twin(k).predict(x), atol=1e-6)
    if not rebuilds:  # asked by name: η written into the wrapped network
        eta = model.twin(1).predict(x)
        assert hta.merge(model, how="eta", in_place=True) is network
        np.testing.assert_allclose(network.predict(x, verbose=0), eta, atol=1e-5)

"""Model builders: VGG parameter counts from the closed form, MNIST-1D models."""

import pytest

from keras_hta.experiments import models

pytestmark = pytest.mark.harness  # run once, in the TensorFlow pass (tests/conftest.py)



def _vgg_params(depth, width, classes=10):
    trainable = non_trainable = 0
    c_in = 3
    for item in models.VGG_CONFIGS[depth]:
        if item == "M":
            continue
        c = max(1, int(round(item * width)))
        trainable += 9 * c_in * c + 2 * c  # conv kernel (no bias) + BN gamma, beta
        non_trainable += 2 * c  # BN moving mean, variance
        c_in = c
    trainable += c_in * classes + classes
    return trainable, non_trainable


@pytest.mark.parametrize("depth,width", [(11, 0.125), (13, 0.25), (16, 0.125), (19, 0.0625)])
def test_vgg_parameter_count_matches_formula(depth, width):
    model = models.vgg(depth, width=width)
    trainable, non_trainable = _vgg_params(depth, width)
    assert sum(int(w.numpy().size) for w in model.trainable_weights) == trainable
    assert sum(int(w.numpy().size) for w in model.non_trainable_weights) == non_trainable
    assert model.output_shape == (None, 10)


def test_vgg11_full_width_is_the_cifar_vgg():
    model = models.vgg(11)
    assert model.count_params() == sum(_vgg_params(11, 1.0)) == 9_233_866
    assert model.layers[-1].units == 10 and model.layers[-2].output.shape[-1] == 512


def test_mnist1d_models_and_get():
    assert models.cnn1d().output_shape == (None, 10)
    assert models.cnn1d().input_shape == (None, 40, 1)
    mlp = models.mlp(depth=3, hidden=20)
    assert mlp.count_params() == (40 * 20 + 20) + 2 * (20 * 20 + 20) + (20 * 10 + 10)
    assert models.get("vgg13", width=0.125).name == "vgg13_bn"
    with pytest.raises(ValueError, match="depth=12"):
        models.vgg(12)
    with pytest.raises(ValueError, match="width=0"):
        models.vgg(11, width=0)
    with pytest.raises(ValueError, match="model='resnet'"):
        models.get("resnet")

"""The `>>>` examples in the docstrings run and print what they say."""

import doctest

import pytest

import keras_hta
from keras_hta import schedules
from keras_hta.experiments import models

pytestmark = pytest.mark.harness  # run once, in the TensorFlow pass (tests/conftest.py)



@pytest.mark.parametrize("module", [schedules, models])
def test_docstring_examples(module):
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = [t for t in finder.find(module, globs={"keras_hta": keras_hta}) if t.examples]
    assert tests
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0 and result.attempted >= len(tests)

"""The package: two floors (the library never imports the harness), light imports, a CLI that answers at once."""

import ast
import json
import pathlib
import sys

import pytest
from conftest import run_bounded

pytestmark = pytest.mark.harness  # run once, in the TensorFlow pass (tests/conftest.py)


ROOT = pathlib.Path(__file__).resolve().parents[1]
HEAVY = ("matplotlib", "scipy", "keras_tuner", "tensorflow_datasets", "keras_hta.experiments")


def _imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names)


def test_the_library_never_imports_the_harness():
    library = [p for p in (ROOT / "keras_hta").glob("*.py")]
    assert len(library) >= 10
    for path in library:
        bad = [m for m in _imports(path) if m.startswith("keras_hta.experiments")]
        assert not bad, f"{path.name} imports {bad}"


def test_import_keras_hta_adds_no_harness_dependency():
    # Keras itself imports matplotlib and scipy when they are installed:
    # count only what `import keras_hta` adds after `import keras`.
    code = ("import json, sys; import keras; before = set(sys.modules); import keras_hta; "
            "print(json.dumps(sorted(set(sys.modules) - before)))")
    out = run_bounded([sys.executable, "-c", code], capture_output=True, text=True)
    added = json.loads(out.stdout.strip().splitlines()[-1])
    assert "keras_hta.homotopy_model" in added
    assert not [m for m in added if m.split(".")[0] in HEAVY or m.startswith(HEAVY[-1])], added


@pytest.mark.parametrize("command", [[], ["compare"], ["tune"], ["nonconvex"], ["export"]])
def test_cli_help_imports_no_tensorflow_and_prints_no_log_lines(command):
    # As the installed `keras-hta` script runs it (argv[0] names the command).
    code = ("import sys; sys.argv = ['/usr/bin/keras-hta'] + sys.argv[1:]\n"
            "from keras_hta.experiments.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'imported TensorFlow'\n")
    out = run_bounded([sys.executable, "-c", code] + command + ["--help"], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stderr == "" and "usage: keras-hta" in out.stdout
    if command and command[0] in ("compare", "tune"):
        options = out.stdout[out.stdout.index("  --epochs EPOCHS "):]
        help_text = " ".join(options[:options.index("--batch-size")].split())
        assert help_text.endswith("(default: 24)" if command[0] == "compare" else "(default: 6)"), help_text


@pytest.mark.parametrize("command", [["compare"], ["tune"], ["nonconvex"], ["export", "model.keras", "out"]])
def test_every_flag_with_a_default_says_it_in_help(command, capsys):
    from keras_hta.experiments.cli import build_parser

    parser = build_parser()
    defaults = {dest: value for dest, value in vars(parser.parse_args(command)).items()
                if value is not None and dest not in ("func", "command") and value not in command[1:]}
    with pytest.raises(SystemExit):
        parser.parse_args(command[:1] + ["--help"])
    text = capsys.readouterr().out
    assert len(defaults) >= (1 if command[0] == "export" else 5), defaults  # the flags' defaults, not positionals
    for dest, value in defaults.items():
        flag = "\n  --" + dest.replace("_", "-") + " "
        assert flag in text, (dest, text)
        block = text[text.index(flag) + 1:]
        block = " ".join(block[:block.find("\n  -", 1) if "\n  -" in block[1:] else None].split())
        assert block.endswith(f"(default: {value})"), (dest, block)


def test_cli_version_names_the_package_version_and_imports_no_keras():
    import keras_hta

    code = ("import sys; sys.argv = ['/usr/bin/keras-hta', '--version']\n"
            "from keras_hta.experiments.cli import main\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'imported Keras'\n")
    out = run_bounded([sys.executable, "-c", code], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"keras-hta {keras_hta.__version__}" and out.stderr == ""

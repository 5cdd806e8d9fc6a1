"""The CLI's bad paths: one line naming the problem and the fix, the contract's exit code."""

from __future__ import annotations

import dataclasses

import pytest
from PIL import Image

from tests.conftest import assert_one_line_error, edgetl_here, run_cli


def test_help_is_clean():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("train", "export", "validate", "classify", "bench", "info"):
        assert command in result.stdout
    assert result.stderr.strip() == ""


def test_export_and_validate_of_a_missing_run_dir(tmp_path):
    missing = tmp_path / "nope"
    for command in ("export", "validate"):
        assert_one_line_error(run_cli(command, str(missing)), 2, str(missing), "edgetl train")


def test_export_of_a_folder_that_is_not_a_run(tmp_path):
    assert_one_line_error(run_cli("export", str(tmp_path)), 2, "config.json")


def test_classify_missing_model(tmp_path):
    result = run_cli("classify", str(tmp_path / "m.tflite"), "--source", str(tmp_path))
    assert_one_line_error(result, 2, "m.tflite")


def test_classify_a_non_image_source(micro_run, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    result = run_cli("classify", str(micro_run / "model_int8.tflite"), "--source", str(text))
    assert_one_line_error(result, 2, "notes.txt", "not a readable image")


def test_classify_a_file_that_is_not_a_model(tmp_path):
    fake = tmp_path / "fake.tflite"
    fake.write_bytes(b"not a flatbuffer at all")
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    assert_one_line_error(run_cli("classify", str(fake), "--source", str(image)), 2, "fake.tflite")


def test_train_missing_data_folder(tmp_path):
    result = run_cli("train", "--data", str(tmp_path / "photos"), "--out", str(tmp_path / "run"))
    assert_one_line_error(result, 2, "photos", "class")


def test_tf_flowers_offline_fails_fast_with_exit_3(tmp_path):
    """No network here: tfds would retry for ~200 s; edgetl must say so at once."""
    env = {"TFDS_DATA_DIR": str(tmp_path / "tfds"), "EDGETL_CACHE": str(tmp_path / "cache")}
    result = run_cli("train", "--data", "tf_flowers", "--out", str(tmp_path / "run"), env=env)
    assert_one_line_error(result, 3, "tf_flowers", "network")


def test_unknown_tfds_dataset(tmp_path):
    env = {"TFDS_DATA_DIR": str(tmp_path / "tfds"), "EDGETL_CACHE": str(tmp_path / "cache")}
    result = edgetl_here(
        "train", "--data", "tfds:no_such_dataset_xyz", "--out", str(tmp_path / "r"), env=env
    )
    assert_one_line_error(result, 2, "no_such_dataset_xyz")


def test_help_at_80_columns_shows_every_option_whole_and_its_choices():
    """Pi users read --help in an 80-column terminal: no name cut short (the rich panels
    cut `--calibration-samples` to `--calibration-samp…`), choices listed by value."""
    from typer.main import get_command
    from typer.testing import CliRunner

    from toolchain.cli import app

    group = get_command(app)
    for name, command in group.commands.items():
        result = CliRunner().invoke(app, [name, "--help"], env={"COLUMNS": "80"})
        assert result.exit_code == 0, result.output
        assert max(len(line) for line in result.stdout.splitlines()) <= 80
        words = set(result.stdout.replace("/", " ").replace(",", " ").split())
        for param in command.params:
            for option in param.opts + param.secondary_opts:
                if option.startswith("-"):
                    assert option in words, (name, option)
    export_help = CliRunner().invoke(app, ["export", "--help"], env={"COLUMNS": "80"}).stdout
    assert "<int8|float16|dynamic|float32|all>" in export_help


def test_version():
    from typer.testing import CliRunner

    from toolchain import __version__
    from toolchain.cli import app

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"edgetl {__version__}"


def _help_entries(text: str) -> dict:
    """``--name`` → its --help entry (the option's lines joined, all whitespace removed,
    so a default wrapped across lines, even at a hyphen, reads whole)."""
    entries, current = {}, None
    for line in text.splitlines():
        if line.startswith("  -"):
            current = line.split()[0]
            entries[current] = ""
        if current:
            entries[current] += "".join(line.split())
    return entries


def _shown_default(field) -> str | None:
    if isinstance(field.default, bool):
        return (
            field.name.replace("_", "-") if field.default else "no-" + field.name.replace("_", "-")
        )
    if field.default in (None, ()) or field.default is dataclasses.MISSING:
        return None  # Typer shows no default for these
    return str(field.default)


@pytest.mark.parametrize(
    "command, options_class",
    [
        ("train", "TrainOptions"),
        ("export", "ExportOptions"),
        ("validate", "ValidateOptions"),
        ("classify", "ClassifyOptions"),
        ("bench", "BenchOptions"),
        ("parity", "ParityOptions"),
        ("serve", "ServeOptions"),
    ],
)
def test_every_option_field_is_in_help_with_its_default_range_and_choices(command, options_class):
    """The options dataclasses are the one declaration: each CLI field of one is an option
    of its command, with the field's default, range and choices, and nothing else is."""
    from typer.main import get_command
    from typer.testing import CliRunner

    from toolchain.cli import app
    from toolchain.cli_options import cli_fields, option_name
    from toolchain.core import device_options, options

    cls = getattr(options, options_class, None) or getattr(device_options, options_class)
    help_text = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "80"}).stdout
    entries = _help_entries(help_text)
    for field in cli_fields(cls):
        name = option_name(field)
        assert name in entries, (command, name)
        entry = entries[name]
        default = _shown_default(field)
        if default is not None:
            assert f"[default:{default}" in entry, (name, default, entry)
        else:
            assert "[default:" not in entry, (name, entry)
        meta = field.metadata
        if meta["min"] is not None:
            assert f"{meta['min']}<=x<={meta['max']}" in entry, (name, entry)
        if meta["choices"]:
            assert f"<{'|'.join(meta['choices'])}>" in entry, (name, entry)
        assert "".join(meta["help"].split()) in entry, (name, entry)

    declared = {option_name(f) for f in cli_fields(cls)}
    params = get_command(app).commands[command].params
    own = {opt for p in params for opt in p.opts if opt.startswith("--")} - declared
    assert own <= {"--help", "--json"}, own  # only what no dataclass holds is declared in cli.py
    non_cli = [f.name for f in dataclasses.fields(cls) if f not in cli_fields(cls)]
    for name in non_cli:
        assert "--" + name.replace("_", "-") not in entries


def test_options_reach_the_command_as_the_dataclass(monkeypatch):
    """What the user typed arrives whole: paths as str, repeated --model as a tuple."""
    import sys
    import types

    from typer.testing import CliRunner

    from toolchain.cli import app
    from toolchain.core.options import ValidateOptions

    seen = {}

    def fake_validate(run_dir, options, log=None):
        seen["options"] = options
        return {"keras": {"top1": 1.0, "top5": 1.0}, "n_images": 1, "models": []}

    # A stand-in parity module: no TensorFlow to start, only the call is checked.
    monkeypatch.setitem(
        sys.modules, "toolchain.validate.command", types.SimpleNamespace(validate=fake_validate)
    )
    runner = CliRunner()
    assert runner.invoke(app, ["validate", "run"]).exit_code == 0
    assert seen["options"] == ValidateOptions()
    args = ["validate", "run", "--model", "a.tflite", "--model", "b.tflite", "--max-drop", "1"]
    result = runner.invoke(app, [*args, "--runtime", "tensorflow", "--device-resize", "nearest"])
    assert result.exit_code == 0, result.output
    assert seen["options"] == ValidateOptions(
        models=("a.tflite", "b.tflite"), max_drop=1.0, runtime="tensorflow", device_resize="nearest"
    )

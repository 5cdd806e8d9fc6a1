"""The CLI's bad paths: one line naming the problem and the fix, the contract's exit code."""

from PIL import Image

from tests.conftest import assert_one_line_error, run_cli


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


def test_classify_a_non_image_source(tiny_run, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    result = run_cli("classify", str(tiny_run / "model_int8.tflite"), "--source", str(text))
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
    result = run_cli(
        "train", "--data", "tf_flowers", "--out", str(tmp_path / "run"), env=env, timeout=120
    )
    assert_one_line_error(result, 3, "tf_flowers", "network")


def test_unknown_tfds_dataset(tmp_path):
    env = {"TFDS_DATA_DIR": str(tmp_path / "tfds"), "EDGETL_CACHE": str(tmp_path / "cache")}
    result = run_cli(
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

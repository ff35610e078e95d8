"""The command line (issue 10): --set beside flags, help text, --version, the run folder's lock, resume."""

import re
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from fashiontag import __version__
from fashiontag.cli import app
from fashiontag.training.runlock import RunFolderBusy, run_lock
from helpers import tiny_config


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("command", ["train", "tune"])
def test_set_with_a_flag_for_the_same_field_is_an_error_naming_both(command, catalog, tmp_path):
    result = invoke(command, "--data", catalog.root, "--out", tmp_path / "run", "--epochs", 2, "--set", "epochs=1")
    assert result.exit_code == 2
    assert "--epochs and --set epochs= both given" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, epochs, patience", [
    ([], 30, 8),                                    # the default: early stopping after 8 stale epochs
    (["--epochs", "40"], 40, 40),                   # asked for, trained: no early stopping
    (["--epochs", "40", "--set", "patience=3"], 40, 3),
])
def test_epochs_given_are_epochs_trained_unless_patience_is_given_too(args, epochs, patience, catalog, tmp_path,
                                                                     monkeypatch):
    import fashiontag.training.train
    seen = {}

    def fake_train(cfg, resume):
        seen["cfg"] = cfg
        return tmp_path

    monkeypatch.setattr(fashiontag.training.train, "train", fake_train)
    result = invoke("train", "--data", catalog.root, "--out", tmp_path / "run", "--no-progress", *args)
    assert result.exit_code == 0, result.output
    assert (seen["cfg"].epochs, seen["cfg"].patience) == (epochs, patience)


def test_set_alone_sets_a_field_that_has_a_flag(catalog, tmp_path, monkeypatch):
    import fashiontag.training.train
    seen = {}

    def fake_train(cfg, resume):
        seen["cfg"] = cfg
        return tmp_path

    monkeypatch.setattr(fashiontag.training.train, "train", fake_train)
    result = invoke("train", "--data", catalog.root, "--set", "epochs=1", "--set", "out=" + str(tmp_path / "x"),
                    "--no-progress")
    assert result.exit_code == 0, result.output
    assert seen["cfg"].epochs == 1 and seen["cfg"].out == str(tmp_path / "x") and seen["cfg"].progress is False


@pytest.mark.parametrize("command", ["train", "tune", "run", "explore"])
def test_help_shows_defaults_and_no_python_types(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0
    assert "<str>" not in result.output and "<bool>" not in result.output and "<int>" not in result.output
    assert "runs/" in result.output or command == "explore"
    assert "reports/explore" in result.output or command != "explore"


def test_train_help_describes_every_option():
    help_text = invoke("train", "--help").output
    for flag in ("--epochs N", "--batch-size N", "--lr RATE", "--seed N"):
        line = next(line for line in help_text.splitlines() if line.strip().startswith(flag))
        assert len(line.split()) > len(flag.split()), line  # a description follows the flag


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and __version__ in result.output


def test_a_second_training_on_the_same_folder_is_refused(catalog, tmp_path):
    from fashiontag.training.train import train
    out = tmp_path / "run"
    with run_lock(out):
        with pytest.raises(RunFolderBusy, match=f"{out} is in use by another training"):
            train(tiny_config(catalog.root, out))
    with run_lock(out):  # released on leaving
        pass


def test_the_refusal_names_the_other_process(catalog, tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from fashiontag.training.runlock import run_lock
        with run_lock({str(out)!r}):
            print("locked", flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = invoke("train", "--data", catalog.root, "--out", out, "--epochs", 1)
        assert result.exit_code == 2
        assert f"{out} is in use by another training (pid {holder.pid})" in result.output
    finally:
        holder.kill()
        holder.wait()


def test_run_resume_without_resume_state_says_it_starts_from_scratch(catalog, tmp_path, monkeypatch):
    import fashiontag.training.evaluate
    import fashiontag.training.train
    calls = []

    def fake_train(cfg, resume):
        calls.append(resume)
        return tmp_path / "run" / "best"

    monkeypatch.setattr(fashiontag.training.train, "train", fake_train)
    monkeypatch.setattr(fashiontag.training.evaluate, "evaluate", lambda data, *, model, out, side: {"tasks": {}})
    result = invoke("run", "--data", catalog.root, "--out", tmp_path / "run", "--resume")
    assert result.exit_code == 0, result.output
    assert f"nothing to resume: {tmp_path / 'run' / 'last'} does not exist; training from scratch" in result.output
    assert calls == [False]


@pytest.mark.parametrize("family", __import__("fashiontag.models", fromlist=["model_names"]).model_names())
def test_every_model_family_the_help_offers_trains_with_its_own_defaults(family, catalog, tmp_path):
    """Each family gets its own default arguments (rescnn's width once went to every family, a TypeError); one
    epoch of 16 photos at 32x32, the smallest input every family takes."""
    assert family in invoke("train", "--help").output
    out = tmp_path / "run"
    result = invoke("train", "--data", catalog.root, "--model", family, "--out", out, "--epochs", 1, "--max-train",
                    16, "--batch-size", 16, "--image-size", "32x32", "--no-progress", "--set", "threads=1",
                    "--set", "min_count=2", "--set", "ema=0")
    assert result.exit_code == 0, result.output
    from fashiontag.model_folder import load_meta
    from fashiontag.models import family_args
    meta = load_meta(out / "best")
    assert meta["arch"] == family and meta["arch_args"] == family_args(family, {})  # recorded in full
    assert meta["input_hw"] == [32, 32]
    assert re.search(r"expected epoch time: \d+(\.\d)? s \(", result.output), result.output  # not "0.0 min"


def test_an_argument_the_family_does_not_take_is_named_with_those_it_takes(catalog, tmp_path):
    result = invoke("train", "--data", catalog.root, "--model", "seed-cnn", "--set",
                    'model_args={"width": 16}', "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert "model 'seed-cnn' takes no 'width'; its arguments are batch_norm, dense, dropout, filters" in result.output


def test_a_model_folder_is_rebuilt_from_its_own_arguments_not_the_familys_defaults():
    """model.json records the arguments a model was trained with; one that leaves stem_stride out (a run from before
    the families had default arguments) was built with the constructor's stride 1, and must load as it was."""
    from fashiontag.models import create_model
    assert create_model("rescnn", {"gender": 2}, width=8).trunk[1][0].stride == (1, 1)

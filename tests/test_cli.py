import subprocess
import sys

import pytest

from mgpu_lab.cli import main, parse_range


def test_help_lists_the_commands():
    out = subprocess.run([sys.executable, "-m", "mgpu_lab", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for cmd in ("train", "limits", "bench"):
        assert cmd in out


def test_parse_range():
    assert parse_range("1-4") == [1, 2, 3, 4]
    assert parse_range("1,2,4") == [1, 2, 4]
    with pytest.raises(Exception, match="positive"):
        parse_range("0-2")


def test_train_prints_loss_and_accuracy(capsys):
    assert main(["train", "--model", "mlp", "--devices", "2", "--steps", "30",
                 "--engine", "serial", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "after 30 steps" in out and "test accuracy" in out

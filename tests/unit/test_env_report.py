"""ds_report prints its sections, the op table (empty or not) and honours its two flags."""
import subprocess
import sys

import torch

import deepspeed
from deepspeed import env_report
from deepspeed.ops.op_builder import ALL_OPS


class _GoodBuilder:
    NAME = "good_op"

    def absolute_name(self) -> str:
        return "json"  # importable, so it counts as pre-built

    def is_compatible(self) -> bool:
        return True


class _BadBuilder:
    NAME = "bad_op"

    def absolute_name(self) -> str:
        return "deepspeed.ops.no_such_module_op"

    def is_compatible(self) -> bool:
        raise RuntimeError("probe exploded")


def test_report_sections_with_no_ops(capsys, monkeypatch):
    monkeypatch.setattr(env_report, "ALL_OPS", {})
    env_report.main()
    out = capsys.readouterr().out
    assert "DeepSpeed C++/CUDA extension op report" in out
    assert "no ops registered" in out
    assert "DeepSpeed general environment info:" in out
    for label in ("deepspeed version", "torch version", "torch install path", "python version",
                  "transformers version", "accelerator", "communication backend", "nvcc", "ninja",
                  "c++ compiler", "shared memory (/dev/shm) size"):
        assert f"\n{label} ." in out, label
    assert deepspeed.__version__ in out and torch.__version__ in out
    assert sys.version.split()[0] in out


def test_op_table_rows(capsys, monkeypatch):
    monkeypatch.setattr(env_report, "ALL_OPS", {"good_op": _GoodBuilder, "bad_op": _BadBuilder})
    rows, problems = env_report.op_report()
    assert rows == [("bad_op", "no", "?", "JIT"), ("good_op", "yes", "yes", "prebuilt")]
    assert len(problems) == 1 and "probe exploded" in problems[0]
    env_report.main()
    out = capsys.readouterr().out
    assert "no ops registered" not in out
    assert "op name" in out and "loaded as" in out
    assert "probe exploded" in out
    env_report.main(hide_errors_and_warnings=True)
    assert "probe exploded" not in capsys.readouterr().out
    env_report.main(hide_operator_status=True)
    out = capsys.readouterr().out
    assert "op report" not in out and "good_op" not in out
    assert "DeepSpeed general environment info:" in out


def test_real_registry_is_reported(capsys):
    env_report.main()
    out = capsys.readouterr().out
    if ALL_OPS:
        assert all(name in out for name in ALL_OPS)
    else:
        assert "no ops registered" in out


def test_cli_flags():
    done = subprocess.run([sys.executable, "-m", "deepspeed.env_report", "--hide_operator_status",
                           "--hide_errors_and_warnings"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "op report" not in done.stdout and "Errors and warnings" not in done.stdout
    assert "DeepSpeed general environment info:" in done.stdout

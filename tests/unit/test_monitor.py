"""Monitor backends: read back what was written, fake wandb/comet, rank-0 only."""
import csv
import os
import sys
import types

import pytest
import torch

from deepspeed.monitor import CometMonitor, MonitorMaster, TensorBoardMonitor, WandbMonitor, csvMonitor
from deepspeed.monitor.config import (
    CSVConfig,
    CometConfig,
    DeepSpeedMonitorConfig,
    TensorBoardConfig,
    WandbConfig,
    get_monitor_config,
)

EVENTS = [
    ("Train/Samples/lr", 0.001, 8),
    ("Train/Samples/loss_scale", torch.tensor(65536.0), 8),
    ("Train/Samples/lr", torch.tensor(0.002, dtype=torch.float64), torch.tensor(16)),
    ("Train/Samples/loss_scale", 32768.0, 16),
]


def read_tb(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


class FakeWandb(types.ModuleType):
    def __init__(self):
        super().__init__("wandb")
        self.init_kwargs = None
        self.logged = []

    def init(self, **kwargs):
        self.init_kwargs = kwargs

    def log(self, data, step=None, commit=None):
        self.logged.append((data, step))


@pytest.fixture
def fake_wandb(monkeypatch):
    mod = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", mod)
    return mod


def test_tensorboard_scalars_read_back(tmp_path):
    mon = TensorBoardMonitor(TensorBoardConfig(enabled=True, output_path=str(tmp_path), job_name="job"))
    mon.write_events(EVENTS)
    mon.close()
    scalars = read_tb(tmp_path / "job")
    assert scalars["Train/Samples/lr"] == [(8, pytest.approx(0.001)), (16, pytest.approx(0.002))]
    assert scalars["Train/Samples/loss_scale"] == [(8, 65536.0), (16, 32768.0)]


def test_tensorboard_default_output_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mon = TensorBoardMonitor(TensorBoardConfig(enabled=True))
    mon.write_events([("a", 1.0, 1)])
    mon.close()
    assert read_tb(tmp_path / "runs" / "DeepSpeedJobName") == {"a": [(1, 1.0)]}


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_csv_files_headers_rows(tmp_path):
    mon = csvMonitor(CSVConfig(enabled=True, output_path=str(tmp_path), job_name="job"))
    mon.write_events(EVENTS)
    mon.write_events([("Train/Samples/lr", 0.003, 24), ("plain name", 7, 3)])
    log_dir = tmp_path / "job"
    assert sorted(os.listdir(log_dir)) == ["Train_Samples_loss_scale.csv", "Train_Samples_lr.csv", "plain_name.csv"]
    lr = read_csv(log_dir / "Train_Samples_lr.csv")
    assert lr[0] == ["step", "lr"]
    assert [(int(s), float(v)) for s, v in lr[1:]] == [(8, 0.001), (16, pytest.approx(0.002)), (24, 0.003)]
    assert read_csv(log_dir / "Train_Samples_loss_scale.csv") == [
        ["step", "loss_scale"], ["8", "65536.0"], ["16", "32768.0"]]
    assert read_csv(log_dir / "plain_name.csv") == [["step", "plain name"], ["3", "7.0"]]

    # A new monitor on the same directory (a resumed run) appends without a second header.
    again = csvMonitor(CSVConfig(enabled=True, output_path=str(tmp_path), job_name="job"))
    again.write_events([("Train/Samples/lr", 0.004, 32)])
    lr = read_csv(log_dir / "Train_Samples_lr.csv")
    assert lr[0] == ["step", "lr"] and lr[-1] == ["32", "0.004"] and len(lr) == 5


def test_wandb_fake_module(fake_wandb):
    mon = WandbMonitor(WandbConfig(enabled=True, group="g", team="t", project="p"))
    assert fake_wandb.init_kwargs == {"project": "p", "group": "g", "entity": "t"}
    mon.write_events(EVENTS)
    assert fake_wandb.logged == [
        ({"Train/Samples/lr": 0.001}, 8),
        ({"Train/Samples/loss_scale": 65536.0}, 8),
        ({"Train/Samples/lr": pytest.approx(0.002)}, 16),
        ({"Train/Samples/loss_scale": 32768.0}, 16),
    ]
    assert all(type(v) is float for data, _ in fake_wandb.logged for v in data.values())
    assert all(type(step) is int for _, step in fake_wandb.logged)


def test_wandb_missing_package_is_clear(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` fail
    with pytest.raises(ImportError, match="pip install wandb"):
        WandbMonitor(WandbConfig(enabled=True))
    WandbMonitor(WandbConfig(enabled=False)).write_events(EVENTS)  # disabled: no import at all


def test_comet_fake_module_throttles_per_name(monkeypatch):
    logged, started = [], {}

    class Experiment:
        def set_name(self, name):
            started["name"] = name

        def log_metric(self, name, value, step=None):
            logged.append((name, value, step))

    def start(**kwargs):
        started.update(kwargs)
        return Experiment()

    monkeypatch.setitem(sys.modules, "comet_ml", types.SimpleNamespace(start=start))
    mon = CometMonitor(CometConfig(enabled=True, samples_log_interval=10, project="p", experiment_name="e"))
    assert started["project"] == "p" and started["name"] == "e"
    mon.write_events([("a", 1.0, 0), ("b", 2.0, 0), ("a", 3.0, 5), ("a", 4.0, 10), ("b", 5.0, 12)])
    assert logged == [("a", 1.0, 0), ("b", 2.0, 0), ("a", 4.0, 10), ("b", 5.0, 12)]


def make_config(tmp_path, **extra):
    return get_monitor_config({
        "tensorboard": {"enabled": True, "output_path": str(tmp_path / "tb"), "job_name": "j"},
        "csv_monitor": {"enabled": True, "output_path": str(tmp_path / "csv"), "job_name": "j"},
        "wandb": {"enabled": True, "project": "proj"},
        **extra,
    })


def test_monitor_master_rank0_writes_everywhere(tmp_path, fake_wandb):
    master = MonitorMaster(make_config(tmp_path), rank=0)
    assert master.enabled
    assert [type(w) for w in master.writers] == [TensorBoardMonitor, csvMonitor, WandbMonitor]
    master.write_events(EVENTS)
    master.close()
    assert read_tb(tmp_path / "tb" / "j")["Train/Samples/loss_scale"] == [(8, 65536.0), (16, 32768.0)]
    assert read_csv(tmp_path / "csv" / "j" / "Train_Samples_lr.csv")[1] == ["8", "0.001"]
    assert len(fake_wandb.logged) == 4


def test_monitor_master_other_ranks_write_nothing(tmp_path, fake_wandb):
    master = MonitorMaster(make_config(tmp_path), rank=1)
    assert master.enabled  # follows the config on every rank
    assert master.writers == []
    master.write_events(EVENTS)
    master.close()
    assert list(tmp_path.iterdir()) == []
    assert fake_wandb.init_kwargs is None and fake_wandb.logged == []


def test_disabled_config_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "wandb", None)  # would raise if imported
    cfg = DeepSpeedMonitorConfig()
    master = MonitorMaster(cfg, rank=0)
    assert not master.enabled and master.writers == []
    master.write_events(EVENTS)
    for mon in (TensorBoardMonitor(cfg.tensorboard), csvMonitor(cfg.csv_monitor)):
        mon.write_events(EVENTS)
        mon.close()
    assert list(tmp_path.iterdir()) == []


def test_importing_monitor_does_not_load_optional_packages():
    import subprocess

    code = ("import sys, deepspeed.monitor; "
            "print(any(m in sys.modules for m in ('wandb', 'comet_ml', 'torch.utils.tensorboard')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

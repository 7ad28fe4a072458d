"""The launcher's pure steps: hostfile, include/exclude, world info, env export, runner command lines."""
import argparse
import base64
import json
import shlex
import sys

import pytest

from deepspeed.launcher import runner
from deepspeed.launcher.launch import (build_rank_specs, decode_world_info, encode_world_info, exit_code_of,
                                       parse_args as launch_parse_args, parse_core_list)


class FakeAccelerator:
    """Just the accelerator methods the runner uses."""

    def __init__(self, name: str = "cpu", count: int = 1) -> None:
        self.name, self.count = name, count

    def device_name(self) -> str:
        return self.name

    def device_count(self) -> int:
        return self.count

    def visible_devices_envs(self) -> list:
        return ["CUDA_VISIBLE_DEVICES"]

    def export_envs(self) -> list:
        return ["NCCL"] if self.name == "cuda" else []


def cli(*argv: str) -> argparse.Namespace:
    return runner.parse_args(list(argv) + ["train.py"])


# ----------------------------------------------------------------- hostfile
def test_hostfile_parses_comments_blanks_and_order():
    lines = ["# cluster", "", "worker-1 slots=4", "  worker-0 slots=2  # inline comment", "\t"]
    assert list(runner.parse_hostfile(lines).items()) == [("worker-1", 4), ("worker-0", 2)]


@pytest.mark.parametrize("lines, lineno, words", [
    (["a slots=2", "b slots=2", "a slots=4"], 3, "more than once"),
    (["a slots=2", "b"], 2, "host slots=N"),
    (["a slots=2", "", "b gpus=2"], 3, "host slots=N"),
    (["a slots=x"], 1, "positive integer"),
    (["a slots=0"], 1, "positive integer"),
    (["a slots=1 extra"], 1, "host slots=N"),
])
def test_hostfile_errors_name_the_line(lines, lineno, words):
    with pytest.raises(ValueError, match=rf"hf:{lineno}: .*{words}"):
        runner.parse_hostfile(lines, source="hf")


def test_hostfile_without_hosts_is_an_error():
    with pytest.raises(ValueError, match="no hosts"):
        runner.parse_hostfile(["# nothing", ""])


def test_fetch_hostfile(tmp_path):
    assert runner.fetch_hostfile(str(tmp_path / "missing")) is None
    path = tmp_path / "hostfile"
    path.write_text("a slots=1\nb slots=3\n")
    assert runner.fetch_hostfile(str(path)) == {"a": 1, "b": 3}


# ------------------------------------------------------- include / exclude
POOL = {"a": [0, 1, 2, 3], "b": [0, 1, 2, 3], "c": [0, 1]}


def test_filter_syntax():
    assert runner.parse_inclusion_exclusion("a:0,2@b") == {"a": [0, 2], "b": None}
    assert runner.parse_inclusion_exclusion("a:0@a:3") == {"a": [0, 3]}
    assert runner.parse_inclusion_exclusion("a:0@a") == {"a": None}
    with pytest.raises(ValueError, match="integers"):
        runner.parse_inclusion_exclusion("a:x")
    with pytest.raises(ValueError, match="empty node"):
        runner.parse_inclusion_exclusion("a@@b")


@pytest.mark.parametrize("include, exclude, expected", [
    ("", "", POOL),
    ("b", "", {"b": [0, 1, 2, 3]}),
    ("c@a:3,1", "", {"a": [1, 3], "c": [0, 1]}),  # pool order, not filter order
    ("", "a", {"b": [0, 1, 2, 3], "c": [0, 1]}),
    ("", "b:0,3@c:1", {"a": [0, 1, 2, 3], "b": [1, 2], "c": [0]}),
    ("", "c:0,1", {"a": [0, 1, 2, 3], "b": [0, 1, 2, 3]}),  # a node left without slots is dropped
])
def test_resource_filter(include, exclude, expected):
    assert runner.parse_resource_filter(POOL, include, exclude) == expected


@pytest.mark.parametrize("include, exclude, words", [
    ("a", "b", "mutually exclusive"),
    ("z", "", "'z' is not in the resource pool"),
    ("", "c:5", "slot 5 of node 'c'"),
    ("", "a@b@c", "no resources left"),
])
def test_resource_filter_errors(include, exclude, words):
    with pytest.raises(ValueError, match=words):
        runner.parse_resource_filter(POOL, include, exclude)


def test_local_pool_on_cpu_is_process_numbers():
    accel = FakeAccelerator("cpu")
    assert runner.resolve_active_resources(cli(), {}, accel, None) == {"localhost": [0]}
    assert runner.resolve_active_resources(cli("--num_gpus", "3"), {}, accel, None) == {"localhost": [0, 1, 2]}
    assert runner.resolve_active_resources(cli("--num_accelerators", "2"), {}, accel, None) == {"localhost": [0, 1]}
    # A CPU machine's CUDA_VISIBLE_DEVICES means nothing to the launcher.
    assert runner.resolve_active_resources(cli(), {"CUDA_VISIBLE_DEVICES": "3"}, accel, None) == {"localhost": [0]}


def test_local_pool_on_gpu():
    accel = FakeAccelerator("cuda", count=4)
    assert runner.resolve_active_resources(cli(), {}, accel, None) == {"localhost": [0, 1, 2, 3]}
    assert runner.resolve_active_resources(cli("--num_gpus", "2"), {}, accel, None) == {"localhost": [0, 1]}
    assert runner.resolve_active_resources(cli("-e", "localhost:0"), {}, accel, None) == {"localhost": [1, 2, 3]}
    # An existing CUDA_VISIBLE_DEVICES becomes an include of those ids.
    env = {"CUDA_VISIBLE_DEVICES": "1,3"}
    assert runner.resolve_active_resources(cli(), env, FakeAccelerator("cuda", 2), None) == {"localhost": [1, 3]}
    with pytest.raises(ValueError, match="has only 4 slot"):
        runner.resolve_active_resources(cli("--num_gpus", "8"), {}, accel, None)


def test_counts_on_a_hostfile():
    hostfile = {"a": 4, "b": 4, "c": 2}
    accel = FakeAccelerator("cuda", 8)
    assert runner.resolve_active_resources(cli("--num_nodes", "2"), {}, accel, hostfile) == \
        {"a": [0, 1, 2, 3], "b": [0, 1, 2, 3]}
    assert runner.resolve_active_resources(cli("--num_gpus", "1"), {}, accel, hostfile) == \
        {"a": [0], "b": [0], "c": [0]}
    assert runner.resolve_active_resources(cli("-i", "b:1"), {"CUDA_VISIBLE_DEVICES": "0"}, accel, hostfile) == \
        {"b": [1]}
    with pytest.raises(ValueError, match="only 3 node"):
        runner.resolve_active_resources(cli("--num_nodes", "4"), {}, accel, hostfile)


@pytest.mark.parametrize("argv", [("-i", "a", "--num_gpus", "1"), ("-e", "a", "--num_nodes", "1")])
def test_filters_and_counts_exclude_each_other(argv):
    with pytest.raises(ValueError, match="cannot be combined"):
        runner.resolve_active_resources(cli(*argv), {}, FakeAccelerator(), {"a": 2, "b": 2})


# -------------------------------------------------------------- world info
def test_world_info_round_trip_keeps_node_order():
    info = {"worker-9": [0, 2], "worker-1": [1], "localhost": [0, 1, 2, 3]}
    encoded = encode_world_info(info)
    assert decode_world_info(encoded) == info
    assert list(decode_world_info(encoded)) == ["worker-9", "worker-1", "localhost"]
    assert json.loads(base64.urlsafe_b64decode(encoded)) == info  # the documented wire format
    assert shlex.quote(encoded) == encoded  # one shell-safe word


# ------------------------------------------------------------- env export
def test_deepspeed_env_file(tmp_path):
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir(), cwd.mkdir()
    (home / ".deepspeed_env").write_text("# comment\nA=home\nB=1=2\n\n")
    (cwd / ".deepspeed_env").write_text("A=cwd\nC = spaced \n")
    assert runner.load_deepspeed_env({}, [str(home), str(cwd)]) == {"A": "cwd", "B": "1=2", "C": "spaced"}
    (cwd / "custom_env").write_text("D=4\n")
    assert runner.load_deepspeed_env({"DS_ENV_FILE": "custom_env"}, [str(home), str(cwd)]) == {"D": "4"}
    (cwd / "bad_env").write_text("OK=1\nnot a pair\n")
    with pytest.raises(ValueError, match="bad_env:2"):
        runner.load_deepspeed_env({"DS_ENV_FILE": "bad_env"}, [str(cwd)])


def test_collect_exports():
    environ = {"NCCL_DEBUG": "INFO", "PYTHONHASHSEED": "0", "MV2_X": "1", "UCX_TLS": "tcp", "MLFLOW_URI": "u",
               "HOME": "/root", "PATH": "/bin", "PYTHONPATH": "/lib"}
    exports = runner.collect_exports(environ, ["NCCL", "PYTHON", "MV2", "UCX", "MLFLOW"], {"X": "1"}, "/job")
    assert exports == {"NCCL_DEBUG": "INFO", "PYTHONHASHSEED": "0", "MV2_X": "1", "UCX_TLS": "tcp",
                       "MLFLOW_URI": "u", "PYTHONPATH": "/job:/lib", "X": "1"}
    assert runner.collect_exports({}, ["NCCL"], {}, "/job") == {"PYTHONPATH": "/job"}


# ------------------------------------------------------ dry-run commands
@pytest.fixture
def job_dir(tmp_path, monkeypatch):
    """A cwd with a 2x2 hostfile and a .deepspeed_env, and a HOME without one."""
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DS_ENV_FILE", raising=False)
    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "eth0")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hostfile").write_text("node-a slots=2\nnode-b slots=2\n")
    (tmp_path / ".deepspeed_env").write_text("MY_VAR=hello world\n")
    return tmp_path


def dry_run(capsys, *argv: str) -> list:
    assert runner.main(["--dry_run", "-H", "hostfile", *argv, "train.py", "--lr", "0.1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1, lines
    return shlex.split(lines[0])


def test_dry_run_pdsh(job_dir, capsys):
    cmd = dry_run(capsys, "--launcher", "pdsh", "--master_port", "1234")
    assert cmd[:6] == ["pdsh", "-S", "-f", "1024", "-w", "node-a,node-b"]
    remote = cmd[-1]
    assert "export MY_VAR='hello world';" in remote
    assert "export NCCL_SOCKET_IFNAME=eth0;" in remote
    assert f"export PYTHONPATH={job_dir}" in remote
    assert f"cd {job_dir};" in remote
    launch = shlex.split(remote.rsplit(";", 1)[1])
    assert launch[1:4] == ["-u", "-m", "deepspeed.launcher.launch"]
    world = [a for a in launch if a.startswith("--world_info=")][0].split("=", 1)[1]
    assert decode_world_info(world) == {"node-a": [0, 1], "node-b": [0, 1]}
    assert "--node_rank=%n" in launch and "--master_port=1234" in launch and "--master_addr=node-a" in launch
    assert launch[-3:] == ["train.py", "--lr", "0.1"]


def test_dry_run_openmpi(job_dir, capsys):
    cmd = dry_run(capsys, "--launcher", "openmpi", "--launcher_args", "--mca btl ^openib")
    assert cmd[:5] == ["mpirun", "-n", "4", "--host", "node-a:2,node-b:2"]
    assert "--mca" in cmd and "^openib" in cmd
    pairs = {cmd[i + 1] for i, a in enumerate(cmd) if a == "-x"}
    assert {"MY_VAR=hello world", "NCCL_SOCKET_IFNAME=eth0", "MASTER_ADDR=node-a", "MASTER_PORT=29500"} <= pairs
    assert cmd[-5:] == [sys.executable, "-u", "train.py", "--lr", "0.1"]


@pytest.mark.parametrize("launcher", ["mpich", "impi"])
def test_dry_run_mpich_and_impi(job_dir, capsys, launcher):
    cmd = dry_run(capsys, "--launcher", launcher)
    assert cmd[:5] == ["mpirun", "-ppn", "2", "-hosts", "node-a,node-b"]
    genv = {(cmd[i + 1], cmd[i + 2]) for i, a in enumerate(cmd) if a == "-genv"}
    assert {("MY_VAR", "hello world"), ("MASTER_ADDR", "node-a"), ("WORLD_SIZE", "4"), ("LOCAL_SIZE", "2")} <= genv
    sections = " ".join(shlex.quote(a) for a in cmd).split(" : ")
    assert len(sections) == 4
    for rank, section in enumerate(sections):
        assert f"-n 1 -env RANK {rank} -env LOCAL_RANK {rank % 2}" in section
        assert section.endswith(f"train.py --local_rank={rank % 2} --lr 0.1")


def test_dry_run_slurm(job_dir, capsys):
    cmd = dry_run(capsys, "--launcher", "slurm", "--num_gpus", "1")
    assert cmd[:5] == ["srun", "-n", "2", "-N", "2"]
    assert "--nodelist=node-a,node-b" in cmd
    export = [a for a in cmd if a.startswith("--export=")][0]
    assert export.startswith("--export=ALL,")
    assert "MY_VAR=hello world" in export.split(",") and "MASTER_PORT=29500" in export.split(",")


def test_mpi_runner_cannot_pick_device_ids(job_dir, capsys):
    assert runner.main(["--dry_run", "-H", "hostfile", "--launcher", "openmpi", "-i", "node-a:1@node-b:1",
                        "train.py"]) == 2
    assert "cannot select device ids" in capsys.readouterr().err


def test_dry_run_single_node(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    assert runner.main(["--dry_run", "-H", "no-such-file", "--num_gpus", "2", "--no_local_rank", "-m",
                        "pkg.train", "--x"]) == 0
    captured = capsys.readouterr()
    assert "no-such-file not found" in captured.err  # a non-default hostfile that is missing is worth a warning
    cmd = shlex.split(captured.out.strip())
    assert cmd[:4] == [sys.executable, "-u", "-m", "deepspeed.launcher.launch"]
    assert decode_world_info(cmd[4].split("=", 1)[1]) == {"localhost": [0, 1]}
    assert "--master_addr=127.0.0.1" in cmd and "--no_local_rank" in cmd and "--module" in cmd
    assert cmd[-2:] == ["pkg.train", "--x"]


def test_include_with_num_gpus_is_a_cli_error(job_dir, capsys):
    assert runner.main(["--dry_run", "-H", "hostfile", "-i", "node-a", "--num_gpus", "1", "t.py"]) == 2
    assert "cannot be combined" in capsys.readouterr().err


# ------------------------------------------------------------- launch.py
def test_rank_specs_for_second_node():
    world = {"a": [0, 1], "b": [4, 5, 6]}
    args = launch_parse_args([f"--world_info={encode_world_info(world)}", "--node_rank=1", "--master_addr=10.0.0.1",
                              "--master_port=777", "train.py", "--lr", "1"])
    specs = build_rank_specs(args, world, {"KEEP": "1"}, visible_devices_envs=["CUDA_VISIBLE_DEVICES"])
    assert [(s.global_rank, s.local_rank) for s in specs] == [(2, 0), (3, 1), (4, 2)]
    for s in specs:
        expected = {"RANK": str(s.global_rank), "LOCAL_RANK": str(s.local_rank), "WORLD_SIZE": "5",
                    "LOCAL_SIZE": "3", "CROSS_RANK": "1", "CROSS_SIZE": "2", "MASTER_ADDR": "10.0.0.1",
                    "MASTER_PORT": "777", "CUDA_VISIBLE_DEVICES": "4,5,6", "KEEP": "1"}
        assert {k: s.env.get(k) for k in expected} == expected
        assert s.cmd == [sys.executable, "-u", "train.py", f"--local_rank={s.local_rank}", "--lr", "1"]
        assert s.log_path is None and s.cores is None


def test_rank_specs_modes_and_binding(tmp_path):
    world = {"localhost": [0, 1]}
    base = [f"--world_info={encode_world_info(world)}"]
    module = build_rank_specs(launch_parse_args(base + ["--no_local_rank", "-m", "pkg.mod", "x"]), world, {})
    assert module[1].cmd == [sys.executable, "-u", "-m", "pkg.mod", "x"]
    assert "CUDA_VISIBLE_DEVICES" not in module[1].env  # CPU: no device ids to set
    exe = build_rank_specs(launch_parse_args(base + ["--no_python", "./run.sh"]), world, {})
    assert exe[0].cmd == ["./run.sh", "--local_rank=0"]
    bound = build_rank_specs(launch_parse_args(base + ["--bind_cores_to_rank", f"--enable_each_rank_log={tmp_path}",
                                                       "t.py"]), world, {}, available_cores=range(5))
    assert [s.cores for s in bound] == [[0, 1], [2, 3]]
    assert [s.env["OMP_NUM_THREADS"] for s in bound] == ["2", "2"]
    assert [s.log_path for s in bound] == [str(tmp_path / "rank_0.log"), str(tmp_path / "rank_1.log")]
    listed = build_rank_specs(launch_parse_args(base + ["--bind_cores_to_rank", "--bind_core_list=8-9,12,14",
                                                        "t.py"]), world, {})
    assert [s.cores for s in listed] == [[8, 9], [12, 14]]
    with pytest.raises(ValueError, match="out of range"):
        build_rank_specs(launch_parse_args(base + ["--node_rank=1", "t.py"]), world, {})


def test_core_list_and_exit_codes():
    assert parse_core_list("0-3, 8") == [0, 1, 2, 3, 8]
    with pytest.raises(ValueError):
        parse_core_list("5-2")
    assert exit_code_of(0) == 0 and exit_code_of(3) == 3 and exit_code_of(-15) == 143


def test_launch_rejects_module_with_no_python():
    with pytest.raises(SystemExit):
        launch_parse_args(["--world_info=x", "--module", "--no_python", "t"])

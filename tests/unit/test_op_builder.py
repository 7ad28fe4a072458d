"""The op builder: SIMD flags, cache keys, locks, compatibility, pre-built records, ds_report.

Builds compile the tiny ``noop`` test op (Python C API only, about a second),
never the real kernels; every build goes to a per-test cache directory.
"""
import os
import shutil
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from pathlib import Path

import pytest
import torch

import deepspeed.ops.op_builder as ob
from deepspeed import env_report
from deepspeed.ops.op_builder import builder as builder_mod
from deepspeed.ops.op_builder import installed as installed_mod
from deepspeed.ops.op_builder import simd as simd_mod
from deepspeed.ops.op_builder.build_lock import BuildLock, LockOwner
from deepspeed.ops.op_builder.simd import SIMD_LEVELS, detect_simd, missing_features, simd_flags

REPO = Path(__file__).resolve().parents[2]
_CAN_BUILD = shutil.which(os.environ.get("CXX", "c++")) is not None and shutil.which("ninja") is not None
needs_compiler = pytest.mark.skipif(not _CAN_BUILD, reason="needs a C++ compiler and ninja")

_AVX512 = {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx2", "fma", "f16c", "sse2"}
_AVX2 = {"avx2", "fma", "f16c", "sse2"}


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _noop(tmp_path, extra_flags=(), **kwargs) -> ob.NoopBuilder:
    """A noop builder caching under ``tmp_path``, with a flag unique to the test, so that a
    build loaded by an earlier test (modules stay in sys.modules) is never reused."""
    tag = f"-DNOOP_TEST_ID={zlib.crc32(str(tmp_path).encode())}"
    return ob.NoopBuilder(build_root=str(tmp_path / "cache"), extra_flags=[tag, *extra_flags], **kwargs)


# ---- SIMD detection and flags ---------------------------------------------------------


def test_simd_detection_from_feature_sets():
    assert detect_simd(_AVX512) == "avx512"
    assert detect_simd(_AVX2) == "avx2"
    assert detect_simd({"sse2"}) == "scalar"
    # AVX512F without BW is not enough for the AVX512 kernels; f16c is needed for fp16 loads.
    assert detect_simd(_AVX512 - {"avx512bw"}) == "avx2"
    assert detect_simd(_AVX2 - {"f16c"}) == "scalar"
    assert missing_features("avx512", _AVX2) == ["avx512f", "avx512bw", "avx512vl", "avx512dq"]
    with pytest.raises(ValueError):
        simd_flags("avx1024")


def test_simd_flags_per_level():
    assert "-D__AVX512__" in simd_flags("avx512") and "-mavx512f" in simd_flags("avx512")
    assert "-mavx512bw" in simd_flags("avx512") and "-D__AVX256__" not in simd_flags("avx512")
    assert {"-mavx2", "-mfma", "-mf16c", "-D__AVX256__"} <= set(simd_flags("avx2"))
    assert not any(f.startswith("-mavx512") for f in simd_flags("avx2"))
    assert simd_flags("scalar") == ["-D__SCALAR__"]
    for level in SIMD_LEVELS:
        args = ob.NoopBuilder(simd=level).cxx_args()
        assert args[:1] == ["-O3"] and "-fopenmp" in args and "-march=native" not in args
        assert args[-len(simd_flags(level)):] == simd_flags(level)
    assert "-fopenmp" in ob.NoopBuilder(simd="scalar").extra_ldflags()
    assert ob.NoopBuilder().simd == detect_simd()
    with pytest.raises(ValueError, match="unknown SIMD level"):
        ob.NoopBuilder(simd="sse")


# ---- cache key ------------------------------------------------------------------------


def test_cache_key_depends_on_simd_and_flags(tmp_path):
    names = {level: _noop(tmp_path, simd=level).jit_module_name() for level in SIMD_LEVELS}
    assert len(set(names.values())) == 3
    for level, name in names.items():
        assert name.startswith(f"noop_{level}_")
    same = _noop(tmp_path, simd="scalar")
    assert same.jit_module_name() == names["scalar"]  # deterministic
    flagged = _noop(tmp_path, simd="scalar", extra_flags=["-DNOOP_VALUE=3"])
    assert flagged.jit_module_name() != names["scalar"]
    assert flagged.build_key()["cxx_args"][-1] == "-DNOOP_VALUE=3"
    # Layout: <root>/<python+torch tag>/<module name>; the root does not enter the key.
    path = Path(same.build_directory())
    assert path.name == names["scalar"] and path.parent.parent == tmp_path / "cache"
    assert path.parent.name.startswith(f"py{sys.version_info.major}{sys.version_info.minor}")
    assert torch.__version__.split("+")[0] in path.parent.name
    elsewhere = ob.NoopBuilder(simd="scalar", build_root=str(tmp_path / "other"), extra_flags=same.extra_flags)
    assert elsewhere.jit_module_name() == names["scalar"]


def test_cache_key_depends_on_cpu_features(tmp_path, monkeypatch):
    before = _noop(tmp_path, simd="scalar").jit_module_name()
    monkeypatch.setattr(builder_mod, "cpu_features", lambda: frozenset({"sse2", "avx2"}))
    after = _noop(tmp_path, simd="scalar").jit_module_name()
    assert after != before  # a build for one CPU is never loaded on another


def test_torch_extensions_dir_is_the_default_root(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "tx"))
    path = Path(ob.NoopBuilder(simd="scalar").build_directory())
    assert path.parent.parent == tmp_path / "tx"


class _FileNoop(ob.NoopBuilder):
    """The noop op compiled from a copy, so that a test can edit it."""

    source = ""

    def sources(self):
        return [self.source]


def test_source_and_header_edits_change_the_key(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    cpp = src / "noop.cpp"
    cpp.write_text('#include "noop_value.h"\n' + (REPO / "csrc/test_ops/noop.cpp").read_text())
    header = src / "noop_value.h"
    header.write_text("#define NOOP_VALUE 1\n")
    builder = _FileNoop(simd="scalar", build_root=str(tmp_path / "cache"))
    builder.source = str(cpp)
    first = builder.jit_module_name()
    assert builder.jit_module_name() == first
    header.write_text("#define NOOP_VALUE 2\n")
    second = builder.jit_module_name()
    assert second != first
    cpp.write_text(cpp.read_text() + "\n// edited\n")
    assert builder.jit_module_name() not in (first, second)


def test_sources_resolve_in_the_checkout():
    builder = ob.NoopBuilder()
    assert builder.absolute_sources() == [str(REPO / "csrc/test_ops/noop.cpp")]
    with pytest.raises(ob.OpBuildError, match="not found"):
        builder.resolve_path("csrc/no/such/file.cpp")


# ---- real (tiny) builds ---------------------------------------------------------------


@needs_compiler
def test_jit_builds_variants_side_by_side(tmp_path):
    native = detect_simd()
    fast = _noop(tmp_path).load()
    scalar = _noop(tmp_path, simd="scalar").load()
    seven = _noop(tmp_path, simd="scalar", extra_flags=["-DNOOP_VALUE=7"]).load()
    assert fast.simd_level() == native and scalar.simd_level() == "scalar"
    assert fast.add_one(41) == 42 and scalar.add_one(-1) == 0
    assert (scalar.value(), seven.value()) == (0, 7)  # the changed flag produced a new binary
    assert len({fast.__name__, scalar.__name__, seven.__name__}) == 3
    builds = list((tmp_path / "cache").glob("*/noop_*"))
    assert len(builds) == (2 if native == "scalar" else 3)
    # A second load in this process is the same module, without taking the lock again.
    again = _noop(tmp_path, simd="scalar")
    assert again.load() is scalar and again.last_wait_s == 0.0
    for module in (fast, scalar, seven):
        build_dir = Path(module.__file__).parent
        assert not (build_dir / "ds_build.lock").exists() and not (build_dir / "lock").exists()


@needs_compiler
def test_compile_error_is_reported_and_releases_the_locks(tmp_path):
    bad = tmp_path / "bad.cpp"
    bad.write_text("this is not C++;\n")
    builder = _FileNoop(simd="scalar", build_root=str(tmp_path / "cache"))
    builder.source = str(bad)
    for _ in range(2):  # the retry sees the same compile error, not a stale lock
        with pytest.raises(ob.OpBuildError, match="building op noop .* failed"):
            builder.jit_load()
    build_dir = Path(builder.build_directory())
    assert not (build_dir / "ds_build.lock").exists() and not (build_dir / "lock").exists()


# ---- locks ----------------------------------------------------------------------------


def _write_lock(path: Path, owner: LockOwner) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(owner.to_json())


@needs_compiler
def test_stale_lock_from_dead_pid_is_reported_quickly(tmp_path):
    builder = _noop(tmp_path, simd="scalar")
    lock = Path(builder.build_directory()) / "ds_build.lock"
    pid = _dead_pid()
    _write_lock(lock, LockOwner(host=LockOwner.current().host, pid=pid, started=time.time() - 60))
    start = time.monotonic()
    with pytest.raises(ob.OpBuildError) as err:
        builder.jit_load()
    assert time.monotonic() - start < 5
    message = str(err.value)
    assert str(lock) in message and f"PID {pid}" in message and f"Delete {lock} and retry" in message
    assert lock.exists()  # reported, not silently removed
    lock.unlink()
    assert builder.load().add_one(1) == 2  # following the advice works


@needs_compiler
def test_stale_torch_lock_is_reported_not_waited_on(tmp_path):
    builder = _noop(tmp_path, simd="scalar")
    torch_lock = Path(builder.build_directory()) / "lock"
    torch_lock.parent.mkdir(parents=True)
    torch_lock.touch()  # what torch's FileBaton leaves when a build is killed
    start = time.monotonic()
    with pytest.raises(ob.OpBuildError) as err:
        builder.jit_load()
    assert time.monotonic() - start < 5
    assert f"Delete {torch_lock} and retry" in str(err.value) and "PyTorch" in str(err.value)
    assert not (torch_lock.parent / "ds_build.lock").exists()  # ours was released
    torch_lock.unlink()
    assert builder.load().add_one(2) == 3


def test_lock_waits_for_a_live_holder_then_acquires(tmp_path):
    path = str(tmp_path / "x.lock")
    holder = BuildLock(path, timeout_s=10, poll_s=0.02)
    holder.acquire()
    assert LockOwner.from_json(Path(path).read_text()).pid == os.getpid()
    timer = threading.Timer(0.5, holder.release)
    timer.start()
    waiter = BuildLock(path, timeout_s=10, poll_s=0.02)
    with waiter:
        assert waiter.waited_s >= 0.4
    timer.join()
    assert not os.path.exists(path)


def test_lock_timeout_names_the_holder(tmp_path):
    path = tmp_path / "x.lock"
    _write_lock(path, LockOwner.current())  # alive: this very process
    start = time.monotonic()
    with pytest.raises(ob.OpBuildError, match="timed out after .* build_timeout_s") as err:
        BuildLock(str(path), timeout_s=0.3, poll_s=0.05).acquire()
    assert 0.3 <= time.monotonic() - start < 5
    assert f"PID {os.getpid()}" in str(err.value) and str(path) in str(err.value)


def test_builder_timeout_is_configurable():
    assert ob.NoopBuilder().build_timeout_s == ob.OpBuilder.BUILD_TIMEOUT_S == 1800.0
    assert ob.NoopBuilder(build_timeout_s=5).build_timeout_s == 5.0


def test_lock_from_another_host(tmp_path):
    path = tmp_path / "x.lock"
    _write_lock(path, LockOwner(host="some-other-node", pid=1, started=time.time()))
    with pytest.raises(ob.OpBuildError, match="timed out"):  # fresh: it may be building, so wait
        BuildLock(str(path), timeout_s=0.2, poll_s=0.05).acquire()
    _write_lock(path, LockOwner(host="some-other-node", pid=1, started=time.time() - 3 * 3600))
    with pytest.raises(ob.OpBuildError, match="stale op build lock .*another host") as err:
        BuildLock(str(path), timeout_s=60, poll_s=0.05, foreign_stale_s=7200).acquire()
    assert f"Delete {path} and retry" in str(err.value)


def test_reused_pid_counts_as_dead(tmp_path):
    path = tmp_path / "x.lock"
    me = LockOwner.current()
    if me.proc_start is None:
        pytest.skip("no /proc start times on this platform")
    _write_lock(path, LockOwner(host=me.host, pid=me.pid, started=me.started, proc_start="1"))
    with pytest.raises(ob.OpBuildError, match="no longer running"):
        BuildLock(str(path), timeout_s=60, poll_s=0.05).acquire()


def test_unreadable_old_lock_is_reported(tmp_path):
    path = tmp_path / "x.lock"
    path.write_text("")
    old = time.time() - 60
    os.utime(path, (old, old))
    with pytest.raises(ob.OpBuildError, match="unreadable"):
        BuildLock(str(path), timeout_s=60, poll_s=0.05).acquire()


# ---- compatibility --------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the reasons given without a GPU")
@pytest.mark.parametrize("cls", [ob.FusedAdamBuilder, ob.QuantizerBuilder])
def test_cuda_builders_incompatible_here_with_reason(cls, monkeypatch):
    builder = cls()
    assert builder.is_compatible() is False
    assert builder.error_log and builder.compatible_reason == builder.error_log
    with pytest.raises(ob.OpBuildError, match=f"op {cls.NAME} cannot be built here"):
        builder.jit_load()
    # Each missing piece is named: a CUDA torch without nvcc, then without a GPU.
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(ob.CUDAOpBuilder, "nvcc_path", staticmethod(lambda: None))
    assert not builder.is_compatible() and "nvcc not found" in builder.error_log
    monkeypatch.setattr(ob.CUDAOpBuilder, "nvcc_path", staticmethod(lambda: "/usr/local/cuda/bin/nvcc"))
    if all(os.path.exists(p) for p in builder.absolute_sources()):
        assert builder.is_buildable() and not builder.is_compatible()
        assert "no CUDA GPU" in builder.error_log
    monkeypatch.setattr(torch.version, "cuda", None)
    assert not builder.is_compatible() and "built without CUDA" in builder.error_log


def test_cpu_builder_compatibility_reasons(monkeypatch):
    monkeypatch.setattr(simd_mod, "cpu_features", lambda: frozenset({"sse2"}))
    monkeypatch.setattr(simd_mod.platform, "machine", lambda: "x86_64")
    builder = ob.NoopBuilder(simd="avx512")
    assert not builder.is_compatible() and "avx512f" in builder.error_log
    assert ob.NoopBuilder(simd="scalar").is_compatible() == _CAN_BUILD or not shutil.which("ninja")
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    scalar = ob.NoopBuilder(simd="scalar")
    assert not scalar.is_compatible() and "no-such-compiler-xyz" in scalar.error_log


def test_missing_ninja_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr("torch.utils.cpp_extension.is_ninja_available", lambda: False)
    builder = _noop(tmp_path, simd="scalar")
    if not builder.is_compatible():
        pytest.skip(builder.error_log)
    with pytest.raises(ob.OpBuildError, match="needs ninja .*pip install ninja"):
        builder.jit_load()


# ---- registry, pre-built record, ds_report --------------------------------------------

_EXPECTED = {
    "cpu_adam": ("CPUAdamBuilder", "deepspeed.ops.adam.cpu_adam_op", ["csrc/cpu/adam/cpu_adam.cpp"]),
    "cpu_adagrad": ("CPUAdagradBuilder", "deepspeed.ops.adagrad.cpu_adagrad_op",
                    ["csrc/cpu/adagrad/cpu_adagrad.cpp"]),
    "cpu_lion": ("CPULionBuilder", "deepspeed.ops.lion.cpu_lion_op", ["csrc/cpu/lion/cpu_lion.cpp"]),
    "fused_adam": ("FusedAdamBuilder", "deepspeed.ops.adam.fused_adam_op",
                   ["csrc/adam/fused_adam_frontend.cpp", "csrc/adam/multi_tensor_adam.cu"]),
    "quantizer": ("QuantizerBuilder", "deepspeed.ops.quantizer.quantizer_op",
                  ["csrc/quantization/pt_binding.cpp", "csrc/quantization/quantize.cu",
                   "csrc/quantization/dequantize.cu"]),
    "cpu_quantizer": ("CPUQuantizerBuilder", "deepspeed.ops.quantizer.cpu_quantizer_op",
                      ["csrc/quantization/cpu_quantizer.cpp"]),
}


def test_all_ops_registry():
    assert set(_EXPECTED) <= set(ob.ALL_OPS)  # later issues add more ops
    assert "noop" not in ob.ALL_OPS  # the test op is never listed or pre-built
    for name, (class_name, module, sources) in _EXPECTED.items():
        builder = ob.ALL_OPS[name]()
        assert type(builder).__name__ == class_name and getattr(ob, class_name) is type(builder)
        assert builder.absolute_name() == module and builder.sources() == sources
        assert "csrc/includes" in builder.include_paths()
    for name, cls in ob.ALL_OPS.items():
        builder = cls()
        assert cls.NAME == name and cls.BUILD_VAR == f"DS_BUILD_{name.upper()}"
        assert builder.absolute_name().startswith("deepspeed.ops.") and builder.absolute_name().endswith("_op")
        assert issubclass(cls, ob.CUDAOpBuilder) == any(s.endswith(".cu") for s in builder.sources())
        assert issubclass(cls, (ob.CPUOpBuilder, ob.CUDAOpBuilder))


class _JsonNoop(ob.NoopBuilder):
    """Pretends to be pre-built as the (importable) json module."""

    def absolute_name(self):
        return "json"


def test_prebuilt_record_decides_how_load_works(tmp_path, monkeypatch):
    record = tmp_path / "installed_ops.json"
    monkeypatch.setattr(installed_mod, "INSTALLED_OPS_FILE", str(record))
    builder = _JsonNoop(simd="scalar", build_root=str(tmp_path / "cache"))
    assert not builder.is_prebuilt()  # no record: nothing pre-built
    entry = {"module": "json", "torch": torch.__version__, "variant": "scalar"}
    installed_mod.write_installed_ops({"noop": entry}, str(record))
    assert installed_mod.read_installed_ops() == {"noop": entry}
    assert builder.is_prebuilt()
    import json

    assert builder.load() is json
    # Built for another SIMD level or another torch: not usable, so JIT instead.
    assert not _JsonNoop(simd="avx2").is_prebuilt()
    installed_mod.write_installed_ops({"noop": dict(entry, torch="1.0.0")}, str(record))
    assert not builder.is_prebuilt()
    record.write_text("{not json")
    assert installed_mod.read_installed_ops() == {} and not builder.is_prebuilt()


@needs_compiler
def test_prebuilt_that_fails_to_import_falls_back_to_jit(tmp_path, monkeypatch, caplog):
    # A pre-built module that is found but cannot load, like a binary built against another torch.
    (tmp_path / "stale_noop_op.py").write_text("raise ImportError('undefined symbol: _ZN3c10')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    record = tmp_path / "installed_ops.json"
    monkeypatch.setattr(installed_mod, "INSTALLED_OPS_FILE", str(record))
    installed_mod.write_installed_ops({"noop": {"module": "stale_noop_op", "torch": torch.__version__,
                                                "variant": "scalar"}}, str(record))
    builder = _noop(tmp_path, simd="scalar")
    monkeypatch.setattr(builder, "absolute_name", lambda: "stale_noop_op")
    assert builder.is_prebuilt()
    module = builder.load()
    assert module.add_one(0) == 1 and "failed to import" in caplog.text


def test_ds_report_lists_every_op(capsys):
    rows, _ = env_report.op_report()
    assert [r[0] for r in rows] == sorted(ob.ALL_OPS)
    for name, installed, compatible, loaded_as in rows:
        assert installed in ("yes", "no") and compatible in ("yes", "no")
        assert loaded_as == ("prebuilt" if installed == "yes" else "JIT")
    env_report.main()
    out = capsys.readouterr().out
    for name in ob.ALL_OPS:
        assert f"\n{name} " in out
    if not torch.cuda.is_available():
        assert "fused_adam is not compatible here: torch" in out or "fused_adam is not compatible here: nvcc" in out


def _source_tree(tmp_path: Path) -> Path:
    """A copy of what setup.py packages, so that builds never touch the checkout."""
    src = tmp_path / "src"
    src.mkdir()
    for item in ("setup.py", "pyproject.toml", "version.txt", "requirements.txt", "README.md"):
        if (REPO / item).exists():
            shutil.copy(REPO / item, src / item)
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "installed_ops.json")
    for folder in ("deepspeed", "accelerator", "op_builder", "csrc"):
        shutil.copytree(REPO / folder, src / folder, ignore=ignore)
    return src


def _build_wheel(src: Path, dist: Path, **build_vars: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DS_BUILD_")}
    env.update(build_vars)
    return subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(dist), str(src)], capture_output=True, text=True, env=env, timeout=900)


def test_wheel_ships_sources_and_builders(tmp_path):
    """A default install builds nothing, and carries csrc/ where the builders look for it."""
    done = _build_wheel(_source_tree(tmp_path), tmp_path / "dist")
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert wheel.name.endswith("-py3-none-any.whl")  # nothing compiled
    assert "deepspeed/ops/op_builder/builder.py" in names and "deepspeed/accelerator/__init__.py" in names
    assert "deepspeed/ops/csrc/test_ops/noop.cpp" in names
    for cls in ob.ALL_OPS.values():
        for source in cls().sources():
            if (REPO / source).exists():
                assert f"deepspeed/ops/{source}" in names
    assert not any(n.endswith("installed_ops.json") for n in names)


@pytest.mark.skipif(torch.version.cuda is not None, reason="needs a torch without CUDA")
def test_setup_refuses_an_explicit_op_it_cannot_build(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DS_BUILD_")}
    env["DS_BUILD_FUSED_ADAM"] = "1"
    src = _source_tree(tmp_path)
    done = subprocess.run([sys.executable, "setup.py", "--name"], cwd=src, capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode != 0
    assert "DS_BUILD_FUSED_ADAM=1 but op fused_adam cannot be built here: torch" in done.stderr
    env["DS_BUILD_FUSED_ADAM"] = "maybe"
    done = subprocess.run([sys.executable, "setup.py", "--name"], cwd=src, capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode != 0 and "is not a boolean" in done.stderr


@pytest.mark.slow
@needs_compiler
def test_prebuilt_op_is_installed_and_loaded(tmp_path):
    """DS_BUILD_<OP>=1 compiles that op into the wheel; the installed package imports it, not JIT."""
    if not ob.CPUQuantizerBuilder().is_compatible():
        pytest.skip(ob.CPUQuantizerBuilder().error_log)
    done = _build_wheel(_source_tree(tmp_path), tmp_path / "dist", DS_BUILD_CPU_QUANTIZER="1")
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    target = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                           str(wheel)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    probe = ("import deepspeed.ops.op_builder as ob; from deepspeed import env_report; "
             "b = ob.CPUQuantizerBuilder(); m = b.load(); "
             "print(b.is_prebuilt(), m.__name__, m.__file__, dict((r[0], r[3]) for r in env_report.op_report()[0]))")
    env = dict(os.environ, PYTHONPATH=str(target), TORCH_EXTENSIONS_DIR=str(tmp_path / "jit"))
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    prebuilt, name, path, loaded_as = done.stdout.split(" ", 3)
    assert prebuilt == "True" and name == "deepspeed.ops.quantizer.cpu_quantizer_op"
    assert path.startswith(str(target)) and "'cpu_quantizer': 'prebuilt'" in loaded_as
    assert not (tmp_path / "jit").exists()  # nothing was JIT-compiled

"""bench/provenance.py, the code-version keyed checkpoint cache, row commands and verify.py's
comparison (fake rows and a fake runner: nothing is calibrated or evaluated)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import provenance  # noqa: E402
import quality  # noqa: E402
import verify  # noqa: E402
import zeroshot  # noqa: E402


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                   check=True, capture_output=True)


def test_git_state_commit_and_dirty(tmp_path):
    assert provenance.git_state(tmp_path) == {"commit": None, "dirty": None}
    git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("1")
    git(tmp_path, "add", "a.txt")
    git(tmp_path, "commit", "-q", "-m", "one")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert provenance.git_state(tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "a.txt").write_text("2")
    assert provenance.git_state(tmp_path) == {"commit": head, "dirty": True}


def test_git_state_ignores_the_bench_results_but_not_a_commit_made_since(tmp_path):
    """A bench rewrites its results after every row; a later row stays clean. Code committed
    after the bench started (``base``) makes its rows dirty, results committed do not."""
    results = tmp_path / "bench" / "results" / "quality.json"
    results.parent.mkdir(parents=True)
    results.write_text("[]")
    (tmp_path / "a.txt").write_text("1")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "one")
    base = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    results.write_text("[1]")
    assert provenance.git_state(tmp_path, base) == {"commit": base, "dirty": False}
    git(tmp_path, "commit", "-q", "-am", "results")
    assert provenance.git_state(tmp_path, base) == {"commit": base, "dirty": False}
    (tmp_path / "a.txt").write_text("2")
    git(tmp_path, "commit", "-q", "-am", "code")
    assert provenance.git_state(tmp_path, base) == {"commit": base, "dirty": True}
    assert provenance.git_state(tmp_path)["dirty"] is False


def test_record_names_the_script_from_the_repo_and_the_packages():
    rec = provenance.record([str(BENCH / "quality.py"), "--methods", "rtn", "--grid", "w4g128"])
    assert rec["argv"] == ["python", "bench/quality.py", "--methods", "rtn", "--grid", "w4g128"]
    assert set(rec["packages"]) == set(provenance.PACKAGES)
    assert rec["packages"]["torch"] == __import__("torch").__version__
    assert len(rec["commit"]) == 40 and isinstance(rec["dirty"], bool)


def test_record_keeps_the_thread_counts_and_verify_reruns_with_them(monkeypatch, tmp_path):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.delenv("TVM_NUM_THREADS", raising=False)
    rec = provenance.record([str(BENCH / "quality.py")])
    torch_threads = __import__("torch").get_num_threads()
    assert rec["threads"] == {"OMP_NUM_THREADS": "1", "torch": torch_threads}
    assert provenance.thread_environment({"provenance": rec}) == {"OMP_NUM_THREADS": "1"}
    only_torch = {"provenance": {"threads": {"torch": 2}}}
    assert provenance.thread_environment(only_torch) == {"OMP_NUM_THREADS": "2"}
    assert provenance.thread_environment({"ppl": 1.0}) == {}

    seen: dict = {}

    def run(argv: list[str], cwd: Path, check: bool, env: dict) -> None:
        seen.update(env)
        (tmp_path / "quality.json").write_text(json.dumps([row]))

    row = {**fake_rows()["quality"][1], "provenance": {"threads": {"OMP_NUM_THREADS": "3"}}}
    monkeypatch.setattr(verify.subprocess, "run", run)
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    assert verify.subprocess_runner("quality", row, tmp_path) == row
    assert seen["OMP_NUM_THREADS"] == "3"


def test_record_keeps_the_cpu_and_verify_says_when_a_rerun_ran_on_another(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse avx2 fma avx512f "
                    "avx512bw avx512_vnni\n\nprocessor\t: 1\nmodel name\t: AMD EPYC\n")
    epyc = provenance.cpu(info)
    assert epyc["model"] == "AMD EPYC"
    assert epyc["isa"] == ["avx2", "fma", "avx512f", "avx512bw", "avx512_vnni"]
    assert epyc["torch_capability"] == __import__("torch").backends.cpu.get_cpu_capability()
    assert provenance.record([str(BENCH / "quality.py")])["cpu"] == provenance.cpu()

    row = {"provenance": {"cpu": epyc}}
    assert provenance.compare_cpu(row, dict(epyc)) == "same"
    avx2 = {**epyc, "isa": ["avx2", "fma"], "torch_capability": "AVX2"}
    assert provenance.compare_cpu(row, avx2) == "other ISA"
    assert provenance.compare_cpu(row, {**epyc, "torch_capability": "AVX2"}) == "other ISA"
    assert provenance.compare_cpu({"ppl": 1.0}, epyc) == "not recorded"

    recorded = {**fake_rows()["quality"][1], "provenance": {"cpu": epyc}}
    rerun = {**recorded, "provenance": {"cpu": avx2}}
    (entry,) = verify.verify([verify.Selected("quality", 1, recorded)], repeat=1, tolerance=1e-3,
                             scratch=tmp_path, runner=lambda bench, row, scratch: rerun)
    assert entry["cpu"] == ["other ISA"]
    assert verify.table([entry]).splitlines()[-1].endswith("| yes | other ISA |")


def test_source_closure_follows_imports_but_not_other_methods():
    rtn = provenance.source_closure("lowbit.calib.rtn")
    assert {"lowbit.calib.rtn", "lowbit.quantizer"} <= rtn.keys()
    assert not {"lowbit.calib", "lowbit.calib.gptq", "lowbit.calib.omniquant"} & rtn.keys()
    omni = provenance.source_closure("lowbit.calib.omniquant")
    assert {"lowbit.calib.let", "lowbit.calib.blocks"} <= omni.keys()
    calibrate = provenance.source_closure(provenance.CALIBRATE_MODULE)
    assert "lowbit.fused" in calibrate
    assert provenance.code_version("rtn") != provenance.code_version("gptq")


def test_hash_sources_changes_with_any_file():
    before = provenance.hash_sources([("a.py", b"x = 1"), ("b.py", b"y = 2")])
    assert provenance.hash_sources([("a.py", b"x = 1"), ("b.py", b"y = 2")]) == before
    assert provenance.hash_sources([("a.py", b"x = 1"), ("b.py", b"y = 3")]) != before


def edited(path: str, old: str, new: str):
    """A reader of the worktree with one file's text edited."""
    read = provenance.worktree_reader()

    def reader(p: str) -> bytes | None:
        data = read(p)
        if p == path:
            assert old.encode() in data, old
            return data.replace(old.encode(), new.encode(), 1)
        return data
    return reader


def test_definition_version_counts_the_code_a_method_reaches_and_nothing_else():
    """Editing the quantizer math RTN calls changes its version; a docstring, a comment or a
    function no calibration reaches (the decode kernels' activation quantizer) does not, and a
    method module's own statements always count."""
    modules = provenance.method_modules("rtn")
    now = provenance.definition_version(modules, provenance.worktree_reader())
    quantizer = provenance.module_path("lowbit.quantizer")
    unchanged = [
        edited(quantizer, "def fake_quantize_blocks_int8(x: torch.Tensor, terms: int = 1) -> torch.Tensor:\n",
               "def fake_quantize_blocks_int8(x: torch.Tensor, terms: int = 1) -> torch.Tensor:\n    x = x + 0\n"),
        edited(quantizer, '"""', '"""An edited module docstring. '),
        edited(quantizer, "\n\n", "\n\n# a comment\n"),
        edited(quantizer, "\ndef quantize(", "\ndef _unused():\n    pass\n\n\ndef quantize("),
    ]
    for reader in unchanged:
        assert provenance.definition_version(modules, reader) == now
    rtn = provenance.module_path("lowbit.calib.rtn")
    changed = [
        edited(rtn, "\n\n", "\n\nLOCAL = 1\n"),
        edited(quantizer, "\ndef quantize(w: torch.Tensor, spec: QuantSpec)",
               "\ndef quantize(w: torch.Tensor, spec: QuantSpec, _edited: int = 0)"),
    ]
    for reader in changed:
        assert provenance.definition_version(modules, reader) != now


def test_file_version_reproduces_a_recorded_row_and_same_code_compares_definitions(monkeypatch):
    """A BitDistiller row recorded the older file version: recomputed from its commit it is the
    same. The row stands exactly while that commit's definition version is today's."""
    rows = json.loads((BENCH / "results" / "quality.json").read_text())
    row = next(r for r in rows if r["method"] == "bitdistiller" and r.get("provenance", {}).get("commit"))
    commit = row["provenance"]["commit"]
    modules = provenance.method_modules("bitdistiller")
    read = provenance.commit_reader(commit)
    assert provenance.file_version(modules, read) == row["code_version"]
    then = provenance.definition_version(modules, read)
    monkeypatch.setattr(provenance, "code_version", lambda method: then)
    assert provenance.same_code("bitdistiller", row["code_version"], commit)
    assert not provenance.same_code("bitdistiller", "0" * 16, commit)  # not the commit's files
    monkeypatch.setattr(provenance, "code_version", lambda method: "0" * 16)
    assert not provenance.same_code("bitdistiller", row["code_version"], commit)  # code changed since


def test_changed_code_version_rebuilds_the_checkpoint(tmp_path, monkeypatch):
    versions = {"rtn": "v1"}
    built: list[Path] = []

    def fake_calibrate(args):
        built.append(args.out)
        args.out.mkdir(parents=True)
        (args.out / "quantization_config.json").write_text(json.dumps({"seconds": 7.0}))

    monkeypatch.setattr(quality, "code_version", lambda method: versions[method])
    monkeypatch.setattr(quality, "calibrate", fake_calibrate)
    cell = quality.Cell("rtn", 4, 128)
    first, _ = quality.checkpoint(cell, "tiny", tmp_path)
    assert quality.checkpoint(cell, "tiny", tmp_path) == (first, 7.0)  # reused
    assert len(built) == 1
    versions["rtn"] = "v2"  # the method's sources changed
    second, _ = quality.checkpoint(cell, "tiny", tmp_path)
    assert len(built) == 2 and second != first
    assert quality.checkpoint(cell, "tiny", tmp_path)[0] == second


def test_build_version_follows_kernels_and_models_loaded_by_name(tmp_path):
    """Bench builds are keyed by the converter's and compiler's code, including what they load by
    name (a model definition, a kernel module), and not by code no build reaches (the CLI)."""
    repo = Path(provenance.REPO)
    for folder in ("compiler", "targets", "lowbit"):
        shutil.copytree(repo / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    version = provenance.build_version.__wrapped__
    now = version(tmp_path)
    assert now == version(repo)
    cli = tmp_path / "lowbit" / "cli.py"
    cli.write_text(cli.read_text() + "\n# an edit no build reaches\n")
    assert version(tmp_path) == now
    for path in ("compiler/models/llama.py", "compiler/kernels/attention_cpu.py", "targets/cpu.py"):
        file = tmp_path / path
        before = file.read_text()
        file.write_text(before + "\nEDITED = 1\n")
        assert version(tmp_path) != now, path
        file.write_text(before)
    assert provenance.build_dir(tmp_path).name == f"build-{provenance.build_version()}"


def test_stale_reason(monkeypatch):
    monkeypatch.setattr(quality, "code_version", lambda method: "now")
    monkeypatch.setattr(quality, "same_code", lambda method, recorded, commit: recorded == "same")
    assert quality.stale_reason({"method": "rtn", "code_version": "same", "provenance": {"commit": "c"}}) is None
    assert "same → now" in quality.stale_reason({"method": "rtn", "code_version": "same"})
    assert quality.stale_reason({"method": "rtn", "code_version": "now"}) is None
    assert "then → now" in quality.stale_reason({"method": "rtn", "code_version": "then"})
    assert "before provenance" in quality.stale_reason({"method": "rtn"})


def parsed_quality_key(command: list[str]) -> tuple:
    assert command[:2] == ["python", "bench/quality.py"]
    args = quality.parser().parse_args(command[2:])
    cells = quality.parse_grid(args.grid, args.methods.split(","),
                               quality.parse_settings(args.setting))
    assert len(cells) == 1
    return quality.row_key(quality.cell_key(cells[0], args.model, args.split, args.seqlen,
                                            args.windows))


def test_every_recorded_quality_row_has_a_command_that_measures_it():
    for row in json.loads((BENCH / "results" / "quality.json").read_text()):
        assert parsed_quality_key(quality.row_command(row)) == quality.row_key(row), row


def test_every_recorded_zeroshot_row_has_a_command_that_measures_it():
    for row in json.loads((BENCH / "results" / "zeroshot.json").read_text()):
        command = zeroshot.row_command(row)
        assert command[:2] == ["python", "bench/zeroshot.py"]
        args = zeroshot.parser().parse_args(command[2:])
        (cell,) = quality.parse_grid(args.grid, args.methods.split(","),
                                     quality.parse_settings(args.setting))
        assert args.tasks == row["task"] and (args.limit or None) == row["limit"]
        assert quality.cell_of(row) == cell and cell.settings == row["settings"]


def test_zeroshot_keys_by_a_bits():
    row = {"model": "m", "method": "rtn", "w_bits": 6, "group_size": -1, "sym": False,
           "settings": {}, "task": "piqa", "limit": 500}
    assert zeroshot.row_key({**row, "a_bits": 16}) == zeroshot.row_key(row)
    assert zeroshot.row_key({**row, "a_bits": 6}) != zeroshot.row_key(row)
    command = zeroshot.row_command({**row, "a_bits": 6})
    assert command[command.index("--grid") + 1] == "w6a6pc"


def test_comparison_deterministic_within_tolerance():
    same = verify.Comparison("ppl", 18.2104, (18.2104,), 1e-3)
    assert (same.rel_diff, same.spread, same.matches) == (0.0, 0.0, True)
    near = verify.Comparison("ppl", 100.0, (100.05,), 1e-3)
    assert near.rel_diff == pytest.approx(0.0005) and near.matches
    far = verify.Comparison("ppl", 100.0, (100.2,), 1e-3)
    assert far.rel_diff == pytest.approx(0.002) and not far.matches


def test_comparison_nondeterministic_uses_the_spread():
    # runs 47.0 and 48.0: mean 47.5, spread 1 / 47.5 = 2.105 %
    inside = verify.Comparison("ppl", 46.64, (47.0, 48.0), 1e-3)
    assert inside.mean == 47.5
    assert inside.spread == pytest.approx(0.0210526, rel=1e-5)
    assert inside.rel_diff == pytest.approx(0.0184391, rel=1e-5)  # 0.86 / 46.64
    assert inside.matches
    outside = verify.Comparison("ppl", 45.0, (47.0, 48.0), 1e-3)
    assert outside.rel_diff == pytest.approx(0.0555556, rel=1e-5) and not outside.matches


def fake_rows() -> dict[str, list[dict]]:
    base = {"model": "m", "a_bits": 16, "sym": False, "split": "test", "seqlen": 512,
            "windows": 64, "settings": {}, "eval_seconds": 100.0}
    q = [{**base, "method": "fp", "w_bits": 16, "group_size": -1, "ppl": 13.0, "seconds": 0.0},
         {**base, "method": "rtn", "w_bits": 4, "group_size": 128, "ppl": 18.0, "seconds": 9.0},
         {**base, "method": "rtn", "w_bits": 3, "group_size": 128, "ppl": 78.0, "seconds": 5.0},
         {**base, "method": "gptq", "w_bits": 3, "group_size": 128, "ppl": 47.0,
          "seconds": 100.0, "settings": {"preset": "small"}}]
    z = [{"model": "m", "method": "rtn", "w_bits": 4, "group_size": 128, "sym": False,
          "settings": {}, "task": "boolq", "limit": 500, "acc": 0.45, "acc_norm": None,
          "seconds": 80.0}]
    return {"quality": q, "zeroshot": z}


def test_select_sample_all_and_picks():
    rows = fake_rows()
    sample = verify.select(rows, ["quality", "zeroshot"], None, None, every=False)
    assert [(s.bench, s.index) for s in sample] == [("quality", 0), ("quality", 2),
                                                   ("quality", 3), ("zeroshot", 0)]
    assert len(verify.select(rows, ["quality"], ["rtn"], None, every=True)) == 2
    picked = verify.select(rows, ["quality"], None, [("quality", 1)], every=False)
    assert [s.label for s in picked] == ["quality:1 rtn-w4g128"]


def test_verify_repeats_only_nondeterministic_methods(tmp_path):
    calls: list[tuple[str, str, Path]] = []
    drift = {"rtn": 1.0, "gptq": 1.01}

    def runner(bench: str, row: dict, scratch: Path) -> dict:
        calls.append((bench, row["method"], scratch))
        n = sum(1 for c in calls if c[:2] == (bench, row["method"]))
        factor = drift[row["method"]] if n == 1 else 0.99  # gptq: 1.01×, then 0.99×
        return {**row, "ppl": row["ppl"] * factor} if bench == "quality" else dict(row)

    rows = fake_rows()
    selected = [verify.Selected("quality", 2, rows["quality"][2]),
                verify.Selected("quality", 3, rows["quality"][3]),
                verify.Selected("zeroshot", 0, rows["zeroshot"][0])]
    report = list(verify.verify(selected, repeat=2, tolerance=1e-3, scratch=tmp_path,
                                runner=runner))
    assert [c[:2] for c in calls] == [("quality", "rtn"), ("quality", "gptq"),
                                      ("quality", "gptq"), ("zeroshot", "rtn")]
    assert len({c[2] for c in calls}) == 4  # a fresh scratch folder per run
    rtn, gptq, boolq = report
    assert rtn["comparisons"][0]["matches"] and rtn["comparisons"][0]["runs"] == (78.0,)
    (g,) = gptq["comparisons"]
    assert g["runs"] == pytest.approx((47.47, 46.53))  # mean 47.0: equal to the recorded
    assert g["spread"] == pytest.approx(0.02) and g["rel_diff"] == pytest.approx(0.0)
    assert [c["metric"] for c in boolq["comparisons"]] == ["acc"]  # acc_norm not reported
    assert "| quality:3 gptq-w3g128-presetsmall | ppl | 47.0000 | 47.0000 | 2 | 2.000 % | " \
           "+0.000 % | yes | not recorded |" in verify.table(report)


def test_nf3_cells_round_trip_through_their_command():
    (cell,) = quality.parse_grid("nf3g128", ["bitdistiller"], {"preset": "small"})
    assert (cell.w_bits, cell.group_size, cell.codebook) == (3, 128, "nf3")
    key = quality.cell_key(cell, "m", "test", 512, 64)
    assert parsed_quality_key(quality.row_command(key)) == quality.row_key(key)
    (w3,) = quality.parse_grid("w3g128", ["bitdistiller"], {"preset": "small"})
    assert quality.row_key(quality.cell_key(w3, "m", "test", 512, 64)) != quality.row_key(key)
    assert cell.tag == "bitdistiller-nf3g128-presetsmall"
    row = {**key, "ppl": 1.0, "seconds": 1.0}
    assert "| 3 (nf3) |" in quality.markdown([row])
    zrow = {"model": "m", "method": "bitdistiller", "w_bits": 3, "a_bits": 16, "group_size": 128,
            "sym": False, "settings": {}, "task": "piqa", "limit": 500, "codebook": "nf3",
            "n": 500, "acc": 0.5, "acc_norm": 0.5}
    assert zeroshot.row_key(zrow) != zeroshot.row_key({**zrow, "codebook": None})
    assert "| 3 (nf3) |" in zeroshot.markdown([zrow, {**zrow, "codebook": None}])


def test_a_lowbit_imported_from_another_checkout_is_refused(monkeypatch, tmp_path):
    """A bench run from a clone whose environment imports another checkout's lowbit would hash
    none of the clone's files: code versions of nothing (thirteen rows once recorded the empty
    hash, e3b0c442…). It raises instead."""
    provenance.module_path.cache_clear()
    monkeypatch.setattr(provenance, "REPO", tmp_path)
    try:
        with pytest.raises(RuntimeError, match="outside this checkout"):
            provenance.module_path("lowbit.calib.rtn")
        assert provenance.module_path("numpy") is None  # not lowbit: not this checkout's business
    finally:
        provenance.module_path.cache_clear()

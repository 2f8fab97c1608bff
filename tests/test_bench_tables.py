"""The README's result tables and zero-shot figures follow bench/results/*.json."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import readme_tables  # noqa: E402
import zeroshot  # noqa: E402

RESULTS = BENCH / "results"
TASK_NAMES = {"PIQA": "piqa", "ARC-Easy": "arc_easy", "ARC-Challenge": "arc_challenge",
              "HellaSwag": "hellaswag", "WinoGrande": "winogrande", "BoolQ": "boolq"}


@pytest.fixture(scope="module")
def readme() -> str:
    return readme_tables.README.read_text()


@pytest.fixture(scope="module")
def zeroshot_rows() -> list[dict]:
    return json.loads((RESULTS / "zeroshot.json").read_text())


def table_rows(text: str, name: str) -> list[str]:
    """The rows of the README table marked ``name``."""
    start = text.index(f"<!-- table:{name} -->\n") + len(f"<!-- table:{name} -->\n")
    return text[start:text.index("\n\n", start)].splitlines()[2:]


def test_readme_marks_every_table(readme):
    assert sorted(readme_tables.MARKER.findall(readme)) == sorted(readme_tables.TABLES)


@pytest.mark.parametrize("name", sorted(readme_tables.TABLES))
def test_readme_table_is_the_json(readme, name):
    shown = table_rows(readme, name)
    expected = readme_tables.generated(name, RESULTS).splitlines()[2:]
    assert [r for r in expected if r not in shown] == [], "rows missing from the README"
    assert [r for r in shown if r not in expected] == [], "README rows not in the JSON"
    assert shown == expected  # same order too


def test_check_catches_a_changed_number_and_a_missing_row(readme, tmp_path):
    for name, _ in readme_tables.TABLES.values():
        shutil.copy(RESULTS / name, tmp_path / name)
    assert readme_tables.update(readme, tmp_path) == readme
    rows = json.loads((tmp_path / "quality.json").read_text())
    rows[2]["ppl"] += 0.01
    (tmp_path / "quality.json").write_text(json.dumps(rows))
    assert readme_tables.update(readme, tmp_path) != readme
    shutil.copy(RESULTS / "quality.json", tmp_path / "quality.json")
    dropped = readme.replace(table_rows(readme, "quality")[-1] + "\n", "", 1)
    assert readme_tables.update(dropped, tmp_path) == readme


def quoted(readme: str, pattern: str) -> tuple[float, ...]:
    m = re.search(pattern, " ".join(readme.split()))
    assert m, f"README no longer says {pattern!r}"
    return tuple(float(g) for g in m.groups())


def test_zeroshot_sentences_follow_the_json(readme, zeroshot_rows):
    w4, w3, w2 = ("rtn", 4, 128), ("rtn", 3, 128), ("rtn", 2, 128)
    fp = ("fp", 16, -1)
    changes = readme_tables.zeroshot_change(zeroshot_rows, w4, zeroshot.TASK_ORDER)
    (within,) = quoted(readme, r"RTN W4 g128 stays within ([\d.]+) points")
    assert within == max(abs(c) for c in changes)
    assert quoted(readme, r"\(average ([\d.]+) vs ([\d.]+);") == (
        readme_tables.zeroshot_average(zeroshot_rows, w4),
        readme_tables.zeroshot_average(zeroshot_rows, fp))
    by_task = readme_tables.zeroshot_rows(zeroshot_rows, *w4)
    fp_task = readme_tables.zeroshot_rows(zeroshot_rows, *fp)
    moves = re.findall(r"([A-Za-z-]+)(?: (acc_norm))?, (up|down) ([\d.]+)",
                       re.search(r"the largest moves are ([^)]*)\)", readme.replace("\n", " "))[1])
    deltas = []
    for task, metric, way, points in moves:
        t = TASK_NAMES[task]
        deltas.append(round(100 * (by_task[t][metric or "acc"] - fp_task[t][metric or "acc"]), 1))
        assert deltas[-1] == (float(points) if way == "up" else -float(points)), task
    assert max(abs(d) for d in deltas) == within
    four = ["piqa", "arc_easy", "arc_challenge", "hellaswag"]
    losses = [-c for c in readme_tables.zeroshot_change(zeroshot_rows, w3, four)]
    assert quoted(readme, r"W3 g128 loses ([\d.]+)–([\d.]+) points on PIQA, ARC-Easy, "
                          r"ARC-Challenge and HellaSwag \(average ([\d.]+)\)") == (
        min(losses), max(losses), readme_tables.zeroshot_average(zeroshot_rows, w3))
    assert quoted(readme, r"W2 g128 is at chance \(([\d.]+),") == (
        readme_tables.zeroshot_average(zeroshot_rows, w2),)


# The README's hand-laid weight-activation summary: per column, the settings of the quality.json
# rows it quotes (SmoothQuant's column quotes three, separated by " / ").
WA_COLUMNS = [
    [("rtn", {})],
    [("smoothquant", {"preset": "small", "down_scale": 0}), ("smoothquant", {"preset": "small"}),
     ("smoothquant", {"preset": "small", "shift": 1})],
    [("omniquant", {"preset": "small", "let": 1, "down_scale": 0})],
    [("omniquant", {"preset": "small", "let": 1})],
    [("omniquant", {"preset": "small", "let": 1, "shift": 1})],
]


def test_weight_activation_summary_follows_the_json(readme):
    rows = json.loads((RESULTS / "quality.json").read_text())
    fp = next(r["ppl"] for r in rows if r["method"] == "fp")
    lines = [line for line in readme.splitlines() if re.match(r"\| W(\d)A\1 \|", line)]
    assert [line[:6] for line in lines] == ["| W6A6", "| W4A4"]
    for line in lines:
        bits = int(line[3])
        cells = [c.strip() for c in line.strip("|").split("|")][1:]
        assert len(cells) == len(WA_COLUMNS)
        for cell, column in zip(cells, WA_COLUMNS, strict=True):
            parts = cell.split(" / ")
            assert len(parts) == len(column), cell
            for part, (method, settings) in zip(parts, column, strict=True):
                (ppl,) = [r["ppl"] for r in rows if r["method"] == method and
                          r["w_bits"] == r["a_bits"] == bits and r["group_size"] == -1 and
                          r["settings"] == settings]
                m = re.fullmatch(r"\**([\d,]+(?:\.(\d+))?)(?: \(([\d.]+)×\))?\**", part)
                assert m, part
                shown, decimals = float(m[1].replace(",", "")), len(m[2] or "")
                assert shown == round(ppl, decimals), (method, settings, bits, part)
                if m[3]:
                    assert float(m[3]) == round(ppl / fp, 3), (method, settings, bits, part)


def shown_matches(text: str, value: float) -> bool:
    """Whether ``text`` ("15.96", "15,595", "4.3 M", "528 k") is ``value`` as the README rounds."""
    m = re.fullmatch(r"([\d,]+)(?:\.(\d+))?(?: ([kM]))?", text)
    assert m, text
    scale = {"k": 1e3, "M": 1e6, None: 1.0}[m[3]]
    return float(f"{m[1].replace(',', '')}.{m[2] or 0}") == round(value / scale, len(m[2] or ""))


def test_calibration_method_ranking_follows_the_json(readme):
    rows = json.loads((RESULTS / "quality.json").read_text())

    def ppl(method: str, bits: int, group: int, settings: dict) -> float:
        (value,) = [r["ppl"] for r in rows if r["method"] == method and r["w_bits"] == bits and
                    r["a_bits"] == 16 and r["group_size"] == group and not r["sym"] and
                    r["settings"] == settings]
        return value

    sentence = re.search(r"OmniQuant < min\(GPTQ, AWQ-clip\) < RTN: ([^.]*(?:\.\d[^.]*)*)\.",
                         " ".join(readme.split()))
    assert sentence, "README no longer ranks the calibration methods"
    number = r"(\d{1,3}(?:,\d{3})*(?:\.\d+)?(?: [kM])?)"
    cells = re.findall(rf"W(\d) g(\d+) {number} < {number} < {number}", sentence[1])
    assert len(cells) == 4
    small = {"preset": "small"}
    for bits, group, omni, best, rtn in cells:
        b, g = int(bits), int(group)
        values = (ppl("omniquant", b, g, small),
                  min(ppl("gptq", b, g, small), ppl("awq-clip", b, g, small)), ppl("rtn", b, g, {}))
        assert values[0] < values[1] < values[2], (bits, group)
        for text, value in zip((omni, best, rtn), values, strict=True):
            assert shown_matches(text, value), (bits, group, text, value)


def test_cpu_decode_sentences_follow_the_json(readme):
    rows = {(r["engine"], r["scheme"]): r for r in json.loads((RESULTS / "cpu_decode.json").read_text())}
    int8, q40 = rows["lowbit-llvm", "q4f16_1+int8"], rows["llama.cpp", "Q4_0"]
    ratio, share = quoted(readme, r"`q4f16_1\+int8` ([\d.]+)×, at (\d+)% of its bandwidth limit")
    assert ratio == round(int8["decode_tok_s"] / q40["decode_tok_s"], 2)
    assert share == round(100 * int8["decode_tok_s"] * int8["weight_bytes"] / 1e9 / int8["read_gb_s"])

    def tok(scheme: str) -> float:
        return round(rows["lowbit-llvm", scheme]["decode_tok_s"])

    head = quoted(readme, r"2-bit (\d+) tok/s, 3-bit (\d+), 4-bit (\d+) \(`w\*a16g128asym_q8head\+int8`\)")
    assert head == tuple(tok(f"w{b}a16g128asym_q8head+int8") for b in (2, 3, 4))
    fp16 = quoted(readme, r"with the fp16 head, (\d+) / (\d+) / (\d+)")
    assert fp16 == tuple(tok(f"w{b}a16g128asym+int8") for b in (2, 3, 4))

    pint8, fp_prefill = rows["lowbit-llvm", "q4f16_1+int8+pint8"], int8
    shown = quoted(readme, r"`q4f16_1\+int8\+pint8` (\d+) tok/s, ([\d.]+)× llama.cpp Q4_0, against ([\d.]+)× with fp "
                           r"prefill activations")
    assert shown == (round(pint8["prefill_tok_s"]), round(pint8["prefill_tok_s"] / q40["prefill_tok_s"], 2),
                     round(fp_prefill["prefill_tok_s"] / q40["prefill_tok_s"], 2))
    (own,) = quoted(readme, r"llama.cpp Q4_0 is at (\d+)% of its own")
    assert own == round(100 * q40["decode_tok_s"] * q40["weight_bytes"] / 1e9 / q40["read_gb_s"])


def test_long_context_sentences_follow_the_json(readme):
    rows = {(r["engine"], r["scheme"], r["context"]): r
            for r in json.loads((RESULTS / "cpu_long_context.json").read_text())}
    kv16 = rows["lowbit-llvm", "q4f16_1+int8+kv16", 8000]
    q40 = rows["llama.cpp", "Q4_0", 8000]
    tok, ratio, attention, share, linear = quoted(
        readme, r"Prefill at 8,000 tokens\*\*: (\d+) tok/s, ([\d.]+)× llama.cpp Q4_0 \(aim ≥ 1×\); its attention "
                r"runs at (\d+) GFLOP/s, ([\d.]+) of the linears' (\d+)")
    assert (tok, ratio) == (round(kv16["prefill_tok_s"]), round(kv16["prefill_tok_s"] / q40["prefill_tok_s"], 2))
    assert (attention, linear) == (round(kv16["attention_gflop_s"]), round(kv16["linear_gflop_s"]))
    assert share == round(kv16["attention_gflop_s"] / kv16["linear_gflop_s"], 2)
    (short,) = quoted(readme, r"At 128 tokens, ([\d.]+)× Q4_0")
    short_row = rows["lowbit-llvm", "q4f16_1+int8+kv16", 128]
    assert short == round(short_row["prefill_tok_s"] / rows["llama.cpp", "Q4_0", 128]["prefill_tok_s"], 2)
    tok, ratio, limit = quoted(readme, r"Decode at 8,000 tokens of context\*\*: (\d+) tok/s, ([\d.]+)× llama.cpp "
                                       r"Q4_0, at ([\d.]+) of its limit")
    read = (kv16["weight_bytes"] + kv16["kv_bytes"]) / 1e9
    assert (tok, ratio) == (round(kv16["decode_tok_s"]), round(kv16["decode_tok_s"] / q40["decode_tok_s"], 2))
    assert limit == round(kv16["decode_tok_s"] * read / kv16["read_gb_s"], 2)


def w2_row(rows: list[dict], method: str, group: int, settings: dict | None = None) -> dict:
    """The one W2 A16 integer-grid row of ``method`` at ``group`` with ``settings`` (default:
    the small preset alone)."""
    settings = settings or {"preset": "small"}
    (found,) = [r for r in rows if r["method"] == method and r["w_bits"] == 2 and r["group_size"] == group
                and r["a_bits"] == 16 and r["settings"] == settings and not r.get("codebook")]
    return found


def test_bitdistiller_sentence_follows_the_json(readme):
    rows = json.loads((RESULTS / "quality.json").read_text())
    bd, omni = w2_row(rows, "bitdistiller", 128), w2_row(rows, "omniquant", 128)
    ppl, ratio, omni_ppl, compiled, change = quoted(
        readme, r"at W2 g128 scores ([\d.]+), ([\d.]+)× OmniQuant's ([\d.]+) \(aim ≤ 0\.8×: \*\*met\*\*\); "
                r"converted to `w2a16g128asym` and compiled for this CPU it scores ([\d.]+) on the same windows "
                r"\(\+([\d.]+) %")
    assert (ppl, omni_ppl) == (round(bd["ppl"], 2), round(omni["ppl"], 2))
    assert ratio == round(bd["ppl"] / omni["ppl"], 2) <= 0.8
    assert compiled == round(bd["compiled"]["ppl"], 3)
    assert change == round(100 * (bd["compiled"]["ppl"] / bd["ppl"] - 1), 2) < 0.5


def test_int8_kernel_sentences_follow_the_json(readme):
    rows = json.loads((RESULTS / "int8_kernels.json").read_text())

    def span(values: list[float]) -> tuple[float, float]:
        return round(min(values), 2), round(max(values), 2)

    def gemv(bits: str) -> tuple[float, float]:
        return span([r["int8-avx2_us"] / r["int8-avx512vnni_us"] for r in rows
                     if r["kernel"] == "gemv" and r["scheme"].startswith(bits)])

    shown = quoted(readme, r"on 2 threads, ([\d.]+)–([\d.]+)× as fast for `q4f16_1`, ([\d.]+)–([\d.]+)× at "
                           r"2 bits, ([\d.]+)–([\d.]+)× at 3 bits")
    assert shown == (*gemv("q4"), *gemv("w2"), *gemv("w3"))

    def gemm(isa: str, m: int) -> tuple[float, float]:
        return span([r["fp32_us"] / r[f"int8-{isa}_us"] for r in rows if r["kernel"] == "gemm" and r["rows"] == m])

    shown = quoted(readme, r"([\d.]+)–([\d.]+)× as fast with 128 rows, ([\d.]+)–([\d.]+)× with 512 \(AVX2 code "
                           r"on the same host: ([\d.]+)–([\d.]+)×\)")
    avx2 = span([r["fp32_us"] / r["int8-avx2_us"] for r in rows if r["kernel"] == "gemm"])
    assert shown == (*gemm("avx512vnni", 128), *gemm("avx512vnni", 512), *avx2)


def test_bitdistiller_nf3_sentence_follows_the_json(readme):
    rows = json.loads((RESULTS / "quality.json").read_text())
    (nf3,) = [r for r in rows if r["method"] == "bitdistiller" and r.get("codebook") == "nf3" and r["group_size"] == 128]
    (omni,) = [r for r in rows if r["method"] == "omniquant" and r["w_bits"] == 3 and r["group_size"] == 128
               and r["settings"] == {"preset": "small"}]
    (fp,) = [r for r in rows if r["method"] == "fp"]
    ppl, ratio, omni_ppl, to_fp, compiled, change = quoted(
        readme, r"NF3 levels \(`--nf3`, g128\) scores ([\d.]+), ([\d.]+)× OmniQuant's W3 g128 ([\d.]+) and ([\d.]+)× FP; "
                r"compiled as `nf3a16g128`, ([\d.]+) \(−([\d.]+) %\)")
    assert (ppl, omni_ppl, compiled) == (round(nf3["ppl"], 2), round(omni["ppl"], 2), round(nf3["compiled"]["ppl"], 3))
    assert (ratio, to_fp) == (round(nf3["ppl"] / omni["ppl"], 2), round(nf3["ppl"] / fp["ppl"], 2))
    assert nf3["compiled"]["ppl"] <= nf3["ppl"]  # the sentence's minus sign
    assert change == abs(round(100 * (nf3["compiled"]["ppl"] / nf3["ppl"] - 1), 2)) < 0.5


def test_bitdistiller_w2g64_sentence_follows_the_json(readme):
    rows = json.loads((RESULTS / "quality.json").read_text())
    bd, omni = w2_row(rows, "bitdistiller", 64), w2_row(rows, "omniquant", 64)
    ppl, ratio, omni_ppl, compiled, change = quoted(
        readme, r"At W2 g64 BitDistiller scores ([\d.]+), ([\d.]+)× OmniQuant's ([\d.]+); compiled as "
                r"`w2a16g64asym`, ([\d.]+) \(−([\d.]+) %\)")
    assert (ppl, omni_ppl, compiled) == (round(bd["ppl"], 2), round(omni["ppl"], 2), round(bd["compiled"]["ppl"], 3))
    assert ratio == round(bd["ppl"] / omni["ppl"], 2)
    assert bd["compiled"]["ppl"] <= bd["ppl"]  # the sentence's minus sign
    assert change == abs(round(100 * (bd["compiled"]["ppl"] / bd["ppl"] - 1), 2)) < 0.5
    assert f"its {round(bd['seconds']):,} s of calibration" in " ".join(readme.split())


def test_bitdistiller_loss_ablation_follows_the_json(readme):
    rows = json.loads((RESULTS / "quality.json").read_text())
    cakld = w2_row(rows, "bitdistiller", 128)
    fkl = w2_row(rows, "bitdistiller", 128, {"preset": "small", "loss": "fkl"})
    rkl = w2_row(rows, "bitdistiller", 128, {"preset": "small", "loss": "rkl"})
    shown = quoted(readme, r"loss ablation at W2 g128: CAKLD ([\d.]+), forward KL ([\d.]+) \(([\d.]+)× CAKLD; "
                           r"`--setting loss=fkl`, compiled ([\d.]+)\), reverse KL ([\d.]+) \(([\d.]+)× CAKLD; "
                           r"`--setting loss=rkl`, compiled ([\d.]+); its")
    assert shown == (round(cakld["ppl"], 2), round(fkl["ppl"], 2), round(fkl["ppl"] / cakld["ppl"], 2),
                     round(fkl["compiled"]["ppl"], 3), round(rkl["ppl"], 2), round(rkl["ppl"] / cakld["ppl"], 2),
                     round(rkl["compiled"]["ppl"], 3))
    assert f"its {round(rkl['seconds']):,} s of calibration" in " ".join(readme.split())
    assert fkl["ppl"] < cakld["ppl"] < rkl["ppl"]  # "forward KL does best and reverse KL worst"


def test_remeasured_omniquant_sentence_follows_the_json(readme):
    rows = json.loads((RESULTS / "quality.json").read_text())
    cells = [next(r for r in rows if r["method"] == "omniquant" and (r["w_bits"], r["group_size"]) == cell
                  and r["a_bits"] == 16 and r["settings"] == {"preset": "small"}) for cell in ((3, 128), (2, 64))]
    w3, w2 = quoted(readme, r"OmniQuant W3 g128 and W2 g64 reproduced their perplexities to the last "
                            r"digit \(([\d.]+) and ([\d.]+)\)")
    assert (w3, w2) == (cells[0]["ppl"], cells[1]["ppl"])
    seconds = f"in {round(cells[0]['seconds']):,} s and {round(cells[1]['seconds']):,} s"
    assert seconds in " ".join(readme.split())
    assert all(r["provenance"]["commit"] for r in cells)  # measured with provenance


def test_activation_cost_sentence_follows_the_json(readme):
    rows = json.loads((RESULTS / "activation_cost.json").read_text())
    fp = {r["scheme"]: r["ppl"] for r in rows if r["decode_activations"] == "fp"}

    def costs(kind: str) -> list[float]:
        return [100 * (r["ppl"] / fp[r["scheme"]] - 1) for r in rows if r["decode_activations"] == kind]

    low, high, within = quoted(readme, r"int8 decode costs \+([\d.]+)–([\d.]+) % over these schemes, above the "
                                       r"0\.1 % aimed for; int8x2 stays within ([\d.]+) % of fp activations")
    assert (low, high) == (round(min(costs("int8")), 2), round(max(costs("int8")), 2))
    assert within == round(max(abs(c) for c in costs("int8x2")), 3) <= 0.1


def test_bitdistiller_zeroshot_sentence_follows_the_json(readme, zeroshot_rows):
    bd, w3, w2, fp = ("bitdistiller", 2, 64, {"preset": "small"}), ("rtn", 3, 128), ("rtn", 2, 128), ("fp", 16, -1)
    five = [t for t in zeroshot.TASK_ORDER if t != "boolq"]

    def five_average(cell: tuple) -> float:
        by_task = readme_tables.zeroshot_rows(zeroshot_rows, *cell)
        return round(sum(readme_tables.headline(by_task[t]) for t in five) / len(five), 1)

    shown = quoted(readme, r"BitDistiller \(`--preset small`\) at W2 g64 averages ([\d.]+), above RTN W3 g128's "
                           r"([\d.]+), but BoolQ carries that: it answers \"yes\" more often \(([\d.]+) % acc; "
                           r"63 % of these answers are \"yes\"\)\. Over the other five tasks it averages ([\d.]+), "
                           r"against ([\d.]+) for RTN W3 g128, ([\d.]+) for RTN W2 g128 and ([\d.]+) for FP")
    assert shown == (readme_tables.zeroshot_average(zeroshot_rows, bd), readme_tables.zeroshot_average(zeroshot_rows, w3),
                     round(100 * readme_tables.zeroshot_rows(zeroshot_rows, *bd)["boolq"]["acc"], 1),
                     five_average(bd), five_average(w3), five_average(w2), five_average(fp))
    assert shown[0] > shown[1] and shown[3] < shown[4]  # "above …, but BoolQ carries that"
    nf3 = ("bitdistiller", 3, 128, {"preset": "small"}, "nf3")
    average, below, rtn_below, without_boolq = quoted(
        readme, r"BitDistiller with its NF3 levels at W3 g128 averages ([\d.]+), ([\d.]+) points below FP where "
                r"RTN W3 g128 is ([\d.]+) below, and ([\d.]+) over the five tasks without BoolQ")
    fp_average = readme_tables.zeroshot_average(zeroshot_rows, fp)
    assert average == readme_tables.zeroshot_average(zeroshot_rows, nf3) and without_boolq == five_average(nf3)
    assert below == round(fp_average - average, 1)
    assert rtn_below == round(fp_average - readme_tables.zeroshot_average(zeroshot_rows, w3), 1)


def test_omniquant_bitdistiller_zeroshot_sentence_follows_the_json(readme, zeroshot_rows):
    five = [t for t in zeroshot.TASK_ORDER if t != "boolq"]
    preset = {"preset": "small"}
    cells = {(m, b, g): (m, b, g, preset) for m in ("omniquant", "bitdistiller") for b, g in ((2, 64), (3, 128))}

    def average(cell: tuple, tasks: list[str] | None = None) -> float:
        if tasks is None:
            return readme_tables.zeroshot_average(zeroshot_rows, cell)
        by_task = readme_tables.zeroshot_rows(zeroshot_rows, *cell)
        return round(sum(readme_tables.headline(by_task[t]) for t in tasks) / len(tasks), 1)

    ppl = {(r["method"], r["w_bits"], r["group_size"]): r["ppl"]
           for r in json.loads((RESULTS / "quality.json").read_text())
           if r["a_bits"] == 16 and r["settings"] == preset and not r.get("codebook")}
    shown = quoted(readme, r"Side by side at W2 g64, BitDistiller averages ([\d.]+) against OmniQuant's ([\d.]+) "
                           r"\(([\d.]+) against ([\d.]+) without BoolQ\), as their perplexities \(([\d.]+) against "
                           r"([\d.]+)\) order them\. At W3 g128 the order turns: OmniQuant averages ([\d.]+) and "
                           r"BitDistiller on the integer grid ([\d.]+) \(([\d.]+) against ([\d.]+) without BoolQ\), "
                           r"though their perplexities tie \(([\d.]+) and ([\d.]+)\); BitDistiller's NF3 cell, "
                           r"([\d.]+), is the best 3-bit one\. Without BoolQ the gaps are ([\d.]+) and ([\d.]+) points")
    bd2, oq2 = cells["bitdistiller", 2, 64], cells["omniquant", 2, 64]
    bd3, oq3 = cells["bitdistiller", 3, 128], cells["omniquant", 3, 128]
    nf3 = ("bitdistiller", 3, 128, preset, "nf3")
    want = (average(bd2), average(oq2), average(bd2, five), average(oq2, five),
            round(ppl["bitdistiller", 2, 64], 2), round(ppl["omniquant", 2, 64], 2),
            average(oq3), average(bd3), average(oq3, five), average(bd3, five),
            round(ppl["omniquant", 3, 128], 2), round(ppl["bitdistiller", 3, 128], 2), average(nf3),
            round(average(bd2, five) - average(oq2, five), 1), round(average(oq3, five) - average(bd3, five), 1))
    assert shown == want
    assert want[0] > want[1] and want[6] > want[7]  # "the order turns"
    assert want[12] == max(average(c) for c in (bd3, oq3, nf3))  # "the best 3-bit one"


def test_bitdistiller_w3g128_sentence_follows_the_json(readme):
    rows = json.loads((RESULTS / "quality.json").read_text())
    (bd,) = [r for r in rows if r["method"] == "bitdistiller" and r["w_bits"] == 3 and r["group_size"] == 128
             and not r.get("codebook") and r["settings"] == {"preset": "small"}]
    (omni,) = [r for r in rows if r["method"] == "omniquant" and r["w_bits"] == 3 and r["group_size"] == 128
               and r["settings"] == {"preset": "small"}]
    ppl, ratio, compiled, change = quoted(
        readme, r"On the integer grid at W3 g128 it scores ([\d.]+), ([\d.]+)× OmniQuant's; compiled as "
                r"`w3a16g128asym`, ([\d.]+) \([+−]([\d.]+) %\)")
    assert (ppl, ratio, compiled) == (round(bd["ppl"], 2), round(bd["ppl"] / omni["ppl"], 2), round(bd["compiled"]["ppl"], 3))
    assert change == abs(round(100 * (bd["compiled"]["ppl"] / bd["ppl"] - 1), 2)) < 0.5

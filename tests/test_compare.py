"""`moonlora compare` on hand-built transcribe folders: no model, no audio."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from test_cli_light import REPORT_HEAVY, heavy_modules, run_python

from moonlora.data.audio import AudioConfig
from moonlora.cli import main
from moonlora.comparison import Comparison
from moonlora.eval.compare import DEFAULT_MARGIN, CompareError, compare_folders, contract_fields
from moonlora.configs import DecodeConfig
from moonlora.eval.contract import ContractMismatch, EvalContract

REF = "climb flight level two nine zero"  # six words


def contract(manifest="m", adapter=None, **decode) -> EvalContract:
    return EvalContract.build(manifest_sha256=manifest * 64, audio=AudioConfig(), decode=DecodeConfig(**decode),
                              model_sha256="w" * 64, adapter_sha256=adapter and adapter * 64)


def row(i: int, wrong: int = 0, tokens: bool = True, written: str | None = None, name: str = "clip") -> dict:
    """One transcripts.jsonl row of clip i whose hypothesis gets `wrong` words substituted;
    `written` replaces the hypothesis as written (the normalized one stays)."""
    words = REF.split()
    hyp_words = ["x"] * wrong + words[wrong:]
    hyp_norm = " ".join(hyp_words)
    hyp = written or hyp_norm
    data = {
        "utt_id": f"{i + 1}:{name}{i}.wav", "audio_filepath": f"clips/{name}{i}.wav", "line": i + 1,
        "duration": 2.0, "speaker": None, "ref": REF, "hyp": hyp, "ref_norm": REF, "hyp_norm": hyp_norm,
        "ref_words": len(words), "substitutions": wrong, "deletions": 0, "insertions": 0,
        "wer": wrong / len(words), "num_tokens": len(hyp.split()), "token_cap": 15, "flags": [],
        "repeat_ngram": None,
    }
    if tokens:
        data["token_ids"] = [sum(map(ord, word)) for word in hyp.split()]
    return data


def folder(path, rows: list[dict], eval_contract: EvalContract | None = None):
    """A folder as `moonlora transcribe --output-dir` writes it (the summary fields compare reads)."""
    path.mkdir(parents=True)
    (path / "transcripts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    errors = sum(r["substitutions"] + r["deletions"] + r["insertions"] for r in rows)
    summary = {"manifest": "test.jsonl", "wer": errors / sum(r["ref_words"] for r in rows), "clips": len(rows),
               "contract": (eval_contract or contract()).to_dict()}
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def good_rows(n: int = 40, **kwargs) -> list[dict]:
    return [row(i, wrong=1 if i % 8 == 0 else 0, **kwargs) for i in range(n)]


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(["compare", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_identical_folders_agree_fully_and_pass(tmp_path, capsys):
    a, b = folder(tmp_path / "a", good_rows()), folder(tmp_path / "b", good_rows())
    result = compare_folders(a, b)
    boot = result.bootstrap
    assert boot.delta == 0 and boot.ci_low == boot.ci_high == 0 and boot.resamples == 10_000 and boot.seed == 0
    agree = result.agreement
    assert (agree.text_rate, agree.normalized_rate, agree.token_rate) == (1.0, 1.0, 1.0)
    assert result.non_inferior and result.margin == DEFAULT_MARGIN == 0.005
    assert result.allowed_differences == [] and result.top == [] and result.differing_clips == 0
    code, out, err = run_cli(capsys, a, b)
    assert code == 0 and err == ""
    assert "eval contracts: identical" in out and "B is non-inferior to A" in out and "1.000 (40/40)" in out


def test_clearly_worse_b_exits_1_with_the_ci_above_the_margin(tmp_path, capsys):
    a = folder(tmp_path / "a", good_rows())
    b = folder(tmp_path / "b", [row(i, wrong=2 if i % 2 else 1) for i in range(40)])
    result = compare_folders(a, b)
    assert result.bootstrap.ci_low > result.margin and not result.non_inferior
    assert result.bootstrap.delta == pytest.approx((60 - 5) / 240)
    code, out, _ = run_cli(capsys, a, b)
    assert code == 1 and "NOT shown non-inferior" in out
    # a margin wide enough to hold the whole CI accepts the same B
    assert run_cli(capsys, a, b, "--margin", "0.5")[0] == 0


def test_the_clips_that_differ_most_come_first_with_their_texts(tmp_path):
    rows_b = good_rows(10)
    rows_b[3] = row(3, wrong=3)  # A: 0 wrong, B: 3 wrong
    rows_b[5] = row(5, written="Climb flight level two nine zero.")  # differs only as written
    rows_b[7] = row(7, tokens=False)  # A's text, but B has no token ids (an older file)
    rows_b[8] = row(8, wrong=2)  # A: 1 wrong (every 8th clip), B: 2 wrong
    result = compare_folders(folder(tmp_path / "a", good_rows(10)), folder(tmp_path / "b", rows_b), top=2)
    assert result.differing_clips == 3
    assert [d.utt_id for d in result.top] == ["4:clip3.wav", "9:clip8.wav"]
    first = result.top[0]
    assert (first.ref, first.hyp_a, first.hyp_b) == (REF, REF, "x x x two nine zero")
    assert first.wer_delta == pytest.approx(0.5) and first.text_difference == pytest.approx(0.5)
    agree = result.agreement
    assert (agree.same_text, agree.same_normalized, agree.clips) == (7, 8, 10)
    assert (agree.same_tokens, agree.token_clips) == (6, 9)
    doc = result.to_dict()
    assert doc["top_differences"][0]["hyp_b"] == "x x x two nine zero" and doc["agreement"]["normalized_rate"] == 0.8


def test_a_differing_decode_setting_is_named_and_refused(tmp_path, capsys):
    a = folder(tmp_path / "a", good_rows())
    b = folder(tmp_path / "b", good_rows(), contract(num_beams=4))
    code, out, err = run_cli(capsys, a, b, "--allow", "adapter_sha256")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "decode.num_beams (1 vs 4)" in err and str(a) in err and str(b) in err


def test_an_allowed_adapter_difference_is_accepted_and_listed(tmp_path, capsys):
    a = folder(tmp_path / "a", good_rows())
    b = folder(tmp_path / "b", good_rows(), contract(adapter="a"))
    code, _, err = run_cli(capsys, a, b)
    assert code == 2 and "adapter_sha256 (None vs 'aaaaaaaaaaaa')" in err
    code, out, _ = run_cli(capsys, a, b, "--allow", "adapter_sha256")
    assert code == 0 and "allowed differences: adapter_sha256 (None vs 'aaaaaaaaaaaa')" in out
    assert compare_folders(a, b, allow=("adapter_sha256",)).allowed_differences == [
        {"field": "adapter_sha256", "a": None, "b": "a" * 64}]


@pytest.mark.skipif("runtime" not in contract_fields(), reason="the eval contract has no runtime field")
def test_a_runtime_difference_is_refused_unless_allowed(tmp_path, capsys):
    onnx = replace(contract(), runtime={"name": "onnxruntime", "precision": "int8"})
    a, b = folder(tmp_path / "a", good_rows()), folder(tmp_path / "b", good_rows(), onnx)
    code, _, err = run_cli(capsys, a, b)
    assert code == 2 and "runtime.name" in err and "runtime.precision" in err
    result = compare_folders(a, b, allow=("runtime",))
    assert {d["field"] for d in result.allowed_differences} == {"runtime.name", "runtime.precision"}


def test_different_manifests_are_one_line_errors(tmp_path, capsys):
    a = folder(tmp_path / "a", good_rows())
    b = folder(tmp_path / "b", good_rows(name="other"), contract(manifest="n"))
    code, _, err = run_cli(capsys, a, b)
    assert code == 2 and err.count("\n") == 1 and "scored different manifests" in err and "manifest_sha256" in err
    # allowing the hash does not make unpairable clips comparable
    code, _, err = run_cli(capsys, a, b, "--allow", "manifest_sha256")
    assert code == 2 and err.count("\n") == 1 and "scored different manifests" in err and "only in A" in err
    with pytest.raises(CompareError, match="scored different manifests: the reference"):
        changed = [{**r, "ref": "another text"} for r in good_rows()]
        compare_folders(a, folder(tmp_path / "c", changed, contract(manifest="n")), allow=("manifest_sha256",))
    # the same clips under another manifest hash pair when the hash is allowed
    same = folder(tmp_path / "d", good_rows(), contract(manifest="n"))
    assert compare_folders(a, same, allow=("manifest_sha256",)).agreement.text_rate == 1.0


def test_json_is_written_and_not_replaced_without_overwrite(tmp_path, capsys):
    a, b = folder(tmp_path / "a", good_rows()), folder(tmp_path / "b", good_rows(), contract(adapter="a"))
    out = tmp_path / "compare.json"
    assert run_cli(capsys, a, b, "--allow", "adapter_sha256", "--json", out)[0] == 0
    doc = json.loads(out.read_text())
    assert doc["written_by"] == "written by moonlora compare"
    assert doc["non_inferior"] is True and doc["delta"] == 0 and doc["margin"] == 0.005
    shape = {key: doc[key] for key in Comparison(0, 0, 0, 0, 0, 0, 1, 0, 1).to_dict()}  # the one comparison shape
    assert Comparison.from_dict(shape) == compare_folders(a, b, allow=("adapter_sha256",)).bootstrap
    assert doc["allowed_differences"][0]["field"] == "adapter_sha256" and doc["agreement"]["token_rate"] == 1.0
    assert doc["a"]["contract"]["fingerprint"] == contract().fingerprint
    code, _, err = run_cli(capsys, a, b, "--allow", "adapter_sha256", "--json", out)
    assert code == 2 and "--json" in err and "exists" in err
    assert run_cli(capsys, a, b, "--allow", "adapter_sha256", "--json", out, "--overwrite")[0] == 0
    foreign = tmp_path / "mine.json"
    foreign.write_text("{}")
    code, _, err = run_cli(capsys, tmp_path / "nowhere", b, "--json", foreign, "--overwrite")
    assert code == 2 and "not written by moonlora" in err  # refused before any input is read


def test_bad_inputs_are_one_line_errors_naming_the_path(tmp_path, capsys):
    good = folder(tmp_path / "good", good_rows())
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(capsys, good, empty)
    assert code == 2 and err.count("\n") == 1 and str(empty) in err and "transcripts.jsonl" in err
    broken = folder(tmp_path / "broken", good_rows())
    lines = (broken / "transcripts.jsonl").read_text().splitlines()
    (broken / "transcripts.jsonl").write_text("\n".join([lines[0], "{not json", *lines[2:]]) + "\n")
    code, _, err = run_cli(capsys, good, broken)
    assert code == 2 and err.count("\n") == 1 and f"{broken / 'transcripts.jsonl'}:2:" in err
    lacking = folder(tmp_path / "lacking", [{k: v for k, v in r.items() if k != "hyp"} for r in good_rows()])
    with pytest.raises(CompareError, match=r"transcripts.jsonl:1: lacks hyp"):
        compare_folders(good, lacking)
    short = folder(tmp_path / "short", good_rows())
    (short / "transcripts.jsonl").write_text(json.dumps(row(0)) + "\n")
    with pytest.raises(CompareError, match="incomplete"):
        compare_folders(good, short)
    old = folder(tmp_path / "old", good_rows())
    (old / "summary.json").write_text(json.dumps({"wer": 0.1}))
    with pytest.raises(CompareError, match="summary.json: no eval contract"):
        compare_folders(good, old)
    with pytest.raises(CompareError, match="--allow decode.num_beams: not a field"):
        compare_folders(good, good, allow=("decode.num_beams",))
    with pytest.raises(ContractMismatch):
        compare_folders(good, folder(tmp_path / "beams", good_rows(), contract(num_beams=2)))


def test_compare_loads_no_model_stack(tmp_path):
    a, b = folder(tmp_path / "a", good_rows()), folder(tmp_path / "b", good_rows())
    out = tmp_path / "c.json"
    code = ("import contextlib, io, json, sys\nfrom moonlora.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    assert main(['compare', {str(a)!r}, {str(b)!r}, '--json', {str(out)!r}]) == 0\n" + REPORT_HEAVY)
    assert heavy_modules(run_python(code)) == []
    assert json.loads(out.read_text())["non_inferior"] is True

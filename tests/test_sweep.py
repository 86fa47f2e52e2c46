"""`moonlora sweep` on the tiny model: grid expansion, shared baselines, resume, verdicts per seed group."""

import json
import re

import pytest

from conftest import tone_set
from moonlora.train import loop as train_module
from moonlora.cli import main
from moonlora.sweep import SweepError, load_grid

RUNS = ["lr5e-3_seed1", "lr5e-3_seed2", "lr1e-3_seed1", "lr1e-3_seed2"]


@pytest.fixture()
def grid(tmp_path, tiny_model_dir):
    folder = tmp_path / "d"
    train, main_set = tone_set(folder, "train", 12), tone_set(folder, "main", 4, seed0=50)
    path = tmp_path / "grid.toml"
    path.write_text(f"""
[experiment]
dataset-path = "{train}"
manifest-path = "{main_set}"
model = "{tiny_model_dir}"
device = "cpu"
max-steps = 2
eval-interval = 1
batch-size = 2
grad-accum = 1
lora-r = 2
min-val-clips = 1
decode-batch-size = 8

[grid]
learning-rate = [5e-3, 1e-3]
seed = [1, 2]
""")
    return path, main_set


def test_a_two_by_two_sweep_shares_its_baseline_resumes_and_decides_per_seed_group(grid, tmp_path, monkeypatch,
                                                                                   capsys):
    path, main_set = grid
    out = tmp_path / "sweep"
    finished_updates = []

    def interrupt_third_run(state):
        finished_updates.append(state.step)
        if len(finished_updates) == 5:  # the third run's first update
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "_after_update", interrupt_third_run)
    assert main(["--quiet", "sweep", str(path), "--output-dir", str(out)]) == 130
    assert "--resume" in capsys.readouterr().err
    record = json.loads((out / "sweep.json").read_text())
    assert [r["status"] for r in record["runs"]] == ["success", "success", "interrupted", "pending"]
    monkeypatch.undo()
    first_runs = {name: (out / "runs" / name / "experiment_metrics.json").read_bytes() for name in RUNS[:2]}

    assert main(["--quiet", "sweep", str(path), "--output-dir", str(out)]) == 2  # a sweep is there: --resume
    assert "continue it with --resume" in capsys.readouterr().err
    code = main(["--quiet", "sweep", str(path), "--output-dir", str(out), "--resume"])
    captured = capsys.readouterr()
    assert code in (0, 1)  # the verdict on random tones may be either; the run statuses may not
    record = json.loads((out / "sweep.json").read_text())
    assert [r["name"] for r in record["runs"]] == RUNS
    assert [r["status"] for r in record["runs"]] == ["success"] * 4
    assert "lr5e-3_seed1: already success, skipped" in captured.err and "resuming lr1e-3_seed1" in captured.err
    assert {name: (out / "runs" / name / "experiment_metrics.json").read_bytes() for name in RUNS[:2]} == first_runs
    resumed = json.loads((out / "runs" / "lr1e-3_seed1" / "experiment_metrics.json").read_text())
    assert [leg["resumed_from_step"] for leg in resumed["legs"]] == [None, 1]  # the update before the cut
    # The main manifest's baseline was decoded once for the whole sweep; the other runs reused it.
    assert record["baselines"]["decoded_by_manifest"][str(main_set)] == 1
    contracts = {json.dumps(json.loads((out / "runs" / n / "experiment_metrics.json").read_text())
                            ["baseline"]["main"]["contract"], sort_keys=True) for n in RUNS}
    assert len(contracts) == 1
    for name in RUNS:  # each run folder still holds its baseline transcripts (a copy of the shared ones)
        assert (out / "runs" / name / "baseline" / "main" / "transcripts.jsonl").is_file()
    # decide per group of runs that differ only by seed
    assert [g["group"] for g in record["groups"]] == ["lr5e-3", "lr1e-3"]
    for group in record["groups"]:
        reproducibility = [v for v in group["verdicts"] if v["criterion"] == "reproducibility"]
        assert len(group["runs"]) == 2 and reproducibility[0]["outcome"] != "not assessed"
    report = (out / "training_report.md").read_text()
    assert "The runs come from: `moonlora --quiet sweep" in report and (out / "report.html").is_file()
    assert "Best and last adapter on the main manifest" in report
    assert "| lr5e-3 | lr5e-3_seed1, lr5e-3_seed2 |" in captured.out


def test_axis_flags_override_the_grid_and_name_the_runs(grid, tmp_path, capsys):
    path, _ = grid
    out = tmp_path / "s"
    assert main(["--quiet", "sweep", str(path), "--output-dir", str(out), "--learning-rate", "2e-3", "--seed", "7",
                 "--lora-r", "2", "--lora-r", "4", "--max-steps", "1"]) in (0, 1)
    record = json.loads((out / "sweep.json").read_text())
    assert [r["name"] for r in record["runs"]] == ["r2", "r4"]
    assert record["axes"] == {"learning_rate": [0.002], "seed": [7], "lora_r": [2, 4], "max_steps": [1]}
    run = json.loads((out / "runs" / "r4" / "experiment_config.json").read_text())
    assert (run["train"]["max_steps"], run["train"]["learning_rate"], run["lora"]["r"]) == (1, 0.002, 4)


@pytest.mark.parametrize("text, message", [
    ("[grid]\nlearning-rate = 1e-4\n", "give a non-empty list"),
    ("[grid]\nbatch-size = [1, 2]\n", "not an axis"),
    ("[experiment]\nseed = 1\n[grid]\nseed = [1, 2]\n", "both in [experiment] and [grid]"),
    ("[runs]\n", "unknown table"),
    ("not toml [", "not a readable TOML grid"),
])
def test_bad_grid_files_are_one_line_errors_naming_the_file(tmp_path, text, message):
    path = tmp_path / "g.toml"
    path.write_text(text)
    with pytest.raises(SweepError, match=re.escape(message)) as error:
        load_grid(path)
    assert str(path) in str(error.value)


def test_a_bad_setting_in_the_grid_is_refused_before_anything_runs(grid, tmp_path, capsys):
    path, _ = grid
    path.write_text(path.read_text().replace("max-steps = 2", 'max-steps = "many"'))
    assert main(["--quiet", "sweep", str(path), "--output-dir", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}: max-steps = 'many'" in err and not (tmp_path / "s").exists()


@pytest.mark.parametrize("name, runs", [("demo_lr_seed", 4), ("h2_steps", 6), ("h3_learning_rates", 6),
                                        ("h4_domain_shift", 2)])
def test_the_example_grids_expand_into_the_plans_runs(name, runs, tmp_path):
    from pathlib import Path

    from moonlora.sweep import SweepConfig, plan_runs

    path = Path(__file__).resolve().parents[1] / "examples" / "sweeps" / f"{name}.toml"
    config = SweepConfig.from_grid(load_grid(path), {}, output_dir=str(tmp_path))
    planned = plan_runs(config)
    assert len(planned) == runs and len({run.config.output_dir for run in planned}) == runs
    assert all(run.config.dataset_path == "data/atc/train.jsonl" for run in planned)
    readme = (path.parent / "README.md").read_text()
    assert f"| `{name}.toml` |" in readme and readme.split(f"| `{name}.toml` |")[1].split("\n")[0].endswith(f"| {runs} |")


def test_a_foreign_folder_is_never_used_or_deleted_even_with_overwrite(grid, tmp_path, capsys):
    path, _ = grid
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("not moonlora's")
    for extra in ([], ["--overwrite"]):
        assert main(["--quiet", "sweep", str(path), "--output-dir", str(out), *extra]) == 2
        assert capsys.readouterr().err.count("\n") == 1
    assert (out / "notes.txt").read_text() == "not moonlora's" and sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert main(["--quiet", "sweep", str(path), "--output-dir", str(tmp_path / "none"), "--resume"]) == 2
    assert "drop --resume" in capsys.readouterr().err


def write_grid(tmp_path, text: str):
    path = tmp_path / "g.toml"
    path.write_text(text)
    return load_grid(path)


def test_from_grid_puts_command_line_flags_over_the_grid_files_settings_and_axes(tmp_path):
    from moonlora.sweep import SweepConfig

    grid = write_grid(tmp_path, '[experiment]\ndataset-path = "t.jsonl"\nmanifest-path = "m.jsonl"\nbatch-size = 2\n'
                                'lora-alpha = 4\nextra-manifest = ["x.jsonl", "y.jsonl"]\n'
                                '[grid]\nseed = [1, 2]\ntarget-modules = [["q_proj", "v_proj"], "fc1,fc2"]\n')
    config = SweepConfig.from_grid(grid, {"seed": ["7"], "lora-r": 3, "batch_size": "5", "lora_dropout": 0.1,
                                          "rms_target_dbfs": -20.0}, output_dir=str(tmp_path / "s"), resume=True)
    assert config.axes == {"seed": (7,), "target_modules": (("q_proj", "v_proj"), ("fc1", "fc2")), "lora_r": (3,)}
    base = config.base
    assert (base.train.batch_size, base.lora.dropout, base.lora.alpha, base.audio.rms_target_dbfs) == (5, 0.1, 4.0,
                                                                                                        -20.0)
    assert base.extra_manifests == ("x.jsonl", "y.jsonl") and base.output_dir == str(tmp_path / "s")
    assert base.train.seed == 42 and base.lora.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2")
    assert config.resume and config.grid_file == str(grid.path)


def test_from_grid_takes_the_main_manifest_from_its_axis_and_needs_the_training_manifest(tmp_path):
    from moonlora.sweep import SweepConfig

    grid = write_grid(tmp_path, '[grid]\nmanifest-path = ["a.jsonl", "b.jsonl"]\n')
    config = SweepConfig.from_grid(grid, {"dataset_path": "t.jsonl"}, output_dir="s")
    assert config.base.manifest_path == "a.jsonl" and config.axes["manifest_path"] == ("a.jsonl", "b.jsonl")
    with pytest.raises(SweepError, match="sweep needs --dataset-path"):
        SweepConfig.from_grid(grid, {}, output_dir="s")


@pytest.mark.parametrize("text, overrides, message", [
    ('output-dir = "x"\n', {}, "output-dir: not an experiment setting"),
    ('lora-rank = 4\n', {}, "lora-rank: not an experiment setting"),
    ('select = "worst"\n', {}, "--select must be best or last"),
    ('[grid]\nseed = [1, "one"]\n', {}, "seed = 'one': invalid literal"),
    ('[grid]\nseed = [1, 1]\n', {}, "seed: a value is listed twice"),
    ('', {"max_steps": "many"}, "max-steps = 'many'"),  # an axis
    ('', {"grad_accum": "many"}, "grad-accum = 'many'"),  # a shared setting
])
def test_from_grid_refuses_bad_settings_in_one_line_naming_the_grid_file(tmp_path, text, overrides, message):
    from moonlora.sweep import SweepConfig

    grid = write_grid(tmp_path, '[experiment]\ndataset-path = "t.jsonl"\nmanifest-path = "m.jsonl"\n' + text)
    with pytest.raises(SweepError, match=re.escape(message)) as error:
        SweepConfig.from_grid(grid, overrides, output_dir="s")
    assert str(error.value).startswith(f"{grid.path}: ") and "\n" not in str(error.value)

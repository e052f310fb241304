import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT, VENV_BIN, free_port

CARINSPECT = str(VENV_BIN / "carinspect")


def run(*args: str, cwd: Path = REPO_ROOT, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CARINSPECT, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
        env={**os.environ, **env},
    )  # fmt: skip


def one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    """A failure from input or state: exit 2, one ERROR line, no traceback."""
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    errors = [line for line in out.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, out.stderr
    return errors[0]


def test_help_lists_every_stage() -> None:
    out = run("--help")
    assert out.returncode == 0
    for command in (
        "ingest", "split", "train", "evaluate", "threshold", "export", "register", "promote",
        "rollback", "status", "models", "serve", "predict", "pipeline", "webhook", "data",
    ):  # fmt: skip
        assert f" {command} " in out.stdout, command
    assert "demo" in run("data", "--help").stdout
    assert "--params" in run("ingest", "--help").stdout


def test_bad_params_exit_2_naming_key(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"ingest": {"shortside": 64}}))
    out = run("ingest", "--params", str(params), "--out", str(tmp_path / "o"))
    assert out.returncode == 2
    assert f"{params}: invalid parameters" in out.stderr
    assert "ingest.shortside: unknown key" in out.stderr
    assert "Traceback" not in out.stderr


def test_bad_source_and_manifest_exit_2(tmp_path: Path) -> None:
    params = REPO_ROOT / "params.yaml"
    out = run(
        "ingest",
        "--params",
        str(params),
        "--source",
        str(tmp_path / "none"),
        "--out",
        str(tmp_path / "o"),
    )
    assert out.returncode == 2 and "not found" in out.stderr
    out = run(
        "split",
        "--params",
        str(params),
        "--manifest",
        str(tmp_path / "m.csv"),
        "--out",
        str(tmp_path / "o"),
    )
    assert out.returncode == 2 and "m.csv: file not found" in out.stderr


def test_demo_ingest_split_from_the_command_line(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    raw["data"]["demo"]["per_class"] = 12
    params.write_text(yaml.safe_dump(raw))
    out = run("data", "demo", "--params", str(params), "--out", str(tmp_path / "demo"))
    assert out.returncode == 0, out.stderr
    assert "32 files written" in out.stdout
    out = run("ingest", "--params", str(params), "--source", "demo", "--out", str(tmp_path / "ing"))
    assert out.returncode == 0, out.stderr
    assert "25 images in 2 classes" in out.stdout and "7 dropped" in out.stdout
    out = run(
        "split",
        "--params",
        str(params),
        "--manifest",
        str(tmp_path / "ing" / "manifest.csv"),
        "--out",
        str(tmp_path / "split"),
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "split" / "splits.csv").is_file()


def test_register_against_a_store_without_the_run(
    tmp_path: Path, upstream: dict[str, Path]
) -> None:
    """run.json names a run of another store: exit 2 naming run.json, both stores, the fix."""
    run_json = upstream["best"].parent / "run.json"
    empty = f"sqlite:///{tmp_path / 'other.db'}"
    out = run(
        "register", "--export", str(upstream["export"]), "--metrics", str(upstream["metrics"]),
        "--run", str(run_json), "--out", str(tmp_path / "registered.json"),
        cwd=tmp_path, MLFLOW_TRACKING_URI=empty,
    )  # fmt: skip
    line = one_line_error(out)
    assert (
        f"{run_json}: MLflow run {upstream['run_id']} is not in the tracking store {empty}" in line
    )
    assert f"set MLFLOW_TRACKING_URI=sqlite:///{upstream['tracking']}" in line
    assert not (tmp_path / "registered.json").exists()


def test_malformed_run_json(tmp_path: Path) -> None:
    bad = tmp_path / "run.json"
    bad.write_text('{"experiment": "carinspect"}')
    out = run("register", "--run", str(bad), cwd=tmp_path)
    assert f"{bad}: not a run reference from train (has no run_id)" in one_line_error(out)


@pytest.mark.parametrize("command", [["models"], ["status"], ["promote"]])
def test_unreachable_tracking_server(tmp_path: Path, command: list[str]) -> None:
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    out = run(
        *command, "--params", str(REPO_ROOT / "params.yaml"), cwd=tmp_path,
        MLFLOW_TRACKING_URI=uri, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
    )  # fmt: skip
    assert f"MLflow tracking server {uri} is unreachable" in one_line_error(out)


def test_empty_store_and_bad_alias(tmp_path: Path) -> None:
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    params = str(REPO_ROOT / "params.yaml")
    line = one_line_error(
        run("status", "--params", params, cwd=tmp_path, MLFLOW_TRACKING_URI=empty)
    )
    assert f"MLflow ({empty}): Registered Model with name=carinspect not found" in line
    line = one_line_error(
        run("models", "--params", params, cwd=tmp_path, MLFLOW_TRACKING_URI=empty)
    )
    assert "registered model 'carinspect' not found in" in line
    out = run(
        "predict", str(tmp_path), cwd=tmp_path, MLFLOW_TRACKING_URI=empty,
        MODEL_URI="models:/carinspect@nope",
    )  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "models:/carinspect@nope" in out.stderr and "set MODEL_URI to" in out.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["promte"], "No such command 'promte'. Did you mean 'promote'?"),
        (["predict"], "Missing argument 'target'."),
        (["models", "--json", "true"], "Got unexpected extra argument(s) (true)"),
    ],
)
def test_usage_errors_are_the_usage_and_one_line(
    tmp_path: Path, args: list[str], says: str
) -> None:
    out = run(*args, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert out.stderr.startswith("Usage: carinspect"), out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("Error: ")]
    assert errors == [f"Error: {says}"], out.stderr
    assert len(out.stderr.splitlines()) <= 5, out.stderr


def test_version_and_flags_shown_as_flags() -> None:
    from importlib.metadata import version

    out = run("--version")
    assert (out.returncode, out.stdout) == (0, f"carinspect {version('carinspect')}\n")
    help_text = run("models", "--help").stdout
    assert "--json " in help_text and "<bool>" not in help_text, help_text


def test_a_positive_class_the_data_lacks_stops_at_split_before_training(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    for label in ("sedan", "pickup"):
        for i in range(6):
            (tmp_path / "photos" / label).mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng(len(label) * 100 + i)
            pixels = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "photos" / label / f"{i}.png")
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["data"]["source"] = str(tmp_path / "photos")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert run("ingest", cwd=tmp_path).returncode == 0
    out = run("split", cwd=tmp_path)
    assert (
        "threshold.positive_class 'clean' is not one of ['pickup', 'sedan'] (the data's classes)"
        in one_line_error(out)
    )
    assert not (tmp_path / "data" / "split").exists()
    params["threshold"]["positive_class"] = None
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert run("split", cwd=tmp_path).returncode == 0


def test_predict_outside_a_project_names_the_store_and_creates_none(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (64, 48), (90, 90, 90)).save(tmp_path / "car.jpg")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    out = subprocess.run(
        [CARINSPECT, "predict", "car.jpg"], cwd=tmp_path, capture_output=True, text=True,
        timeout=300, env=env,
    )  # fmt: skip
    assert out.returncode != 0
    assert f"{tmp_path / 'mlflow.db'} does not exist (run from the project folder" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "mlflow.db").exists()

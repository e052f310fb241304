import subprocess
from pathlib import Path

import yaml

from tests.conftest import REPO_ROOT, VENV_BIN

CARINSPECT = str(VENV_BIN / "carinspect")


def run(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CARINSPECT, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_help_lists_every_stage() -> None:
    out = run("--help")
    assert out.returncode == 0
    for command in ("ingest", "split", "data"):
        assert command in out.stdout
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

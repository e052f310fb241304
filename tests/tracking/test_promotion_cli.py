"""`carinspect promote | rollback | status | models` as a user runs them (embedded store)."""

import json
import os
import subprocess
from pathlib import Path

from tests.conftest import REPO_ROOT, VENV_BIN, registered_store


def test_promote_status_models_rollback_commands(tmp_path: Path, upstream: dict[str, Path]) -> None:
    uri = registered_store(tmp_path, upstream)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "CARINSPECT_USER": "tester"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(VENV_BIN / "carinspect"), *args, "--params", str(REPO_ROOT / "params.yaml")],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    refused = cli("promote")  # the two-epoch test model is near chance: below the 0.65 floor
    assert refused.returncode == 2, refused.stderr
    assert "gate refused carinspect version 1" in refused.stderr
    assert "< floor 0.6500" in refused.stderr and "Traceback" not in refused.stderr
    no_reason = cli("promote", "--force")
    assert no_reason.returncode == 2 and "--force needs --reason" in no_reason.stderr

    forced = cli("promote", "--force", "--reason", "smoke test of the serving path")
    assert forced.returncode == 0, forced.stderr
    assert "champion: - -> 1  force by tester" in forced.stdout
    again = cli("promote")  # the challenger is the champion now
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "carinspect version 1 already has alias champion: nothing to do"

    status = json.loads(cli("status", "--json").stdout)
    assert status["aliases"] == {"challenger": "1", "champion": "1"}
    assert [m["action"] for m in status["trail"]] == ["force"]
    assert status["trail"][0]["gate"]["floor"] == 0.65

    rows = json.loads(cli("models", "--json").stdout)
    assert rows[0]["version"] == "1" and rows[0]["aliases"] == ["challenger", "champion"]
    assert "git.commit" in rows[0]["lineage"]
    table = cli("models").stdout.splitlines()
    assert table[0].split()[:4] == ["version", "aliases", "created", "test.accuracy"]
    assert len(json.loads(cli("models", "--json", "--limit", "1").stdout)) == 1

    nothing = cli("rollback")
    assert nothing.returncode == 2 and "no earlier champion" in nothing.stderr

"""Checkpoints: equal states give equal files, and the weights digest tells weights apart."""

from pathlib import Path

import torch

from carinspect.modeling.checkpoint import load_checkpoint, save_checkpoint, weights_digest


def _state() -> dict:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    return {"model": net.state_dict(), "classes": ["a", "b"], "config": {}, "epoch": 0}


def test_the_same_state_saved_twice_gives_the_same_bytes(tmp_path: Path) -> None:
    """torch.save given a path records that (temporary, random) name in the zip: not here."""
    state = _state()
    save_checkpoint(state, tmp_path / "a" / "best.pt")
    save_checkpoint(state, tmp_path / "b" / "last.pt")
    assert (tmp_path / "a" / "best.pt").read_bytes() == (tmp_path / "b" / "last.pt").read_bytes()
    assert not list((tmp_path / "a").glob(".*tmp*"))
    loaded = load_checkpoint(tmp_path / "a" / "best.pt")
    assert weights_digest(loaded["model"]) == weights_digest(state["model"])


def test_weights_digest_sees_one_changed_value_a_dtype_and_a_name() -> None:
    weights = _state()["model"]
    base = weights_digest(weights)
    assert "1.num_batches_tracked" in weights  # a 0-dim tensor is digested too
    changed = dict(weights)
    changed["0.weight"] = weights["0.weight"].clone()
    changed["0.weight"][0, 0, 0, 0] += 1e-7
    assert weights_digest(changed) != base
    assert weights_digest({**weights, "0.bias": weights["0.bias"].double()}) != base
    assert weights_digest({"renamed": weights["0.weight"]}) != weights_digest(
        {"0.weight": weights["0.weight"]}
    )
    assert weights_digest({"w": torch.ones(3, dtype=torch.bfloat16)})  # no numpy dtype needed

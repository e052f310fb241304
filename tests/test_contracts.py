"""The stage contracts: model.json and the decision rule validated by one set of rules."""

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from carinspect.contracts.base import ContractError
from carinspect.contracts.cards import parse_card, read_card
from carinspect.contracts.folders import ExportDir, IngestDir, MissingStageOutput, TrainDir
from carinspect.contracts.rules import BinaryRule, MulticlassRule, parse_rule, read_rule


def test_an_exported_card_round_trips_unchanged(upstream: dict[str, Path]) -> None:
    export = ExportDir(upstream["export"])
    raw = json.loads(export.card.read_text())
    card = read_card(export.card)
    assert card.to_json() == raw  # what export wrote is exactly the contract
    assert card.preprocess.img_size == raw["input"]["shape"][-1]
    assert card.rule == raw["decision"]
    rule = read_rule(upstream["threshold"])  # threshold.json: the rule plus its report
    assert isinstance(rule, BinaryRule)
    assert rule.model_dump() == raw["decision"]


def _changed(card: dict[str, Any], change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    out = copy.deepcopy(card)
    change(out)
    return out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.pop("decision"), "has no decision"),
        (lambda c: c.pop("preprocess"), "has no preprocess"),
        (lambda c: c.update(threshold=0.5), "has an unknown field threshold"),
        (lambda c: c["decision"].update(t_low=0.99, t_high=0.5), "t_low 0.99 is above t_high"),
        (lambda c: c["decision"].update(t_high=1.5), r"decision.t_high: Input should be less"),
        (lambda c: c.update(classes=["ok", "cracked"]), "decision rule's classes"),
        (lambda c: c.update(classes=["a", "a"]), "repeat a name"),
        (lambda c: c["preprocess"].update(resize="zoom"), "preprocess.resize"),
        (lambda c: c["input"].update(shape=["batch", 3, 7, 7]), "does not match img_size"),
        (lambda c: c.update(temperature=0), "temperature: Input should be greater than 0"),
        (lambda c: c["decision"].update(task="ranking"), "decision: Input tag 'ranking'"),
    ],
)
def test_bad_cards_are_refused_naming_the_field(
    upstream: dict[str, Path], change: Callable[[dict[str, Any]], object], message: str
) -> None:
    card = json.loads(ExportDir(upstream["export"]).card.read_text())
    with pytest.raises(ContractError, match=message) as err:
        parse_card(_changed(card, change), "somewhere/model.json")
    assert str(err.value).startswith("somewhere/model.json ")


def test_multiclass_rules() -> None:
    rule = parse_rule(
        {"task": "multiclass", "classes": ["a", "b", "c"], "per_class": {"b": 0.7}, "splits": {}},
        "threshold.json",
    )
    assert isinstance(rule, MulticlassRule)
    assert (rule.min_confidence, rule.per_class) == (0.0, {"b": 0.7})
    with pytest.raises(ContractError, match=r"per_class names \['z'\], not among the classes"):
        parse_rule({"task": "multiclass", "classes": ["a", "b"], "per_class": {"z": 0.5}}, "t")
    with pytest.raises(ContractError, match="positive_class 'x'"):
        parse_rule(
            {"task": "binary", "classes": ["a", "b"], "positive_class": "x",
             "negative_class": "b", "threshold": 0.5, "t_low": 0.5, "t_high": 0.5},
            "t",
        )  # fmt: skip


def test_files_that_are_not_there_or_not_json(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match=r"model\.json: not found \(the model card export"):
        read_card(tmp_path / "model.json")
    (tmp_path / "threshold.json").write_text("{not json")
    with pytest.raises(ContractError, match=r"threshold\.json: not JSON"):
        read_rule(tmp_path / "threshold.json")


def test_stage_folders_own_their_file_names(tmp_path: Path) -> None:
    train = TrainDir(tmp_path / "train")
    assert (train.best, train.run_ref) == (tmp_path / "train/best.pt", tmp_path / "train/run.json")
    assert IngestDir(str(tmp_path)).manifest == tmp_path / "manifest.csv"  # str is fine
    with pytest.raises(MissingStageOutput, match=r"best\.pt not found: it is written by the train "
                       r"stage \(run it first, for example `dvc repro train`\)"):  # fmt: skip
        train.require(train.best)

"""Which precision training takes on a CPU: bf16 only where the CPU computes it natively."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from carinspect.contracts.tasks import TaskSpec
from carinspect.training.cpu import bf16_in_hardware, cpu_flags
from carinspect.training.loop import Precision, precision_flips

CPU = torch.device("cpu")
SAPPHIRE_RAPIDS = frozenset({"avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16"})
ZEN4 = frozenset({"avx512f", "avx512_vnni", "avx512_bf16"})
SKYLAKE = frozenset({"avx2", "avx512f", "avx512bw"})


@pytest.mark.parametrize(
    ("flags", "enabled", "expected"),
    [(SAPPHIRE_RAPIDS, True, "bf16"), (ZEN4, True, "bf16"), (SKYLAKE, True, "fp32"),
     (frozenset(), True, "fp32"), (SAPPHIRE_RAPIDS, False, "fp32")],
)  # fmt: skip
def test_cpu_training_takes_bf16_only_where_the_cpu_has_it(
    flags: frozenset[str], enabled: bool, expected: str
) -> None:
    precision = Precision.choose(enabled, CPU, flags)
    assert precision.name == expected
    assert precision.scaler is None  # bf16 keeps fp32's exponent: no loss scaling


def test_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Xeon\nflags\t\t: fpu avx512f amx_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu avx512f amx_bf16\n")  # fmt: skip
    assert cpu_flags(info) == {"fpu", "avx512f", "amx_bf16"}
    assert bf16_in_hardware(cpu_flags(info))
    assert cpu_flags(tmp_path / "absent") == frozenset()  # not Linux: fp32, nothing assumed


def test_bf16_autocast_runs_a_training_step_in_bf16_with_fp32_weights() -> None:
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2)
    )
    precision = Precision(torch.bfloat16, None)
    x = torch.randn(2, 3, 8, 8)
    with precision.autocast(CPU):
        hidden = model[0](x)
        out = model[2](model[1](hidden))
    assert hidden.dtype == torch.bfloat16
    out.float().sum().backward()
    assert all(p.dtype == torch.float32 and p.grad is not None for p in model.parameters())


def test_answers_that_bf16_rounding_changes_are_counted_against_fp32() -> None:
    # two logits 2^-10 apart: fp32 tells them apart, bf16's 8-bit mantissa rounds them equal
    model = torch.nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0], [1.0 + 2**-10]]))
    loader = [(torch.ones(3, 1), torch.zeros(3, dtype=torch.long)),
              (torch.full((2, 1), 2.0), torch.zeros(2, dtype=torch.long))]  # fmt: skip
    task = TaskSpec(name="cleanliness", classes=["clean", "dirty"])
    bf16 = Precision(torch.bfloat16, None)
    assert precision_flips(model, loader, CPU, bf16, [task]) == (5, 5)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0], [1.5]]))  # far apart: no answer changes
    assert precision_flips(model, loader, CPU, bf16, [task]) == (0, 5)
    assert precision_flips(model, loader, CPU, Precision(None, None), [task]) == (0, 5)

"""The paper's complexity template and its parameter/FLOP counts (Table 2 and Table 3)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torchvision
from conftest import REPO

from resnext_det import ResNeXtSpec
from resnext_det.complexity import (
    PAPER_CARDINALITIES,
    backbone_complexity,
    count_complexity,
    equal_complexity_sweep,
    equal_complexity_width,
)


def test_template_reproduces_the_papers_table():
    assert [equal_complexity_width(c) for c in PAPER_CARDINALITIES] == [64, 40, 24, 14, 4]
    sweep = equal_complexity_sweep(50)
    assert list(sweep) == ["1x64d", "2x40d", "4x24d", "8x14d", "32x4d"]


def test_template_scales_to_other_reference_widths():
    # a network of a quarter of the width: its own equal-complexity widths, not the paper's
    widths = [equal_complexity_width(c, reference_width=16, channels=64) for c in (1, 2, 4)]
    assert widths == [16, 10, 6]
    with pytest.raises(ValueError, match=r"cardinality \(MODEL\.RESNETS\.NUM_GROUPS\) must be"):
        equal_complexity_width(0)


def test_tool_prints_the_papers_numbers():
    """tools/complexity.py: ResNeXt-50 32x4d 25.0M / 4.2 GFLOPs, ResNet-50 25.5M / 4.1 at 224x224
    with the fc, as in the paper's Table 3."""
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "complexity.py"),
            "--spec",
            "50,1,64",
            "--spec",
            "50,32,4",
            "--size",
            "64",
            "64",
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
    ).stdout
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in out.splitlines()
        if line.startswith("| R-") or line.startswith("| X-")
    }
    params, gflops = float(rows["R-50"][3]), float(rows["R-50"][4])
    assert (round(params, 1), round(gflops, 1)) == (25.5, 4.1)
    params, gflops = float(rows["X-50-32x4d"][3]), float(rows["X-50-32x4d"][4])
    assert (round(params, 1), round(gflops, 1)) == (25.0, 4.2)


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--size", "100000", "100000"], "argument --size: must be from 32 to 4096; got 100000"),
        (["--size", "0", "0"], "argument --size: must be from 32 to 4096; got 0"),
        (["--size", "-5", "100"], "argument --size: must be from 32 to 4096; got -5"),
        (["--spec", "50,100000,100000"], "C*D at most 1024"),
        (["--spec", "50,0,4"], "C and D must be >= 1"),
    ],
)
def test_tool_bounds_what_it_would_build(argv, words, capsys):
    """The count builds the model and a real input: sizes that cannot run (0, negative) or would
    allocate tens of GB are usage errors before anything is built."""
    from resnext_det.commands.complexity import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert words in capsys.readouterr().err


def test_counts_agree_with_torchvision():
    """Our ImageNet-shape count of X-50 equals the same count on torchvision's resnext50_32x4d."""
    ours = backbone_complexity(ResNeXtSpec(depth=50, cardinality=32, width_per_group=4))
    theirs = count_complexity(torchvision.models.resnext50_32x4d(), (224, 224))
    assert ours.params == theirs.params
    assert ours.flops == theirs.flops


@pytest.mark.parametrize("cardinality", PAPER_CARDINALITIES)
def test_sweep_keeps_whole_network_complexity(cardinality):
    spec = ResNeXtSpec.template(depth=50, cardinality=cardinality)
    params = backbone_complexity(spec, (32, 32)).params
    reference = backbone_complexity(
        ResNeXtSpec(depth=50, cardinality=1, width_per_group=64), (32, 32)
    ).params
    assert abs(params - reference) / reference < 0.025

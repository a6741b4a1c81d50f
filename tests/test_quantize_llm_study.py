"""The lesson 06 §7-§8 tables (labkit.quantize.lm_study) on a small untrained GPT: shapes and sense."""

import pytest
import torch

from labkit.lm.model import GPT, get_config
from labkit.quantize.groupwise import bits_per_weight
from labkit.quantize.lm_study import calibration_batches, gap_closed, outlier_rows, weight_only_rows


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = GPT(get_config("tiny")).eval()
    ids = torch.randint(0, 256, (3000,), generator=torch.Generator().manual_seed(1))
    calib = calibration_batches(ids, n_batches=2, batch_size=2, block_size=64, generator=torch.Generator().manual_seed(2))
    return model, calib, ids[:1000]


def test_weight_only_rows_leave_the_model_alone_and_count_bits(setup):
    model, calib, val = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = weight_only_rows(model, calib, val, methods=("rtn", "gptq"), bits=(2,), group_sizes=(32,), progress=False)
    assert [r["method"] for r in rows] == ["fp32", "rtn", "gptq"]
    assert rows[1]["bits_per_weight"] == bits_per_weight(2, 32) == 2 + 18 / 32
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert rows[1]["perplexity"] != rows[0]["perplexity"]


def test_gap_closed_hand_example():
    rows = [{"method": "fp32", "bits": 32, "group_size": None, "perplexity": 10.0},
            {"method": "rtn", "bits": 3, "group_size": 128, "perplexity": 14.0},
            {"method": "gptq", "bits": 3, "group_size": 128, "perplexity": 11.0}]
    assert gap_closed(rows, "gptq") == 0.75
    assert gap_closed(rows, "rtn") == 0.0
    with pytest.raises(ValueError, match="awq"):
        gap_closed(rows, "awq")
    with pytest.raises(ValueError, match="gap"):
        gap_closed([dict(rows[0]), {**rows[1], "perplexity": 9.0}], "rtn")


def test_outlier_rows_fp32_is_unchanged_by_injection(setup):
    model, calib, val = setup
    rows = outlier_rows(model, calib, val, channels=(3, 9), factor=30.0)
    fp = [r["perplexity"] for r in rows if r["quantization"] == "fp32"]
    assert len(rows) == 6 and fp[0] == pytest.approx(fp[1], rel=1e-5)


def test_bad_inputs_are_refused(setup):
    model, calib, val = setup
    with pytest.raises(ValueError, match="methods"):
        weight_only_rows(model, calib, val, methods=("hqq",))
    with pytest.raises(ValueError, match="calib"):
        weight_only_rows(model, [], val)

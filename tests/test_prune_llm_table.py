"""labkit.prune.llm: the perplexity table on a tiny GPT, the norm spread, and the CUDA-only guard."""

import copy

import pytest
import torch

import labkit.prune.llm as llm
from labkit.lm.corpus import course_text, encode, split_ids
from labkit.lm.evaluate import evaluate_lm
from labkit.lm.model import GPT, get_config
from labkit.prune.wanda import input_sq_norms, prune_linear_


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return GPT(get_config("tiny")).eval()


def test_table_rows_match_pruning_by_hand(tiny):
    calib = llm.calibration_batches(tiny.config.block_size, batches=2, batch_size=4,
                                    generator=torch.Generator().manual_seed(0))
    val = torch.randint(0, 256, (600,), generator=torch.Generator().manual_seed(1))
    before = copy.deepcopy(tiny.state_dict())
    rows = llm.pruning_table(tiny, calibration=calib, val=val, device="cpu")
    assert [(r["method"], r["pattern"]) for r in rows] == [("dense", "-"), ("magnitude", "50%"), ("wanda", "50%"),
                                                          ("magnitude", "2:4"), ("wanda", "2:4")]
    assert rows[0]["sparsity"] == 0.0 and all(r["sparsity"] == pytest.approx(0.5) for r in rows[1:])
    assert all(torch.equal(v, tiny.state_dict()[k]) for k, v in before.items())  # the model is left alone
    assert rows[0]["perplexity"] == pytest.approx(evaluate_lm(tiny, val)["perplexity"])
    by_hand = prune_linear_(copy.deepcopy(tiny), method="wanda", nm=(2, 4), sq_norms=input_sq_norms(tiny, calib))
    assert rows[4]["perplexity"] == pytest.approx(evaluate_lm(by_hand, val)["perplexity"])
    assert rows[1]["perplexity"] != rows[2]["perplexity"]  # the two methods prune differently
    extra = llm.pruning_table(tiny, calibration=calib, val=val, device="cpu", ablation=True)[5:]
    assert [(r["method"], r["pattern"]) for r in extra] == [("magnitude", "50% per row"), ("wanda", "50% per layer")]
    by_row = prune_linear_(copy.deepcopy(tiny), method="magnitude", group="row")
    assert extra[0]["perplexity"] == pytest.approx(evaluate_lm(by_row, val)["perplexity"])


def test_calibration_comes_from_the_training_split():
    train = split_ids(encode(course_text()))[0]
    (x,) = llm.calibration_batches(16, batches=1, batch_size=3, generator=torch.Generator().manual_seed(0))
    assert x.shape == (3, 16)
    text = bytes(train.tolist())
    assert all(bytes(row.tolist()) in text for row in x)


def test_norm_spread_by_hand():
    (row,) = llm.norm_spread({"l": torch.tensor([1.0, 4.0, 9.0, 100.0])})  # norms 1, 2, 3, 10
    assert row["min"] == 1.0 and row["max"] == 10.0
    assert row["median"] == 2.0  # torch's median of an even count is the lower middle value
    assert row["max/median"] == 5.0


def test_semi_structured_timing_says_it_needs_cuda_on_cpu():
    result = llm.time_semi_structured(device="cpu")
    assert result["available"] is False and "needs CUDA" in result["reason"]


def test_semi_structured_timing_guard_when_cuda_is_claimed_but_missing(monkeypatch):
    monkeypatch.setattr(llm, "get_device", lambda device=None: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = llm.time_semi_structured()
    assert result["available"] is False and "needs CUDA" in result["reason"]


@pytest.mark.parametrize("call, err, words", [
    (lambda: llm.time_semi_structured(in_features=0), ValueError, "in_features"),
    (lambda: llm.pruning_table(torch.nn.Linear(2, 2)), ValueError, "config"),
    (lambda: llm.norm_spread({"l": torch.ones(2, 2)}), ValueError, "sq_norms"),
])
def test_bad_input(call, err, words):
    with pytest.raises(err, match=words):
        call()

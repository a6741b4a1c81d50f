"""labkit.distill.lm: the student training through labkit.train.fit, against a loop written by hand."""

import statistics
from dataclasses import replace

import pytest
import torch

import labkit.distill.lm as dlm
from labkit.distill.tokens import batch_loss
from labkit.lm.corpus import RandomWindows, course_text, encode, split_ids
from labkit.lm.model import GPT, get_config
from labkit.lm.train import TrainSettings, lr_factor
from labkit.train import seed_everything

TINY = get_config("tiny")


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(123)
    return GPT(TINY).eval()


def by_hand(teacher, kind, steps=4, seed=0):
    """The same training written out with batch_loss(model, batch): AdamW, warm-up + cosine."""
    settings = TrainSettings(steps=steps, batch_size=4, lr=3e-3, warmup=min(50, steps // 10), eval_every=steps, seed=seed)
    g = seed_everything(seed)
    student = GPT(TINY)
    windows = RandomWindows(split_ids(encode(course_text()))[0], TINY.block_size, 4, steps, generator=g)
    opt = torch.optim.AdamW(student.parameters(), lr=3e-3, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, settings))
    loss_fn = batch_loss(None if kind == "scratch" else teacher, temperature=2.0,
                         alpha=0.0 if kind == "scratch" else 0.5, direction="forward" if kind == "scratch" else kind)
    student.train()
    for batch in windows:
        opt.zero_grad()
        loss_fn(student, batch).backward()
        opt.step()
        sched.step()
    return student


@pytest.mark.parametrize("kind", [pytest.param("scratch", marks=pytest.mark.slow), "forward",
                                  pytest.param("reverse", marks=pytest.mark.slow)])
def test_fit_path_equals_the_hand_written_loop(teacher, kind):
    ours = dlm.train_student(teacher, kind=kind, config=TINY, steps=4, batch_size=4, temperature=2.0, alpha=0.5,
                             device="cpu")
    ref = by_hand(teacher, kind)
    for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_teacher_is_not_trained_and_kinds_differ(teacher):
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    fwd = dlm.train_student(teacher, kind="forward", config=TINY, steps=3, batch_size=4, temperature=2.0, device="cpu")
    rev = dlm.train_student(teacher, kind="reverse", config=TINY, steps=3, batch_size=4, temperature=2.0, device="cpu")
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    assert not torch.equal(fwd.head.weight, rev.head.weight)


@pytest.mark.slow
def test_compare_students_summary(teacher):
    runs, summary = dlm.compare_students(teacher, seeds=(0, 1), kinds=("scratch", "forward"), steps=2,
                                         max_batches=1, config=TINY, batch_size=2, device="cpu")
    assert [(r["kind"], r["seed"]) for r in runs] == [("scratch", 0), ("forward", 0), ("scratch", 1), ("forward", 1)]
    for row in summary:
        ppl = [r["perplexity"] for r in runs if r["kind"] == row["kind"]]
        assert row["mean"] == pytest.approx(statistics.fmean(ppl)) and row["std"] == pytest.approx(statistics.stdev(ppl))
    assert all(r["perplexity"] == pytest.approx(torch.tensor(r["val_loss"]).exp().item()) for r in runs)
    assert all("student" not in r for r in runs)
    kept, _ = dlm.compare_students(teacher, seeds=(0,), kinds=("forward",), steps=2, max_batches=1, config=TINY,
                                   batch_size=2, device="cpu", keep_students=True)
    again = dlm.train_student(teacher, kind="forward", steps=2, seed=0, config=TINY, batch_size=2, device="cpu")
    for name, value in again.state_dict().items():  # the kept model is the one that was trained and evaluated
        torch.testing.assert_close(kept[0]["student"].state_dict()[name], value, msg=name)


def test_scratch_does_not_use_the_teacher(teacher):
    """kind="scratch" trains on the next byte alone: the teacher changes nothing (given the same config)."""
    with_teacher = dlm.train_student(teacher, kind="scratch", config=TINY, steps=2, batch_size=4, device="cpu")
    without = dlm.train_student(None, kind="scratch", config=TINY, steps=2, batch_size=4, device="cpu")
    distilled = dlm.train_student(teacher, kind="forward", config=TINY, steps=2, batch_size=4, device="cpu")
    for name, a in with_teacher.state_dict().items():
        torch.testing.assert_close(a, without.state_dict()[name], msg=name)
    assert not torch.equal(with_teacher.head.weight, distilled.head.weight)


@pytest.mark.parametrize("call, err, words", [
    (lambda t: dlm.train_student(t, kind="sideways", config=TINY), ValueError, "kind"),
    (lambda t: dlm.train_student(None, kind="forward", config=TINY), TypeError, "teacher"),
    (lambda t: dlm.train_student(t, kind="forward", steps=0, config=TINY), ValueError, "steps"),
    (lambda t: dlm.train_student(t, kind="forward", config=get_config("course"), steps=1), ValueError, "context"),
    (lambda t: dlm.compare_students(t, seeds=()), ValueError, "seeds"),
    (lambda t: dlm.compare_students(t, keep_students="yes"), TypeError, "keep_students"),
    (lambda t: dlm.train_student(t, kind="forward", alpha=1.5, config=TINY), ValueError, "alpha"),
    (lambda t: dlm.train_student(t, kind="scratch", alpha=-1.0, config=TINY), ValueError, "alpha"),
    (lambda t: dlm.student_config(object()), TypeError, "teacher"),
])
def test_bad_input(teacher, call, err, words):
    with pytest.raises(err, match=words):
        call(teacher)


def test_student_config_is_the_draft_within_the_teachers_context(teacher):
    assert dlm.student_config(teacher) == replace(get_config("draft"), block_size=TINY.block_size)
    assert dlm.student_config(GPT(get_config("course"))) == get_config("draft")
    assert dlm.student_config(None) == get_config("draft")


def test_remembered_teacher_runs_once_per_distinct_batch(teacher):
    memo = dlm.RememberedTeacher(teacher)
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, 256, (2, 8), generator=g)
    other = x.clone()
    other[1, 3] = (other[1, 3] + 1) % 256  # one byte different: a different batch
    with torch.no_grad():
        first, again, changed = memo(x), memo(x.clone()), memo(other)
        assert memo.calls == 2
        torch.testing.assert_close(first, teacher(x), rtol=0, atol=0)
        torch.testing.assert_close(again, first, rtol=0, atol=0)
        torch.testing.assert_close(changed, teacher(other), rtol=0, atol=0)  # not the stale logits of x
    assert memo.config == teacher.config
    with pytest.raises(TypeError, match="teacher"):
        dlm.RememberedTeacher("gpt")


def test_compare_students_reuses_the_teacher_and_trains_the_same_students(teacher):
    """The second distilled kind of a seed reads the remembered logits: the same student as one
    trained on its own, with the teacher run live on every batch."""
    runs, _ = dlm.compare_students(teacher, seeds=(1,), kinds=("forward", "reverse"), steps=3, max_batches=1,
                                   config=TINY, batch_size=2, device="cpu", keep_students=True)
    alone = dlm.train_student(teacher, kind="reverse", steps=3, seed=1, config=TINY, batch_size=2, device="cpu")
    for name, value in alone.state_dict().items():
        torch.testing.assert_close(runs[1]["student"].state_dict()[name], value, rtol=0, atol=0, msg=name)

"""labkit.prune.structured: channel pruning gives the zeroed model's outputs, smaller and cheaper."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from labkit import prune
from labkit.metrics import count_flops
from labkit.models import MLP, SmallCNN
from labkit.train import fit


def _cnn(widths=(8, 16), seed=0) -> SmallCNN:
    torch.manual_seed(seed)
    model = SmallCNN(widths=widths)
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval()


def _pruned_and_zeroed(model, **kwargs):
    pruner = prune.ChannelPruner(model, model.example_inputs(2), **kwargs)
    plan = pruner.plan()
    zeroed = prune.zero_channels_(copy.deepcopy(model), plan, pruner.groups)
    return pruner.step(plan), zeroed, plan


@pytest.mark.parametrize("importance", ["l1", "l2"])
def test_pruned_cnn_equals_the_original_with_those_channels_zeroed(importance):
    model = _cnn()
    x = model.example_inputs(8, generator=torch.Generator().manual_seed(1))[0]
    pruned, zeroed, plan = _pruned_and_zeroed(model, importance=importance, ratio=0.5)
    assert [len(v) for v in plan.values()] == [4, 8]
    assert pruned.features[0].out_channels == 4 and pruned.features[1].num_features == 4
    assert pruned.features[4].in_channels == 4 and pruned.features[4].out_channels == 8
    assert pruned.classifier[1].in_features == 8 * 7 * 7 and pruned.classifier[1].out_features == 10
    with torch.no_grad():
        assert torch.allclose(pruned(x), zeroed(x), atol=1e-5)


def test_pruned_mlp_equals_zeroed_and_classifier_keeps_its_outputs():
    torch.manual_seed(0)
    model = MLP(hidden=(64, 32))
    x = torch.rand(5, 1, 28, 28)
    pruned, zeroed, plan = _pruned_and_zeroed(model, ratio=0.25)
    assert list(plan) == ["layers.1", "layers.3"]
    assert [m.out_features for m in pruned.layers if isinstance(m, nn.Linear)] == [48, 24, 10]
    with torch.no_grad():
        assert torch.allclose(pruned(x), zeroed(x), atol=1e-6)


def test_least_important_channels_are_the_ones_removed():
    model = _cnn()
    with torch.no_grad():
        model.features[0].weight[[1, 5]] *= 1e-3  # tiny filters: the least important
    plan = prune.ChannelPruner(model, model.example_inputs(), ratio=0.25).plan()
    assert plan["features.0"].tolist() == [1, 5]
    manual = model.features[4].weight.detach().abs().sum((1, 2, 3)).argsort()[:4].sort().values
    assert torch.equal(plan["features.4"], manual)


def test_flops_after_pruning_match_the_conv_formula():
    model = _cnn(widths=(8, 16))
    x = model.example_inputs(1)
    pruned = prune.ChannelPruner(model, x, ratio=0.5).step()

    def conv(c_out, c_in, hw):  # 2 * C_out * C_in * k * k * H * W
        return 2 * c_out * c_in * 9 * hw * hw

    expected = conv(4, 1, 28) + conv(8, 4, 14) + 2 * 10 * 8 * 49
    assert count_flops(pruned, x) == expected


def test_ratio_dict_ignored_layers_and_prune_output():
    model = _cnn()
    pruner = prune.ChannelPruner(model, model.example_inputs(), ratio={"features.4": 0.5})
    assert [g.layer for g in pruner.groups] == ["features.4"]
    pruner = prune.ChannelPruner(model, model.example_inputs(), ratio=0.5, ignored_layers=[model.features[0]])
    assert [g.layer for g in pruner.groups] == ["features.4"]
    assert "classifier.1 (x49)" in str(pruner.groups[0])
    torch.manual_seed(0)
    mlp = MLP(hidden=(16,))
    prune.ChannelPruner(mlp, mlp.example_inputs(), ratio=0.5, prune_output=True).step()
    assert mlp(torch.rand(2, 1, 28, 28)).shape == (2, 5)


def test_pruned_model_still_trains(device):
    model = _cnn().to(device).train()
    prune.ChannelPruner(model, model.example_inputs(device=device), ratio=0.5).step()
    assert all(p.device.type == device.type for p in model.parameters())
    x, y = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    history = fit(model, loader, epochs=2, lr=1e-2, progress=False, device=device)
    assert history["train_loss"][1] < history["train_loss"][0]


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.a(x) + self.b(x))


def test_unsupported_graphs_and_bad_arguments():
    model = _cnn()
    x = model.example_inputs()
    with pytest.raises(ValueError, match="would remove all"):
        prune.ChannelPruner(model, x, ratio=1.0).step()
    with pytest.raises(ValueError, match="ratio"):
        prune.ChannelPruner(model, x, ratio=-0.2)
    with pytest.raises(ValueError, match="importance"):
        prune.ChannelPruner(model, x, importance="l3")
    with pytest.raises(ValueError, match="importance of"):
        prune.ChannelPruner(model, x, importance=lambda m: torch.ones(3)).plan()
    with pytest.raises(ValueError, match="ignored_layers"):
        prune.ChannelPruner(model, x, ignored_layers=["features.99"])
    with pytest.raises(TypeError, match="example_inputs"):
        prune.ChannelPruner(model, [1, 2, 3])
    with pytest.raises(ValueError, match="nothing to prune"):
        prune.ChannelPruner(nn.Sequential(nn.ReLU()), torch.rand(2, 3))
    with pytest.raises(ValueError, match="nothing to prune"):
        prune.ChannelPruner(nn.Sequential(nn.Linear(3, 2)), torch.rand(2, 3))  # only the classifier
    with pytest.raises(ValueError, match="add"):
        prune.ChannelPruner(Residual(), torch.rand(2, 4))
    with pytest.raises(ValueError, match="nothing to prune"):  # the rest is the classifier
        prune.ChannelPruner(Residual(), torch.rand(2, 4), ignored_layers=["a", "b"])
    masked = _cnn()
    prune.magnitude_prune_(masked, 0.5)
    with pytest.raises(ValueError, match="make_permanent_"):
        prune.ChannelPruner(masked, x)

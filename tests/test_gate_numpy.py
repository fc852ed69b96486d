"""The MLP gate's numpy inference path computes what its torch network computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moe_agents.routing.gates import GateConfig
from moe_agents.routing.gates.mlp import GatingNetwork, _gelu, _new_mlp


def torch_logits(gate: GatingNetwork, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return gate.net(torch.from_numpy(x)).double().numpy()  # type: ignore[no-any-return]


@pytest.fixture
def gate() -> GatingNetwork:
    return GatingNetwork(_new_mlp(32, 5, GateConfig(hidden=64)), ["a", "b", "c", "d", "e"])


@pytest.fixture
def x() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(50, 32)).astype(np.float32)


class TestNumpyInference:
    def test_gelu_matches_torch(self) -> None:
        """The numpy GELU is torch's exact (erf) GELU to float32 precision, over a wide range."""
        z = np.linspace(-12, 12, 20001, dtype=np.float32)
        expected = torch.nn.functional.gelu(torch.from_numpy(z)).numpy()
        np.testing.assert_allclose(_gelu(z.copy()), expected, rtol=0, atol=1e-6)

    def test_logits_match_the_torch_forward(self, gate: GatingNetwork, x: np.ndarray) -> None:
        """Logits from the numpy path equal the network's torch forward to float32 precision."""
        np.testing.assert_allclose(gate.logits(x), torch_logits(gate, x), rtol=1e-5, atol=1e-5)

    def test_weights_written_in_place_are_seen(self, gate: GatingNetwork, x: np.ndarray) -> None:
        """After the network's weights change in place (``load_state_dict``), logits follow them."""
        before = gate.logits(x)
        other = _new_mlp(32, 5, GateConfig(hidden=64, seed=7))
        gate.net.load_state_dict(other.state_dict())
        after = gate.logits(x)
        assert not np.allclose(before, after)
        np.testing.assert_allclose(after, torch_logits(gate, x), rtol=1e-5, atol=1e-5)

    def test_another_network_shape_runs_through_torch(self, x: np.ndarray) -> None:
        """A network that is not the three-layer GateMLP is evaluated by its own forward."""

        class OneLayer(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.fc1 = torch.nn.Linear(32, 3)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return torch.tanh(self.fc1(x))

        gate = GatingNetwork(OneLayer(), ["a", "b", "c"])
        np.testing.assert_allclose(gate.logits(x), torch_logits(gate, x), rtol=1e-6, atol=1e-6)
        assert gate.predict_proba(x).shape == (50, 3)

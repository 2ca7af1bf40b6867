"""The learning step (Eq. 5 in theta)."""

import pytest
import torch

from shortrun_ot.learning import learn, make_optimizer, reconstruction_loss


def test_reconstruction_loss_by_hand():
    g = torch.nn.Identity()
    z = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    images = torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    # per example ||I - z||^2 = 1 and 2; mean 1.5; divided by 2 sigma^2 = 0.5
    assert reconstruction_loss(g, z, images, sigma=0.5).item() == pytest.approx(3.0)


@pytest.mark.slow
def test_learning_fits_a_linear_generator_to_known_latents():
    torch.manual_seed(0)
    true = torch.nn.Linear(3, 8)
    z = torch.randn(256, 3)
    images = true(z).detach()
    g = torch.nn.Linear(3, 8)
    stats = learn(g, make_optimizer(g, 0.05, 0.5, 0.99), images, z, passes=60, batch_size=64, sigma=1.0,
                  rng=torch.Generator().manual_seed(0))
    assert stats.updates == 60 * 4 and stats.passes == 60
    assert stats.loss_last_pass < 1e-3 * stats.loss_first_pass
    torch.testing.assert_close(g.weight, true.weight, atol=2e-2, rtol=0)

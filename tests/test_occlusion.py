"""Learning from occluded images: the likelihood of the observed pixels (Eq. 5 with a mask m) in inference and
learning, the fixed per-image masks, and the MSE on missing pixels."""

import pytest
import torch

from shortrun_ot import cli
from shortrun_ot.data import occlusion_mask
from shortrun_ot.langevin import langevin_step, log_joint, short_run_inference
from shortrun_ot.learning import reconstruction_loss
from shortrun_ot.methods.base import StageContext, StateFile
from shortrun_ot.metrics import reconstruction_mse
from shortrun_ot.pipeline import build_method, occlusion_of

from test_methods import tiny_settings

SIGMA = 0.3


def linear_generator(weight):
    """g(z) = W z as 1 x 4 x 4 images: a linear-Gaussian model with closed-form gradients."""
    return lambda z: (z @ weight.T).view(len(z), 1, 4, 4)


def problem(seed=0, missing=0.5):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn((16, 3), generator=g, dtype=torch.float64)
    z = torch.randn((5, 3), generator=g, dtype=torch.float64)
    images = torch.randn((5, 1, 4, 4), generator=g, dtype=torch.float64)
    mask = occlusion_mask((5, 1, 4, 4), missing, torch.Generator().manual_seed(seed + 1)).double()
    return weight, z, images, mask


def z_gradient(generator, z, images, mask):
    z = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(log_joint(generator, z, images, SIGMA, mask=mask).sum(), z)
    return grad


def test_the_masked_langevin_gradient_is_the_closed_form_of_the_observed_pixels():
    # grad_z log p(I, z) = W^T (m * (I - W z)) / sigma^2 - z for g(z) = W z
    weight, z, images, mask = problem()
    m, residual = mask.flatten(1), images.flatten(1) - z @ weight.T
    expected = (m * residual) @ weight / SIGMA**2 - z
    torch.testing.assert_close(z_gradient(linear_generator(weight), z, images, mask), expected)
    unmasked = residual @ weight / SIGMA**2 - z
    assert not torch.allclose(expected, unmasked)  # the mask matters


def test_missing_pixels_have_zero_gradient_and_their_values_do_not_matter():
    weight, z, images, mask = problem()
    generator = linear_generator(weight)
    output = generator(z).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(log_joint(lambda _: output, z, images, SIGMA, mask=mask).sum(), output)
    assert (grad[mask.expand_as(grad) == 0] == 0).all() and (grad[mask.expand_as(grad) == 1] != 0).all()
    altered = images + (1 - mask) * 100 * torch.randn(images.shape, dtype=torch.float64)
    torch.testing.assert_close(log_joint(generator, z, altered, SIGMA, mask=mask),
                               log_joint(generator, z, images, SIGMA, mask=mask))
    torch.testing.assert_close(z_gradient(generator, z, altered, mask), z_gradient(generator, z, images, mask))

    # learning: the gradient of the loss in the generator's per-pixel bias is zero exactly on missing pixels
    decoder = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Unflatten(1, (1, 4, 4))).double()
    reconstruction_loss(decoder, z[:1], images[:1], SIGMA, mask[:1]).backward()
    bias_grad = decoder[0].bias.grad.view(4, 4)
    assert (bias_grad[mask[0, 0] == 0] == 0).all() and (bias_grad[mask[0, 0] == 1] != 0).all()


def test_an_all_ones_mask_is_the_likelihood_of_complete_images():
    weight, z, images, _ = problem()
    generator, ones = linear_generator(weight), torch.ones((5, 1, 4, 4), dtype=torch.float64)
    assert torch.equal(log_joint(generator, z, images, SIGMA, mask=ones), log_joint(generator, z, images, SIGMA))
    noise = torch.randn(z.shape, dtype=torch.float64)
    for a, b in zip(langevin_step(generator, z, images, step_size=0.1, sigma=SIGMA, noise=noise, mask=ones),
                    langevin_step(generator, z, images, step_size=0.1, sigma=SIGMA, noise=noise)):
        assert torch.equal(a, b)
    decoder = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Unflatten(1, (1, 4, 4))).double()
    assert torch.equal(reconstruction_loss(decoder, z, images, SIGMA, ones), reconstruction_loss(decoder, z, images, SIGMA))
    runs = [short_run_inference(generator, images, z, steps=4, step_size=0.1, sigma=SIGMA, batch_size=2,
                                rng=torch.Generator().manual_seed(3), mask=mask) for mask in (ones, None)]
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1].log_joint_end == runs[1][1].log_joint_end


def test_masks_hide_the_stated_fraction_and_are_fixed_by_the_seed():
    images = torch.zeros((50, 1, 28, 28))
    settings = {"seed": 3, "occlusion": {"missing": 0.9}}
    mask = occlusion_of(settings, images)
    assert mask.shape == (50, 1, 28, 28) and set(mask.unique().tolist()) == {0.0, 1.0}
    assert ((mask == 0).flatten(1).sum(1) == round(0.9 * 784)).all()  # exactly 90 % of each image
    assert torch.equal(mask, occlusion_of(settings, images))  # every stage of every iteration draws the same
    assert not torch.equal(mask[0], mask[1])  # each image its own mask
    assert not torch.equal(mask, occlusion_of({"seed": 4, "occlusion": {"missing": 0.9}}, images))
    half = occlusion_of({"seed": 3, "occlusion": {"missing": 0.5}}, images)
    assert ((half == 0).flatten(1).sum(1) == 392).all()
    assert occlusion_of({"seed": 3, "occlusion": {"missing": 0.0}}, images) is None
    assert occlusion_of({"seed": 3}, images) is None  # methods without the setting learn from complete images
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        occlusion_mask((2, 1, 4, 4), 1.0, torch.Generator())


@pytest.mark.slow
def test_no_stage_of_ours_sees_a_missing_pixel():
    """Infer and learn give the same bits whatever the missing pixels hold."""
    settings = {**tiny_settings("shortrun"), "occlusion": {"missing": 0.5}}
    method = build_method(settings)
    g = torch.Generator().manual_seed(0)
    images = torch.rand((24, 1, 28, 28), generator=g) * 2 - 1
    mask = occlusion_of(settings, images)
    init, _ = method.run("init", 0, {}, StageContext(images * mask, torch.device("cpu"), mask=mask))
    states = []
    for filler in (0.0, 0.7):
        ctx = StageContext(images * mask + filler * (1 - mask), torch.device("cpu"), mask=mask)
        inferred, report = method.run("infer", 1, {"model": StateFile(init), "latents": StateFile(init)}, ctx)
        learned, _ = method.run("learn", 1, {"model": StateFile(init), "latents": StateFile(inferred)}, ctx)
        states.append((inferred["latents"], learned["generator"], report["mse"]))
    assert torch.equal(states[0][0], states[1][0]) and states[0][2] == states[1][2]
    assert all(torch.equal(states[0][1][k], states[1][1][k]) for k in states[0][1])
    complete = StageContext(images, torch.device("cpu"))
    inferred, _ = method.run("infer", 1, {"model": StateFile(init), "latents": StateFile(init)}, complete)
    assert not torch.equal(inferred["latents"], states[0][0])  # the observed-pixel likelihood is another posterior


def test_mse_on_selected_pixels_is_the_hand_computed_mean():
    # [0, 1] scale: images 1 and 0.5 (model scale 1, 0), reconstructions 0 and 0.5 (model scale -1, 0)
    images = torch.tensor([[[[1.0, 0.0]]]])
    reconstructions = torch.tensor([[[[-1.0, 0.0]]]])
    missing = torch.tensor([[[[1.0, 0.0]]]])
    assert reconstruction_mse(images, reconstructions, missing) == 1.0
    assert reconstruction_mse(images, reconstructions, 1 - missing) == 0.0
    assert reconstruction_mse(images, reconstructions) == 0.5
    with pytest.raises(ValueError, match="selects no pixel"):
        reconstruction_mse(images, reconstructions, torch.zeros_like(missing))


@pytest.mark.parametrize("command, files", [("occlusion", "--grids"), ("figure3", "--latents")])
def test_figure_commands_refuse_unpaired_run_files(tmp_path, capsys, command, files):
    """One grid (or latents file) per metrics file: a missing one is an error, not a silently shorter figure."""
    extra = ["--csv", str(tmp_path / "t.csv"), "--markdown", str(tmp_path / "t.md")] if command == "occlusion" else []
    code = cli.main([command, files, str(tmp_path / "a.pt"), "--metrics", str(tmp_path / "a.json"),
                     str(tmp_path / "b.json"), "--out", str(tmp_path / "f.png"), *extra])
    assert code != 0
    assert "name one file per run, got 1 and 2" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written

"""The built-in networks: shapes, block layout, gradients, weight tying, and errors for bad arguments."""

import pytest
import torch
from torch import nn

from unitkit import Discriminator, EncoderBackbone, GeneratorBackbone, count_parameters
from unitkit.builtin.networks import (
    AppendCoordinates,
    Digits32Discriminator,
    Digits32Encoder,
    Digits32Generator,
    LayerNorm2d,
    MatmulConvTranspose2d,
    MultiscalePatchDiscriminator,
    PatchDiscriminator,
    ResnetEncoder,
    ResnetGenerator,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def assert_all_parameters_get_gradients(*modules: nn.Module) -> None:
    for module in modules:
        for name, p in module.named_parameters():
            assert p.grad is not None, f"{type(module).__name__}.{name} got no gradient"
            assert p.grad.abs().sum() > 0, f"{type(module).__name__}.{name} got a zero gradient"


# ---------------------------------------------------------------------------------------------------------------
# Resnet encoder / generator


@pytest.mark.parametrize(("height", "width"), [(32, 32), (64, 48)])
def test_resnet_autoencoder_shapes(height, width):
    enc = ResnetEncoder(3, width=8, downsamplings=2, res_blocks=2)
    gen = ResnetGenerator(1, enc.latent_channels, downsamplings=2, res_blocks=2)
    assert isinstance(enc, EncoderBackbone) and isinstance(gen, GeneratorBackbone)
    assert enc.latent_channels == 32 and enc.size_multiple == 4
    z = enc(torch.randn(2, 3, height, width))
    assert z.shape == (2, 32, height // 4, width // 4)
    y = gen(z)
    assert y.shape == (2, 1, height, width)
    assert y.abs().max() <= 1


def test_resnet_blocks_layout():
    enc = ResnetEncoder(3, width=4, downsamplings=3, res_blocks=2)
    assert len(enc.blocks) == 1 + 3 + 2
    assert enc.latent_channels == 32 and enc.size_multiple == 8
    gen = ResnetGenerator(3, enc.latent_channels, downsamplings=3, res_blocks=2)
    assert len(gen.blocks) == 2 + 3 + 1
    assert len(ResnetEncoder(1, width=4, downsamplings=0, res_blocks=0).blocks) == 1


def test_resnet_gradients_reach_every_parameter():
    enc = ResnetEncoder(3, width=4, downsamplings=1, res_blocks=1)
    gen = ResnetGenerator(3, enc.latent_channels, downsamplings=1, res_blocks=1)
    gen(enc(torch.randn(2, 3, 16, 16))).square().mean().backward()
    assert_all_parameters_get_gradients(enc, gen)


def test_resnet_blocks_tie_across_domains_with_different_channels():
    enc_a = ResnetEncoder(3, width=4, res_blocks=2)
    enc_b = ResnetEncoder(1, width=4, res_blocks=2)
    gen_a = ResnetGenerator(3, enc_a.latent_channels, res_blocks=2)
    gen_b = ResnetGenerator(1, enc_b.latent_channels, res_blocks=2)
    enc_b.blocks[-1] = enc_a.blocks[-1]
    gen_b.blocks[0] = gen_a.blocks[0]
    assert count_parameters(enc_a, enc_b) < count_parameters(enc_a) + count_parameters(enc_b)
    assert gen_b(enc_b(torch.randn(2, 1, 16, 16))).shape == (2, 1, 16, 16)
    assert gen_a(enc_a(torch.randn(2, 3, 16, 16))).shape == (2, 3, 16, 16)


def test_resnet_zeros_padding():
    enc = ResnetEncoder(3, width=4, padding="zeros")
    assert enc(torch.randn(1, 3, 8, 8)).shape == (1, 16, 2, 2)


def test_resnet_bad_arguments():
    with pytest.raises(ValueError, match="not divisible by 2\\*\\*downsamplings=4"):
        ResnetGenerator(3, latent_channels=6, downsamplings=2)
    with pytest.raises(ValueError, match="width must be at least 1"):
        ResnetEncoder(3, width=0)


# ---------------------------------------------------------------------------------------------------------------
# Digits 32x32 coupled VAE


@pytest.mark.parametrize("size, pad", [(1, 0), (1, 1), (3, 0)])
@pytest.mark.parametrize("bias", [True, False])
def test_matmul_transposed_conv_matches_torch_on_1x1_and_falls_back_elsewhere(size, pad, bias):
    torch.manual_seed(0)
    fast = MatmulConvTranspose2d(6, 5, 4, 2, pad, bias=bias)
    reference = nn.ConvTranspose2d(6, 5, 4, 2, pad, bias=bias)
    reference.load_state_dict(fast.state_dict())  # the same parameters under the same names
    x = torch.randn(3, 6, size, size, requires_grad=True)
    y_fast, y_ref = fast(x), reference(x)
    torch.testing.assert_close(y_fast, y_ref)
    grad = torch.randn_like(y_ref)
    torch.testing.assert_close(torch.autograd.grad(y_fast, [x, fast.weight], grad),
                               torch.autograd.grad(y_ref, [x, reference.weight], grad))  # fmt: skip


def test_digits_autoencoder_shapes_and_range():
    enc = Digits32Encoder(1, width=4)
    gen = Digits32Generator(3, enc.latent_channels, width=4)
    assert len(enc.blocks) == 5 and len(gen.blocks) == 4
    assert enc.latent_channels == 32 and enc.size_multiple == 32
    z = enc(torch.randn(4, 1, 32, 32))
    assert z.shape == (4, 32, 1, 1)
    y = gen(z)
    assert y.shape == (4, 3, 32, 32)
    assert y.abs().max() <= 1
    y.square().mean().backward()
    assert_all_parameters_get_gradients(enc, gen)


def test_digits_blocks_tie_across_domains():
    enc_a, enc_b = Digits32Encoder(3, width=4), Digits32Encoder(1, width=4)
    gen_a, gen_b = Digits32Generator(3, 32, width=4), Digits32Generator(1, 32, width=4)
    for i in range(1, 5):
        enc_b.blocks[i] = enc_a.blocks[i]
    for i in range(3):
        gen_b.blocks[i] = gen_a.blocks[i]
    assert gen_b(enc_b(torch.randn(2, 1, 32, 32))).shape == (2, 1, 32, 32)
    assert gen_a(enc_a(torch.randn(2, 3, 32, 32))).shape == (2, 3, 32, 32)


def test_coordinates_are_rows_and_columns_in_minus_one_to_one():
    out = AppendCoordinates()(torch.zeros(2, 1, 32, 32))
    assert out.shape == (2, 3, 32, 32)
    rows, cols = out[0, 1], out[0, 2]
    assert rows[0, 5] == -1 and rows[31, 5] == 15 / 16 and rows[16, 0] == 0  # the digits code's (i - 16) / 16
    assert torch.equal(cols, rows.T)


def test_digits_encoder_with_coordinates_feeds_them_to_its_stem():
    enc = Digits32Encoder(1, width=4, coordinates=True).eval()
    stem = enc.blocks[0][1]
    assert stem.in_channels == 3  # the image and its two coordinate channels
    x = torch.randn(2, 1, 32, 32)
    z = enc(x)
    assert z.shape == (2, 32, 1, 1)
    with torch.no_grad():
        stem.weight[:, 1:] = 0
    assert not torch.allclose(z, enc(x))


def test_digits_encoder_rejects_other_sizes():
    with pytest.raises(ValueError, match="32x32 images, got 28x28"):
        Digits32Encoder(1, width=4)(torch.randn(2, 1, 28, 28))


# ---------------------------------------------------------------------------------------------------------------
# Discriminators


def test_multiscale_discriminator_outputs():
    dis = MultiscalePatchDiscriminator(3, width=4, layers=2, scales=3)
    assert isinstance(dis, Discriminator)
    outputs = dis(torch.randn(2, 3, 32, 48))
    assert [tuple(o.shape) for o in outputs] == [(2, 1, 8, 12), (2, 1, 4, 6), (2, 1, 2, 3)]
    assert dis.trunk == ("scales.0.body", "scales.1.body", "scales.2.body")
    for path in dis.trunk:
        assert isinstance(dis.get_submodule(path), nn.Module)
    sum(o.mean() for o in outputs).backward()
    assert_all_parameters_get_gradients(dis)


def test_multiscale_discriminator_defaults_at_64():
    outputs = MultiscalePatchDiscriminator(3, width=4)(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outputs] == [(1, 1, 4, 4), (1, 1, 2, 2), (1, 1, 1, 1)]


def test_multiscale_discriminator_trunk_ties_across_channels():
    dis_a = MultiscalePatchDiscriminator(3, width=4, layers=2, scales=2)
    dis_b = MultiscalePatchDiscriminator(1, width=4, layers=2, scales=2)
    for i in range(2):
        dis_b.scales[i].body = dis_a.scales[i].body
    assert len(dis_b(torch.randn(2, 1, 16, 16))) == 2


def test_patch_discriminator_is_single_scale():
    dis = PatchDiscriminator(1, width=4, layers=3)
    outputs = dis(torch.randn(2, 1, 32, 32))
    assert len(outputs) == 1 and outputs[0].shape == (2, 1, 4, 4)
    assert dis.trunk == ("scales.0.body",)


def test_patch_discriminators_bad_arguments():
    with pytest.raises(ValueError, match="no classifier head"):
        MultiscalePatchDiscriminator(3, num_classes=10)
    with pytest.raises(ValueError, match="no classifier head"):
        PatchDiscriminator(3, num_classes=10)
    with pytest.raises(ValueError, match="scales must be at least 1"):
        MultiscalePatchDiscriminator(3, scales=0)
    with pytest.raises(ValueError, match="too small for scale 3 of 3"):
        MultiscalePatchDiscriminator(3, width=4)(torch.randn(1, 3, 32, 32))
    with pytest.raises(NotImplementedError, match="no classifier head"):
        PatchDiscriminator(3, width=4).classify(torch.randn(1, 3, 32, 32))
    with pytest.raises(NotImplementedError, match="does not expose trunk features"):
        PatchDiscriminator(3, width=4).features(torch.randn(1, 3, 32, 32))


def test_digits_discriminator_with_classifier():
    dis = Digits32Discriminator(1, num_classes=10, width=4)
    assert dis.num_classes == 10
    assert dis.trunk == ("body", "head", "classifier")
    x = torch.randn(3, 1, 32, 32)
    outputs = dis(x)
    assert len(outputs) == 1 and outputs[0].shape == (3, 1, 1, 1)
    dis.eval()  # no dropout: features + score must be forward exactly
    torch.testing.assert_close(dis.score(dis.features(x))[0], dis(x)[0])
    dis.train()
    features = dis.features(x)
    assert features.shape == (3, 32, 2, 2)
    logits = dis.classify(features)
    assert logits.shape == (3, 10)
    (outputs[0].mean() + logits.mean()).backward()
    assert_all_parameters_get_gradients(dis)


def test_digits_discriminator_without_classifier_or_dropout():
    dis = Digits32Discriminator(3, width=4, dropout=False)
    assert dis.trunk == ("body", "head")
    assert not any(isinstance(m, nn.Dropout) for m in dis.modules())
    dis.train()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(dis(x)[0], dis(x)[0])  # deterministic without dropout, even in training mode
    with pytest.raises(NotImplementedError):
        dis.classify(dis.features(x))
    with pytest.raises(ValueError, match="32x32 images, got 64x64"):
        dis(torch.randn(2, 3, 64, 64))


def test_digits_discriminator_trunk_ties_across_channels():
    dis_a = Digits32Discriminator(3, num_classes=10, width=4)
    dis_b = Digits32Discriminator(1, num_classes=10, width=4)
    for path in dis_a.trunk:
        setattr(dis_b, path, getattr(dis_a, path))
    assert dis_b.classify(dis_b.features(torch.randn(2, 1, 32, 32))).shape == (2, 10)
    assert count_parameters(dis_a, dis_b) == count_parameters(dis_a) + count_parameters(dis_b.stem)


def test_layer_norm_matches_the_reference_formula():
    norm = LayerNorm2d(16)
    x = torch.randn(3, 16, 32, 32) * 3 + 1  # 16,384 values per sample: biased and unbiased std differ by 3e-5
    flat = x.flatten(1)
    reference = (x - flat.mean(1).view(-1, 1, 1, 1)) / (flat.std(1).view(-1, 1, 1, 1) + norm.eps)
    reference = reference * norm.gamma.view(1, -1, 1, 1) + norm.beta.view(1, -1, 1, 1)
    torch.testing.assert_close(norm(x), reference, rtol=1e-4, atol=1e-4)

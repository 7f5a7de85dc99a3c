"""GS-WGAN's phase-2 iteration (docs/algorithms.md §2) in eager PyTorch, timed like
`dpgan bench step --algo gs-wgan --private`.

One iteration: 5 WGAN-GP critic steps of one discriminator on its slice (batches of B without
replacement, reshuffled each pass, the last partial batch kept: 32, 28, 32, ... for a slice of 60;
L_D = mean D(x̃) − mean D(x) + 10·GP + 0.001·mean D(x)², GP by double backward; Adam on D); then
the private generator step through the frozen D: the gradient of L_G = −mean D(x̃ᵢ, lᵢ) with
respect to each generated image, each row clipped to C/B and noised with std 2σC/B (C = 1,
σ = 1.07), back-propagated through G alone, Adam on G; then the EMA of G (parameters and
spectral-norm vectors). Adam everywhere: lr 1e-4, β (0.5, 0.9), ε 1e-8. Spectral norm is
PyTorch's (one power iteration per training forward, gradient through σ), as in the original.
Inputs: one synthetic slice of uniform [0, 1] images and uniform labels on the host, each batch
copied to the device inside the iteration, as `dpgan bench step` does."""

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import spectral_norm

import common

LATENT, CLASSES, PIXELS, SLICE = 10, 10, 784, 60
CLIP, SIGMA, CRITIC_STEPS, GP_WEIGHT, DRIFT = 1.0, 1.07, 5, 10.0, 1e-3


def pixel_norm(x):
    return x / torch.sqrt(x.square().mean(1, keepdim=True) + 1e-10)


class Discriminator(nn.Module):
    def __init__(self, base):
        super().__init__()
        self.conv1 = spectral_norm(nn.Conv2d(1, base, 5, 2, 2))
        self.conv2 = spectral_norm(nn.Conv2d(base, 2 * base, 5, 2, 2))
        self.conv3 = spectral_norm(nn.Conv2d(2 * base, 4 * base, 5, 2, 2))
        self.linear = spectral_norm(nn.Linear(4 * base * 16, 1))
        self.embedding = spectral_norm(nn.Embedding(CLASSES, 4 * base * 16))

    def forward(self, images, labels):
        h = F.relu(self.conv1(images.view(-1, 1, 28, 28)))
        h = F.relu(self.conv2(h))
        h = F.relu(self.conv3(h)).flatten(1)
        return self.linear(h).squeeze(1) + (self.embedding(labels) * h).sum(1)


class UpBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = spectral_norm(nn.Conv2d(channels, channels, 3, 1, 1))
        self.conv2 = spectral_norm(nn.Conv2d(channels, channels, 3, 1, 1))
        self.shortcut = spectral_norm(nn.Conv2d(channels, channels, 1))

    def forward(self, x):
        r = self.conv1(F.interpolate(pixel_norm(x), scale_factor=2, mode="nearest"))
        r = self.conv2(F.relu(pixel_norm(r)))
        return r + self.shortcut(F.interpolate(x, scale_factor=2, mode="nearest"))


class ResnetGenerator(nn.Module):
    def __init__(self, base):
        super().__init__()
        self.c = 4 * base
        self.linear = spectral_norm(nn.Linear(LATENT + CLASSES, self.c * 16))
        self.blocks = nn.Sequential(UpBlock(self.c), UpBlock(self.c), UpBlock(self.c))
        self.output = spectral_norm(nn.Conv2d(self.c, 1, 3, 1, 0))

    def forward(self, z, labels):
        h = pixel_norm(F.relu(self.linear(torch.cat([z, labels], 1)).view(-1, self.c, 4, 4)))
        x = torch.sigmoid(self.output(self.blocks(h)))
        return x[:, :, :28, :28].reshape(-1, PIXELS)


class DcganGenerator(nn.Module):
    def __init__(self, base):
        super().__init__()
        self.c = 4 * base
        self.linear = nn.Linear(LATENT + CLASSES, self.c * 16)
        self.deconv1 = nn.ConvTranspose2d(self.c, 2 * base, 5, 1)
        self.deconv2 = nn.ConvTranspose2d(2 * base, base, 5, 1)
        self.deconv3 = nn.ConvTranspose2d(base, 1, 8, 2)

    def forward(self, z, labels):
        h = pixel_norm(F.relu(self.linear(torch.cat([z, labels], 1)).view(-1, self.c, 4, 4)))
        h = pixel_norm(F.relu(self.deconv1(h)[:, :, :7, :7]))
        h = pixel_norm(F.relu(self.deconv2(h)))
        return torch.sigmoid(self.deconv3(h)).reshape(-1, PIXELS)


def adam(params):
    return torch.optim.Adam(params, lr=1e-4, betas=(0.5, 0.9), eps=1e-8)


def main():
    p = common.parser(__doc__.splitlines()[0], 32)
    p.add_argument("--generator", choices=["resnet", "dcgan"], default="resnet")
    p.add_argument("--base", type=int, default=64, help="the models' width (64 is the published model)")
    args = p.parse_args()
    device = common.check_args(args)
    torch.manual_seed(args.seed)
    b = args.batch_size
    g = (ResnetGenerator if args.generator == "resnet" else DcganGenerator)(args.base).to(device)
    d = Discriminator(args.base).to(device)
    if args.base == 64:
        g_params = common.assert_params("G", g, common.GSWGAN_G_PARAMS[args.generator])
        d_params = common.assert_params("D", d, common.GSWGAN_D_PARAMS)
    else:
        g_params, d_params = common.count_params(g), common.count_params(d)
    ema = copy.deepcopy(g)
    g_opt, d_opt = adam(g.parameters()), adam(d.parameters())

    slice_len = max(SLICE, b)
    data = torch.rand(slice_len, PIXELS)
    data_labels = torch.randint(0, CLASSES, (slice_len,))
    order, position = [], 0
    state = {"t": 0}

    def next_batch():
        nonlocal order, position
        if position >= len(order):
            order, position = torch.randperm(slice_len).tolist(), 0
        idx = order[position : position + b]
        position += len(idx)
        x = data[idx].to(device)
        return x, F.one_hot(data_labels[idx], CLASSES).float().to(device), data_labels[idx].to(device)

    def latent(n):
        return torch.bernoulli(torch.full((n, LATENT), 0.5, device=device))

    def critic_step():
        x, y, yi = next_batch()
        n = x.shape[0]
        with torch.no_grad():
            fake = g(latent(n), y)
        alpha = torch.rand(n, 1, device=device)
        x_hat = (alpha * x + (1 - alpha) * fake).requires_grad_(True)
        d_real, d_fake = d(x, yi), d(fake, yi)
        (dx,) = torch.autograd.grad(d(x_hat, yi).sum(), x_hat, create_graph=True)
        gp = (torch.sqrt(dx.square().sum(1) + 1e-12) - 1).square().mean()
        loss = d_fake.mean() - d_real.mean() + GP_WEIGHT * gp + DRIFT * d_real.square().mean()
        d_opt.zero_grad(set_to_none=True)
        loss.backward()
        d_opt.step()
        return n

    def step():
        for _ in range(CRITIC_STEPS):
            n = critic_step()
        labels = torch.randint(0, CLASSES, (n,), device=device)
        fake = g(latent(n), F.one_hot(labels, CLASSES).float())
        image = fake.detach().requires_grad_(True)
        loss = -d(image, labels).mean()
        (grad,) = torch.autograd.grad(loss, image)
        per_row = CLIP / n
        factors = torch.clamp(per_row / (grad.norm(dim=1, keepdim=True) + 1e-10), max=1.0)
        sanitized = grad * factors + torch.randn_like(grad) * (2 * SIGMA * per_row)
        g_opt.zero_grad(set_to_none=True)
        fake.backward(sanitized)
        g_opt.step()
        decay = min(1 - 1 / (state["t"] + 1), 0.999)
        with torch.no_grad():
            for e, s in zip(ema.state_dict().values(), g.state_dict().values()):
                e.mul_(decay).add_(s, alpha=1 - decay)
        state["t"] += 1

    common.run(
        args,
        device,
        algo="gs-wgan",
        mode="private",
        implementation="pytorch-eager",
        step_text=(
            f"phase-2 iteration: {CRITIC_STEPS} WGAN-GP critic steps of one discriminator, the generator step with "
            f"sanitised image gradients, the EMA of G (B = {b}, the slice's last partial batch included)"
        ),
        inputs=(
            f"synthetic: one slice of {slice_len} uniform [0, 1] images and uniform labels on the host, "
            "batched and copied to the device inside the iteration"
        ),
        settings={
            "batch_size": b,
            "slice": slice_len,
            "critic_steps": CRITIC_STEPS,
            "generator": args.generator,
            "base": args.base,
            "adam_lr": 1e-4,
            "clip": CLIP,
            "noise_multiplier": SIGMA,
        },
        g=g_params,
        d=d_params,
        step=step,
    )


if __name__ == "__main__":
    main()

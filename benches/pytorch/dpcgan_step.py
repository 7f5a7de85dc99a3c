"""DP-CGAN's training step (docs/algorithms.md §1) in PyTorch, timed like `dpgan bench step --algo dp-cgan`.

Variants (--variant):
  eager    non-private: mean BCE losses, one backward, SGD on D; Adam on G (`--non-private`).
  opacus   private: per-example gradients from Opacus's GradSampleModule (hooks), then clipping,
           noise and the two sums by hand, since DP-CGAN clips real and generated examples
           separately and noises only the real sum, which Opacus's optimizer cannot express.
  vmap     private: per-example gradients with torch.func (vmap of grad over functional_call),
           then the same clipping, noise and sums.
  compile  the vmap step's per-example part under torch.compile (private), or the eager step
           with torch.compile'd modules (non-private).
The private step: z ~ N(0, I), uniform labels, x̃ = G(z, l); per-example gradients of
BCE(1, D(xᵢ, yᵢ)) and BCE(0, D(x̃ᵢ, lᵢ)) with respect to D (one pass over the 2B examples), each
clipped to C = 1.1 by its norm over all of D's parameters; the real sum + N(0, (σC)²), σ = 1.15,
plus the fake sum, over B; SGD lr 0.15 on D; then Adam (1e-3, (0.9, 0.999), ε 1e-7) on G with the
non-saturating loss through the updated D, the same z and l.
Inputs are one synthetic batch on the device (uniform [-1, 1] images, uniform labels)."""

import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

import common

LATENT, CLASSES, PIXELS = 100, 10, 784
CLIP, SIGMA, D_LR, G_LR = 1.1, 1.15, 0.15, 1e-3


def glorot(linear):
    nn.init.xavier_uniform_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = glorot(nn.Linear(LATENT + CLASSES, 128))
        self.output = glorot(nn.Linear(128, PIXELS))

    def forward(self, z, labels):
        return torch.tanh(self.output(F.relu(self.hidden(torch.cat([z, labels], 1)))))


class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = glorot(nn.Linear(PIXELS + CLASSES, 128))
        self.output = glorot(nn.Linear(128, 1))

    def forward(self, images, labels):
        return self.output(F.relu(self.hidden(torch.cat([images, labels], 1))))


def clipped_sums(per_example, batch):
    """Σᵢ cᵢgᵢ over the real rows [0, B) and the fake rows [B, 2B) separately, cᵢ = min(1, C/‖gᵢ‖)
    with ‖gᵢ‖ over all of D's parameters; then real + N(0, (σC)²) + fake, over B."""
    sq = sum(g.reshape(g.shape[0], -1).square().sum(1) for g in per_example)
    factors = CLIP / torch.clamp(sq.sqrt(), min=CLIP)
    grads = []
    for g in per_example:
        flat = g.reshape(g.shape[0], -1)
        real = factors[:batch] @ flat[:batch]
        fake = factors[batch:] @ flat[batch:]
        noise = torch.randn_like(real) * (SIGMA * CLIP)
        grads.append(((real + noise + fake) / batch).reshape(g.shape[1:]))
    return grads


def main():
    p = common.parser(__doc__.splitlines()[0], 600)
    p.add_argument("--variant", choices=["eager", "opacus", "vmap", "compile"], required=True)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--private", dest="private", action="store_true", default=None)
    mode.add_argument("--non-private", dest="private", action="store_false")
    args = p.parse_args()
    device = common.check_args(args)
    private = {"eager": False, "opacus": True, "vmap": True}.get(args.variant, True) if args.private is None else args.private
    if args.variant == "eager" and private:
        sys.exit("error: --variant eager is the non-private step; the private step is --variant opacus, vmap or compile")
    if args.variant in ("opacus", "vmap") and not private:
        sys.exit(f"error: --variant {args.variant} is a private step; the non-private one is --variant eager or compile")

    torch.manual_seed(args.seed)
    b = args.batch_size
    g, d = Generator().to(device), Discriminator().to(device)
    g_params = common.assert_params("G", g, common.DPCGAN_G_PARAMS)
    d_params = common.assert_params("D", d, common.DPCGAN_D_PARAMS)
    d_opt = torch.optim.SGD(d.parameters(), lr=D_LR)
    g_opt = torch.optim.Adam(g.parameters(), lr=G_LR, betas=(0.9, 0.999), eps=1e-7)
    images = torch.rand(b, PIXELS, device=device) * 2 - 1
    labels = F.one_hot(torch.randint(0, CLASSES, (b,), device=device), CLASSES).float()
    ones, zeros = torch.ones(b, 1, device=device), torch.zeros(b, 1, device=device)
    targets = torch.cat([ones, zeros])

    def generator_inputs():
        z = torch.randn(b, LATENT, device=device)
        return z, F.one_hot(torch.randint(0, CLASSES, (b,), device=device), CLASSES).float()

    def generator_step(fake, fake_labels, disc):
        loss = F.binary_cross_entropy_with_logits(disc(fake, fake_labels), ones)
        grads = torch.autograd.grad(loss, list(g.parameters()))
        for param, grad in zip(g.parameters(), grads):
            param.grad = grad
        g_opt.step()

    def apply_d(grads):
        for param, grad in zip(d.parameters(), grads):
            param.grad = grad
        d_opt.step()

    if not private:
        gen, disc = (torch.compile(g), torch.compile(d)) if args.variant == "compile" else (g, d)

        def step():
            z, fake_labels = generator_inputs()
            fake = gen(z, fake_labels)
            real_loss = F.binary_cross_entropy_with_logits(disc(images, labels), ones)
            fake_loss = F.binary_cross_entropy_with_logits(disc(fake.detach(), fake_labels), zeros)
            apply_d(torch.autograd.grad(real_loss + fake_loss, list(d.parameters())))
            generator_step(fake, fake_labels, disc)

        text = f"non-private: mean BCE losses, no clipping or noise, SGD on D; Adam on G (B = {b})"
    elif args.variant == "opacus":
        from opacus import GradSampleModule

        gsm = GradSampleModule(d, loss_reduction="sum")

        def step():
            z, fake_labels = generator_inputs()
            fake = g(z, fake_labels)
            gsm.enable_hooks()
            logits = gsm(torch.cat([images, fake.detach()]), torch.cat([labels, fake_labels]))
            F.binary_cross_entropy_with_logits(logits, targets, reduction="sum").backward()
            per_example = [param.grad_sample for param in d.parameters()]
            for param in d.parameters():
                param.grad_sample = None
                param.grad = None
            apply_d(clipped_sums(per_example, b))
            gsm.disable_hooks()
            generator_step(fake, fake_labels, d)

        text = f"private, Opacus GradSampleModule per-example gradients, clipping and noise by hand (B = {b}, {b} generated)"
    else:
        from torch.func import functional_call, grad, vmap

        names = [n for n, _ in d.named_parameters()]

        def example_loss(params, x, y, t):
            logit = functional_call(d, params, (x.unsqueeze(0), y.unsqueeze(0)))
            return F.binary_cross_entropy_with_logits(logit, t.unsqueeze(0), reduction="sum")

        def private_grads(params, x, y, t):
            per = vmap(grad(example_loss), in_dims=(None, 0, 0, 0))(params, x, y, t)
            return clipped_sums([per[n] for n in names], b)

        if args.variant == "compile":
            private_grads = torch.compile(private_grads)

        def step():
            z, fake_labels = generator_inputs()
            fake = g(z, fake_labels)
            params = {n: p.detach() for n, p in d.named_parameters()}
            apply_d(private_grads(params, torch.cat([images, fake.detach()]), torch.cat([labels, fake_labels]), targets))
            generator_step(fake, fake_labels, d)

        how = "torch.compile of the vmap per-example part" if args.variant == "compile" else "torch.func vmap(grad) per-example gradients"
        text = f"private, {how}, clipping and noise by hand (B = {b}, {b} generated)"

    settings = {"batch_size": b, "d_lr": D_LR, "g_adam_lr": G_LR, "variant": args.variant}
    if private:
        settings.update(clip=CLIP, noise_multiplier=SIGMA)
    common.run(
        args,
        device,
        algo="dp-cgan",
        mode="private" if private else "non-private",
        implementation=f"pytorch-{args.variant}",
        step_text=text,
        inputs=f"synthetic: one batch of {b} uniform [-1, 1] images and uniform labels, made on the device before timing",
        settings=settings,
        g=g_params,
        d=d_params,
        step=step,
    )


if __name__ == "__main__":
    main()

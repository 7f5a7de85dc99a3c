"""Trains docs/algorithms.md §4's conditional DCGAN in PyTorch without privacy, with the recipe's
optimisers and schedule, and writes generated images as `dpgan sample` does, so that `dpgan eval`
scores both the same way. It answers one question: does the model learn at a given width and
length, whatever dpgan's implementation does? (A non-private dpgan run of the same settings,
`--clip 1e3 --noise-multiplier 1e-6`, is the other side.)

    python benches/pytorch/dpsgd_gan_reference.py --data $DPGAN_DATA/mnist --width 16 \
        --batch-size 64 --d-steps 2000 --d-steps-per-g-step 1 --out /tmp/ref-synth
    dpgan eval --synthetic /tmp/ref-synth --data mnist --classifier cnn

The D step matches dpgan's: the real batch is a Poisson draw (rate B/N), B generated examples with
uniform labels join it, the per-example BCE losses are summed and divided by 2B. G's step is the
mean non-saturating loss on B fresh examples. Adam(2e-4, β = (0.5, 0.999)) on both, PyTorch's
default initialisation (dpgan's too).
"""

import argparse
import gzip
import json
import os
import struct
import sys
import time

import torch
from torch import nn
import torch.nn.functional as F

LATENT, CLASSES, SIDE = 128, 10, 28


class Generator(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.latent = nn.ConvTranspose2d(LATENT, 2 * d, 4, 1, 0)
        self.label = nn.ConvTranspose2d(CLASSES, 2 * d, 4, 1, 0)
        self.up7 = nn.ConvTranspose2d(4 * d, 2 * d, 3, 2, 1)
        self.up14 = nn.ConvTranspose2d(2 * d, d, 4, 2, 1)
        self.up28 = nn.ConvTranspose2d(d, 1, 4, 2, 1)

    def forward(self, z, y):
        a = F.leaky_relu(self.latent(z[:, :, None, None]), 0.2)
        b = F.leaky_relu(self.label(y[:, :, None, None]), 0.2)
        h = F.leaky_relu(self.up7(torch.cat([a, b], 1)), 0.2)
        h = F.leaky_relu(self.up14(h), 0.2)
        return (torch.tanh(self.up28(h)) + 1) / 2


class Discriminator(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.image = nn.Conv2d(1, d // 2, 4, 2, 1)
        self.label = nn.Conv2d(CLASSES, d // 2, 4, 2, 1)
        self.down7 = nn.Conv2d(d, 2 * d, 4, 2, 1)
        self.down4 = nn.Conv2d(2 * d, 4 * d, 3, 2, 1)
        self.logit = nn.Conv2d(4 * d, 1, 4, 1, 0)

    def forward(self, x, y):
        planes = y[:, :, None, None].expand(-1, -1, SIDE, SIDE)
        a = F.leaky_relu(self.image(x), 0.2)
        b = F.leaky_relu(self.label(planes), 0.2)
        h = F.leaky_relu(self.down7(torch.cat([a, b], 1)), 0.2)
        h = F.leaky_relu(self.down4(h), 0.2)
        return self.logit(h).flatten()


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = struct.unpack(">" + "I" * dims, data[4 : 4 + 4 * dims])
    return torch.frombuffer(bytearray(data[4 + 4 * dims :]), dtype=torch.uint8).reshape(shape)


def find(directory, stem):
    for name in (stem + ".gz", stem):
        if os.path.exists(os.path.join(directory, name)):
            return os.path.join(directory, name)
    sys.exit(f"error: {directory} has no {stem}[.gz]")


def write_idx_gz(path, array):
    """IDX (unsigned bytes) gzipped, written to a temporary name and renamed."""
    header = bytes([0, 0, 0x08, array.dim()]) + struct.pack(">" + "I" * array.dim(), *array.shape)
    tmp = path + ".tmp"
    with gzip.open(tmp, "wb") as f:
        f.write(header + array.contiguous().numpy().tobytes())
    os.replace(tmp, path)


def load_dpgan_checkpoint(path, g, d, g_opt, d_opt):
    """Puts a dpgan DPSGD-GAN checkpoint (both networks and both Adam states) into the PyTorch
    models, so that both implementations continue from the same state. dpgan's tensors carry a
    leading group axis of 1; the names are the PyTorch modules' own."""
    with open(path, "rb") as f:
        header_len = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(header_len))
        data = f.read()
    state = json.loads(header["__metadata__"]["dpgan.state"])

    def tensor(name):
        info = header[name]
        if info["dtype"] != "F32":
            sys.exit(f"error: {path}: tensor {name} is {info['dtype']}, not F32")
        start, end = info["data_offsets"]
        return torch.frombuffer(bytearray(data[start:end]), dtype=torch.float32)

    for prefix, model, opt, steps in (("generator", g, g_opt, state["generator_adam_steps"]),
                                      ("discriminator", d, d_opt, state["discriminator_adam_steps"])):
        for name, p in model.named_parameters():
            p.data.copy_(tensor(f"{prefix}.{name}").reshape(p.shape))
            if steps:
                opt.state[p] = {"step": torch.tensor(float(steps)),
                                "exp_avg": tensor(f"{prefix}_adam.m.{name}").reshape(p.shape).clone(),
                                "exp_avg_sq": tensor(f"{prefix}_adam.v.{name}").reshape(p.shape).clone()}
    return state["step"]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="directory with train-images-idx3-ubyte[.gz] and its labels")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--d-steps", type=int, required=True)
    p.add_argument("--d-steps-per-g-step", type=int, default=50)
    p.add_argument("--per-class", type=int, default=1000, help="generated images per class written to --out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    p.add_argument("--log-every", type=int, default=200)
    p.add_argument("--out", required=True, help="directory for the generated set (created)")
    p.add_argument("--from-checkpoint", metavar="PATH",
                   help="start from a dpgan DPSGD-GAN checkpoint.safetensors (same --width): its networks, "
                        "Adam states and D step count; --d-steps is then the new total")
    args = p.parse_args()
    if args.width < 2 or args.width % 2:
        sys.exit(f"error: --width must be an even number of at least 2, got {args.width}")
    if min(args.batch_size, args.d_steps, args.d_steps_per_g_step, args.per_class) < 1:
        sys.exit("error: --batch-size, --d-steps, --d-steps-per-g-step and --per-class must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    images = read_idx(find(args.data, "train-images-idx3-ubyte")).float().div_(255).unsqueeze(1)
    labels = read_idx(find(args.data, "train-labels-idx1-ubyte")).long()
    n = images.shape[0]
    q = args.batch_size / n
    g, d = Generator(args.width), Discriminator(args.width)
    g_opt = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999), eps=1e-8)
    d_opt = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999), eps=1e-8)
    b = args.batch_size

    def generated(count):
        z = torch.randn(count, LATENT)
        y = F.one_hot(torch.randint(0, CLASSES, (count,)), CLASSES).float()
        return z, y

    first = load_dpgan_checkpoint(args.from_checkpoint, g, d, g_opt, d_opt) if args.from_checkpoint else 0
    start = time.perf_counter()
    # Mean losses over each logging window, as dpgan's metrics.jsonl reports them.
    # Window sums stay tensors until a line is printed: no .item() per step.
    d_sum, d_count, g_sum, g_count = torch.zeros(()), 0, torch.zeros(()), 0
    for t in range(first, args.d_steps):
        take = torch.rand(n) < q
        x_real, y_real = images[take], F.one_hot(labels[take], CLASSES).float()
        z, y_fake = generated(b)
        with torch.no_grad():
            x_fake = g(z, y_fake)
        logits = d(torch.cat([x_real, x_fake]), torch.cat([y_real, y_fake]))
        targets = torch.cat([torch.ones(x_real.shape[0]), torch.zeros(b)])
        loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / (2 * b)
        d_opt.zero_grad(set_to_none=True)
        loss.backward()
        d_opt.step()
        d_sum += loss.detach() * 2 * b / logits.shape[0]
        d_count += 1
        if (t + 1) % args.d_steps_per_g_step == 0:
            z, y = generated(b)
            out = d(g(z, y), y)
            gl = F.binary_cross_entropy_with_logits(out, torch.ones_like(out))
            g_opt.zero_grad(set_to_none=True)
            gl.backward()
            g_opt.step()
            g_sum += gl.detach()
            g_count += 1
        if (t + 1) % args.log_every == 0 or t + 1 == args.d_steps:
            mean = lambda total, count: round(total.item() / count, 5) if count else None
            print(json.dumps({"d_step": t + 1, "d_loss": mean(d_sum, d_count), "g_loss": mean(g_sum, g_count),
                              "seconds": round(time.perf_counter() - start, 1)}), flush=True)
            d_sum, d_count, g_sum, g_count = torch.zeros(()), 0, torch.zeros(()), 0

    os.makedirs(args.out, exist_ok=True)
    with torch.no_grad():
        y = torch.arange(CLASSES).repeat_interleave(args.per_class)
        x = torch.cat([g(torch.randn(len(part), LATENT), F.one_hot(part, CLASSES).float()) for part in y.split(1000)])
    write_idx_gz(os.path.join(args.out, "train-images-idx3-ubyte.gz"), (x.squeeze(1) * 255).round().clamp(0, 255).to(torch.uint8))
    write_idx_gz(os.path.join(args.out, "train-labels-idx1-ubyte.gz"), y.to(torch.uint8))
    print(f"wrote {len(y)} images to {args.out}")


if __name__ == "__main__":
    main()

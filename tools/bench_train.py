"""Training throughput: our step against a seed-style loop, side by side in one run.

    python tools/bench_train.py --data-dir ../shared/data [--device cpu|cuda] [--steps 6]

The seed-style loop is written as the seed wrote it: a Dataset that makes a PIL
image per sample, Resize + ToTensor in a DataLoader, fp32, ``loss.item()`` every
batch. Ours is vggexport's Trainer step (uint8 data on the device, batched
resize/augment there, channels_last, the precision ``auto`` picks). Both run
the seed's configuration: cfg A, 1x224x224, batch 16, 512-wide head. Then it
prints our achieved training GFLOP/s at 32x32 against fp32 and bf16 matmul peaks.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from vggexport.data.load import load_dataset
from vggexport.model import VGG, ModelConfig
from vggexport.training import TrainConfig, Trainer


class SeedStyleDataset(Dataset):
    """What torchvision's FashionMNIST.__getitem__ does: a PIL image per sample, then the transform."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: transforms.Compose) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[i, 0].numpy(), mode="L")), int(self.labels[i])


def seed_loop(data_dir: str, device: torch.device, steps: int, batch: int, size: int) -> float:
    data = load_dataset("fashion-mnist", data_dir)
    tf = transforms.Compose([transforms.Resize(size), transforms.ToTensor()])
    loader = DataLoader(SeedStyleDataset(data.train_images, data.train_labels, tf), batch_size=batch, shuffle=True,
                        num_workers=2)
    model = VGG(ModelConfig(image_size=size, head=512, width=1.0)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    seen, started = 0, 0.0
    for i, (x, y) in enumerate(loader):
        if i == 2:  # two warm-up steps
            seen, started = 0, time.perf_counter()
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()  # the seed syncs every batch
        seen += len(y)
        if i == steps + 1:
            break
    return seen / (time.perf_counter() - started)


def our_loop(config: TrainConfig, steps: int) -> tuple[float, Trainer]:
    trainer = Trainer(config)
    trainer.plan_run()  # fixes the schedule (no --time-budget here: nothing is timed)
    trainer.forward.train()
    generator = torch.Generator().manual_seed(0)
    n = len(trainer.splits.train)
    for i in range(steps + 2):
        if i == 2:
            if trainer.device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        index = torch.randint(0, n, (config.batch_size,))
        trainer.train_step(*trainer.source.batch(index, generator))
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    return steps * config.batch_size / (time.perf_counter() - started), trainer


def train_flops_per_image(model_config: ModelConfig) -> float:
    """Forward multiply-adds of convs and linears x 2 FLOP x 3 (forward + two backward matmuls)."""
    macs, side, channels = 0, model_config.image_size, model_config.in_channels
    model = VGG(model_config)
    for module in model.features:
        if isinstance(module, torch.nn.Conv2d):
            macs += side * side * module.out_channels * channels * 9
            channels = module.out_channels
        elif isinstance(module, torch.nn.MaxPool2d):
            side //= 2
    macs += sum(m.in_features * m.out_features for m in model.classifier if isinstance(m, torch.nn.Linear))
    return 2.0 * 3.0 * macs


def matmul_gflops(dtype: torch.dtype, device: torch.device, n: int = 2048, seconds: float = 1.0) -> float:
    """Square matmul throughput, repeated for about ``seconds`` (emulated bf16 is slow: one product may be all)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    started, repeat = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        repeat += 1
    return 2 * n**3 * repeat / (time.perf_counter() - started) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--recipe", default="default",
                        help="also time the 32x32 step of this recipe (fast: full width)")
    args = parser.parse_args()
    common = dict(data_dir=args.data_dir, device=args.device, artifacts="/tmp/vggexport-bench", seed=0, epochs=1)
    ours, trainer = our_loop(TrainConfig(**common, image_size=224, width=1.0, head=512, batch_size=16), args.steps)
    seed = seed_loop(args.data_dir, trainer.device, args.steps, 16, 224)
    print(f"device {trainer.device} precision {trainer.precision}")
    print(f"seed config (cfg A, 1x224x224, batch 16, head 512): seed-style {seed:.2f} img/s, ours {ours:.2f} img/s, "
          f"ratio {ours / seed:.2f}x")
    small = TrainConfig(**common, recipe=args.recipe, image_size=32, batch_size=256)
    ips, trainer = our_loop(small, max(args.steps, 10))
    achieved = ips * train_flops_per_image(trainer.model_config) / 1e9
    size = 2048 if trainer.device.type == "cuda" else 1024
    fp32 = matmul_gflops(torch.float32, trainer.device, size)
    bf16 = matmul_gflops(torch.bfloat16, trainer.device, size)
    print(f"32x32 default model (width {trainer.model_config.width}, batch 256): {ips:.0f} img/s = "
          f"{achieved:.1f} GFLOP/s; "
          f"fp32 matmul {fp32:.1f} GFLOP/s ({achieved / fp32:.0%}), bf16 matmul {bf16:.1f} GFLOP/s "
          f"({achieved / bf16:.0%})")


if __name__ == "__main__":
    main()

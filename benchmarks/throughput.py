"""Training-loop throughput: the library's loop against a bare open_clip loop.

Both train the same model (same initial weights) on the same batch, held on the device:

* library: `train.optimize` with a loss_step that turns the uint8 batch into [0, 1] floats,
  normalises it and returns `train.clip_loss`, given the batch's tokens as its vocabulary
  (exactly what every stage of the book runs, with its schedule, temperature clamp, loss
  logging and bf16 autocast on CUDA);
* bare: model(images, tokens) -> open_clip.ClipLoss -> backward -> AdamW step, on images
  already normalised (what a plain open_clip script does after its DataLoader), with open_clip's
  own tower forwards, which compute every token (`ubtlib.clip.pooled` computes only the tokens
  the features read).

Prints pairs/s of both and their ratio, and the model FLOPs utilisation: the FLOPs of one
forward + backward (torch's FlopCounterMode) times the steps per second, over a peak. On CUDA
the peak is the GPU's bf16 dense peak (--peak-tflops); on a CPU it is what the same threads
reach on a large fp32 matrix product (measured here), so CPU MFU says how far the step is from
the machine's own best. Data loading is not timed: this measures the training loop itself.

`--candidates` also times changes to the step that keep its recipe, each alone on the bare
loop, for deciding whether the library should adopt them: the pooled-token towers, training
only the token-embedding rows the captions use, and AdamW's fused kernel (all three of which the
library uses, so "library" includes them),
torch.compile of the forward pass and loss (its compile time is reported apart, since every
process of a build would pay it again), the two together ("both") and, on a CPU, bf16 autocast
(which changes the numbers by more than float rounding, and which a CPU without bf16 matrix
units runs slower than fp32).

    OMP_NUM_THREADS=2 python benchmarks/throughput.py                     # pocket CLIP, CPU
    python benchmarks/throughput.py --model ViT-B-32 --device cuda --precision bf16
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import ubtlib  # noqa: F401, I001  (before open_clip: see ubtlib/_compat.py)

# isort: split
import open_clip
import torch
from torch.utils.flop_counter import FlopCounterMode

from ubtlib.clip import model as modellib
from ubtlib.clip import pooled
from ubtlib.clip.train import TrainConfig, adamw, clip_loss, optimize
from ubtlib.clip.vocabulary import trained_rows
from ubtlib.paper_scale import weights

CAPTIONS = ["a photo of a banana.", "a red car parked on a street.", "a dog on a lawn.", "a man smiling."]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def library_loop(model, images_u8, tokens, steps, device) -> float:
    """Seconds for `steps` steps of train.optimize."""
    loss_fn = open_clip.ClipLoss()
    cfg = TrainConfig(epochs=1, batch_size=len(tokens), lr=1e-5, warmup_steps=0, log_every=10**9)
    loss_step = lambda: clip_loss(model, modellib.to_unit(images_u8, device), tokens, loss_fn)  # noqa: E731
    sync(device)
    start = time.perf_counter()
    optimize(model, loss_step, steps, cfg, device, progress=False, vocabulary=tokens)
    sync(device)
    return time.perf_counter() - start


def bare_step(model, opt, loss_fn, images, tokens, device, bf16=False):
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else modellib.autocast(device)
    with autocast:
        out = model(images, tokens)
        loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def bare_loop(
    model, images, tokens, steps, device, fused=False, forward=None, bf16=False, rows=False
) -> float:
    """Seconds for `steps` steps of a plain open_clip forward / backward / AdamW loop.

    fused: AdamW's fused kernel; forward: a replacement for model's forward (a compiled one);
    bf16: the forward and loss in bf16 autocast (on a CPU too); rows: the token embedding
    trains only the rows `tokens` use (`vocabulary.trained_rows`)."""
    loss_fn = open_clip.ClipLoss()
    model.train()
    with trained_rows(model, tokens if rows else None) as trained:
        opt = adamw(model, 1e-5, 0.1)
        if fused:  # same groups and hyper-parameters, one kernel per group instead of per tensor
            groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in opt.param_groups]
            d = opt.defaults
            opt = torch.optim.AdamW(groups, lr=d["lr"], betas=d["betas"], eps=d["eps"], fused=True)
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            bare_step(model if forward is None else forward, opt, loss_fn, images, tokens, device, bf16)
            if trained is not None:
                trained.stepped(opt)
        sync(device)
        return time.perf_counter() - start


def matmul_peak(device, n: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of the best of `repeats` n x n fp32 matrix products on `device` (the BLAS's peak
    for this thread count)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="pocket", help="pocket (the book's pocket CLIP) or an open_clip name")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument(
        "--precision",
        default=None,
        choices=("fp32", "bf16"),
        help="the library trains in fp32 on a CPU and in bf16 autocast on CUDA",
    )
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per run")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each loop, interleaved; medians reported")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak (H100 SXM: 989)")
    ap.add_argument(
        "--candidates", action="store_true", help="also time fused AdamW, torch.compile and bf16 autocast"
    )
    args = ap.parse_args(argv)
    device = modellib.pick_device(args.device)
    precision = "bf16" if device.type == "cuda" else "fp32"
    if args.precision not in (None, precision):
        raise SystemExit(f"--precision {args.precision}: on {device.type} the library trains in {precision}")

    torch.manual_seed(0)
    if args.model == "pocket":
        model, tokenizer = modellib.create(modellib.ModelConfig(), device=device)
    else:
        model, tokenizer = weights.random_model(args.model, device=device)
    size = weights.image_size(model)
    images_u8 = torch.randint(0, 256, (args.batch, 3, size, size), dtype=torch.uint8, device=device)
    tokens = tokenizer([CAPTIONS[k % len(CAPTIONS)] + f" number {k}" for k in range(args.batch)]).to(device)
    images = modellib.normalize(images_u8.float() / 255)
    plain = pooled.open_clip_forwards(copy.deepcopy(model))  # the bare loop's model
    models = {"library": copy.deepcopy(model), "bare": copy.deepcopy(plain)}
    run = {
        "library": lambda m, n: library_loop(m, images_u8, tokens, n, device),
        "bare": lambda m, n: bare_loop(m, images, tokens, n, device),
    }
    compile_s = None
    if args.candidates:
        models["pooled tokens"] = copy.deepcopy(model)  # the library's towers, on the bare loop
        run["pooled tokens"] = lambda m, n: bare_loop(m, images, tokens, n, device)
        models["trained rows"] = copy.deepcopy(plain)  # the library's token-embedding update
        run["trained rows"] = lambda m, n: bare_loop(m, images, tokens, n, device, rows=True)
        models["fused AdamW"] = copy.deepcopy(plain)
        run["fused AdamW"] = lambda m, n: bare_loop(m, images, tokens, n, device, fused=True)
        models["compiled"] = copy.deepcopy(plain)
        compiled = torch.compile(models["compiled"])
        run["compiled"] = lambda m, n: bare_loop(m, images, tokens, n, device, forward=compiled)
        start = time.perf_counter()
        run["compiled"](models["compiled"], 1)
        compile_s = time.perf_counter() - start
        models["both"] = copy.deepcopy(plain)  # fused AdamW and the compiled forward together
        both = torch.compile(models["both"])
        run["both"] = lambda m, n: bare_loop(m, images, tokens, n, device, fused=True, forward=both)
        run["both"](models["both"], 1)
        if device.type == "cpu":  # on CUDA the library already trains in bf16 autocast
            models["bf16 autocast"] = copy.deepcopy(plain)
            run["bf16 autocast"] = lambda m, n: bare_loop(m, images, tokens, n, device, bf16=True)
    for name in run:  # warm-up: allocations, kernels, optimizer state
        run[name](models[name], 2)
    seconds = {name: [] for name in run}
    for _ in range(args.repeats):
        for name in run:
            seconds[name].append(run[name](models[name], args.steps))
    rate = {name: args.batch * args.steps / statistics.median(s) for name, s in seconds.items()}

    threads = torch.get_num_threads() if device.type == "cpu" else None
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {threads} threads"
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"{args.model} ({params:.1f}M parameters, {size} px), batch {args.batch}, {precision}, {where}")
    for name in run:
        print(
            f"  {name:13s} {rate[name]:9.1f} pairs/s   (runs of {args.steps} steps: "
            f"{', '.join(f'{s:.2f}' for s in seconds[name])} s)"
        )
    for name in run:
        if name != "bare":
            print(f"  ratio {name} / bare: {rate[name] / rate['bare']:.3f}")
    if compile_s is not None:
        print(
            f"  torch.compile: first step {compile_s:.1f} s (tracing and compiling; inductor keeps its "
            "kernels on disk, so a later process with the same graphs compiles faster)"
        )

    def step_flops(m) -> int:
        with FlopCounterMode(display=False) as counter:
            bare_step(m, adamw(m, 1e-5, 0.1), open_clip.ClipLoss(), images, tokens, device)
        return counter.get_total_flops()

    flops, executed = step_flops(copy.deepcopy(plain)), step_flops(copy.deepcopy(model))
    if device.type == "cuda":
        peak, of = args.peak_tflops * 1e12, f"the bf16 dense peak, {args.peak_tflops:.0f} TFLOP/s"
    else:
        peak = matmul_peak(device)
        of = f"a 2048 x 2048 fp32 matrix product on {threads} threads, {peak / 1e9:.1f} GFLOP/s"
    print(
        f"  {flops / args.batch / 1e6:.1f} MFLOP per pair (forward + backward) with open_clip's "
        f"forwards, {executed / args.batch / 1e6:.1f} computed by the pooled-token towers; peak: {of}"
    )
    print("  MFU counts the model's FLOPs (open_clip's forwards); 'computed' what the loop ran")
    for name in run:
        achieved = flops * rate[name] / args.batch
        ran = (executed if name in ("library", "pooled tokens") else flops) * rate[name] / args.batch
        print(
            f"  {name:13s} {achieved / 1e9:9.2f} GFLOP/s, MFU {100 * achieved / peak:.1f} %"
            f" (computed: {ran / 1e9:.2f} GFLOP/s, {100 * ran / peak:.1f} %)"
        )


if __name__ == "__main__":
    main()

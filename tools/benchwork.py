"""One process of the distributed bench (`python -m tools.bench`): the whole step path, the trainer's or DDP's.

`python -m tools.benchwork --mode tree|gather|ddp --steps N --threads T [--micro M] --save FILE`
trains the default model on a synthetic genome with batch 64 in M micro-batches (default 2): every step draws the
global batch, encodes this rank's micro-batches and updates. `tree` is the trainer's step (gradients summed along the
fixed tree, partial sums combined shard by shard); `gather` is the trainer's step with every micro-batch's gradient
all-gathered (the same bits, more bytes); `ddp` is plain `DistributedDataParallel` (gradients all-reduced and averaged
by the backend, KL per shard). Run under RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT for several workers, or alone.

Rank 0 prints one JSON line: seconds per step after warmup, the gradient's length, and the bytes per timed step that
rank 0 received and sent through the trainer's collectives (counted by the group), or, for DDP, the gradient bytes it
handed to all-reduce (counted by a communication hook; what the backend moves for them is its algorithm's business). It
saves the final trainable weights as one float32 .npy. SIGUSR1 prints every thread's Python stack to stderr (how the
bench reports where a hung worker was).
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import signal
import sys
import time
import typing
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch._C._distributed_c10d import GradBucket

from geno_pipeline.config import TrainParams
from geno_pipeline.data.genome import synthetic_genome
from geno_pipeline.distributed import job_from_env, micro_batch_slices, shard_range
from geno_pipeline.distributed.group import Traffic, joined
from geno_pipeline.training.heldout import encode_batch
from geno_pipeline.training.model import build_world_model, rollout
from geno_pipeline.training.sampling import DEFAULT_EDIT_TYPE_WEIGHTS, DEFAULT_ROLLOUT_STEP_MIX
from geno_pipeline.training.trainer import TorchTrainer, build_adamw_optimizer, gaussian_kl, masked_prediction_loss
from geno_pipeline.training.tuples import TupleSampler, take_rows

__all__ = ["main"]

BATCH, WINDOW = 64, 256


class _Pair(nn.Module):
    """The trainable modules as one module, as DDP wants them."""

    def __init__(self, action_encoder: nn.Module, predictor: nn.Module) -> None:
        super().__init__()
        self.action_encoder = action_encoder
        self.predictor = predictor

    def forward(self, state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return rollout(self.predictor, self.action_encoder, state, actions)


def _count_allreduce(traffic: Traffic, bucket: GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP's default all-reduce of one gradient bucket, its payload counted as sent."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    buffer = bucket.buffer()
    traffic.add(buffer.numel() * buffer.element_size(), 0)
    return allreduce_hook(None, bucket)  # type: ignore[arg-type]  # None: the default group


# DDP checks the hook's annotations as objects; this module's are strings (PEP 563) until resolved
_count_allreduce.__annotations__ = typing.get_type_hints(_count_allreduce)


def loopback_bytes(dev: str = "/proc/net/dev") -> int | None:
    """Bytes the loopback interface has carried since boot (Linux), or None where that cannot be read."""
    try:
        lines = Path(dev).read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for line in lines:
        name, _, counters = line.partition(":")
        if name.strip() == "lo" and counters.split():
            return int(counters.split()[0])
    return None


def _sync(world_size: int) -> None:
    if world_size > 1:
        torch.distributed.barrier()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("tree", "gather", "ddp"), required=True)
    parser.add_argument("--micro", type=int, default=2, help="micro-batches per step (default 2)")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--save", default=None)
    args = parser.parse_args(argv)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the bench asks a worker that hangs where it is
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    job = job_from_env(os.environ)
    total = args.steps + args.warmup
    train = TrainParams(steps=total, warmup_steps=1, batch_size=BATCH, micro_batches=args.micro)
    windows = synthetic_genome(1, 320 * 2000).reshape(2000, 320)
    model = build_world_model(window_length=WINDOW, params=train.model, encoder_seed=1, init_seed=2)
    sampler = TupleSampler(3, window_length=WINDOW, weights=DEFAULT_EDIT_TYPE_WEIGHTS, mix=DEFAULT_ROLLOUT_STEP_MIX)
    opt = build_adamw_optimizer(predictor=model.predictor, action_encoder=model.action_encoder, config=train)
    params = [p for g in opt.param_groups for p in g["params"]]
    with joined(job, backend="gloo", device="cpu", timeout_s=120) as group:
        slices = micro_batch_slices(BATCH, args.micro)
        mine = [slices[j] for j in shard_range(args.micro, group.size, group.rank)]
        trainer = TorchTrainer(
            predictor=model.predictor,
            action_encoder=model.action_encoder,
            optimizer=opt,
            config=train,
            total_steps=total,
            group=group,
            reduction="gather" if args.mode == "gather" else "tree",
        )
        ddp, traffic = None, group.traffic
        if args.mode == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            ddp = DistributedDataParallel(_Pair(model.action_encoder, model.predictor))
            traffic = Traffic()
            ddp.register_comm_hook(traffic, _count_allreduce)
        start, before, wire = 0.0, Traffic(), None
        for step in range(1, total + 1):
            if step == args.warmup + 1:
                _sync(group.size)  # every rank starts the window together: the loopback count covers the same steps
                start, before, wire = time.perf_counter(), Traffic(traffic.sent, traffic.received), loopback_bytes()
            batch = sampler.draw(windows, BATCH)
            if ddp is None:
                shards = [encode_batch(model, take_rows(batch, rows), "cpu") for rows in mine]
                trainer.train_step(shards, step=step, action_count=int(batch.mask.sum()))
                continue
            local = encode_batch(model, take_rows(batch, slice(mine[0].start, mine[-1].stop)), "cpu")
            pred = ddp(local.state, local.actions)
            loss = masked_prediction_loss(pred, local.target, local.action_mask)
            loss = loss + train.kl_weight * gaussian_kl(pred, local.action_mask)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, train.grad_clip_norm)
            opt.step()
        seconds = (time.perf_counter() - start) / args.steps
        _sync(group.size)
        wire_end = loopback_bytes()
        on_wire = None if wire is None or wire_end is None else (wire_end - wire) / args.steps
        sent, received = (traffic.sent - before.sent) / args.steps, (traffic.received - before.received) / args.steps
        # the DDP wrapper's reducer holds the process group: freed after the group is destroyed, it hung the worker's
        # exit in about one run in eight, so it goes while the group is alive
        del ddp
        if group.rank == 0:
            if args.save:
                np.save(args.save, torch.cat([p.detach().reshape(-1) for p in params]).numpy())
            line = {"seconds_per_step": seconds, "world_size": group.size, "mode": args.mode, "micro_batches": args.micro}
            line |= {"gradient_values": sum(p.numel() for p in params), "sent_bytes_per_step": sent, "received_bytes_per_step": received}
            line |= {"loopback_bytes_per_step": on_wire}
            print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

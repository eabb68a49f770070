"""One process of the distributed bench (`geno-pipeline bench`): the whole step path, fixed-order or DDP.

`python -m geno_pipeline.distributed.benchwork --mode fixed|ddp --steps N --threads T --save FILE` trains the default
model on a synthetic genome with batch 64 in 2 micro-batches: every step draws the global batch, encodes this rank's
micro-batches and updates. `fixed` is the trainer's step (per-micro-batch gradients gathered and summed in order);
`ddp` is plain `DistributedDataParallel` (gradients all-reduced and averaged by the backend, KL per shard). Run under
RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT for several workers, or alone. Rank 0 prints one JSON line (seconds per step
after warmup) and saves the final trainable weights as one float32 .npy. SIGUSR1 prints every thread's Python stack to
stderr (how the bench reports where a hung worker was).
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import signal
import sys
import time

import numpy as np
import torch
from torch import nn

from geno_pipeline.config import TrainParams
from geno_pipeline.data.genome import synthetic_genome
from geno_pipeline.distributed import job_from_env, micro_batch_slices, shard_range
from geno_pipeline.distributed.group import joined
from geno_pipeline.training.heldout import encode_batch
from geno_pipeline.training.model import build_world_model, rollout
from geno_pipeline.training.sampling import DEFAULT_EDIT_TYPE_WEIGHTS, DEFAULT_ROLLOUT_STEP_MIX
from geno_pipeline.training.trainer import TorchTrainer, build_adamw_optimizer, gaussian_kl, masked_prediction_loss
from geno_pipeline.training.tuples import TupleSampler, take_rows

__all__ = ["main"]

BATCH, MICRO, WINDOW = 64, 2, 256


class _Pair(nn.Module):
    """The trainable modules as one module, as DDP wants them."""

    def __init__(self, action_encoder: nn.Module, predictor: nn.Module) -> None:
        super().__init__()
        self.action_encoder = action_encoder
        self.predictor = predictor

    def forward(self, state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return rollout(self.predictor, self.action_encoder, state, actions)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("fixed", "ddp"), required=True)
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
    train = TrainParams(steps=total, warmup_steps=1, batch_size=BATCH, micro_batches=MICRO)
    windows = synthetic_genome(1, 320 * 2000).reshape(2000, 320)
    model = build_world_model(window_length=WINDOW, params=train.model, encoder_seed=1, init_seed=2)
    sampler = TupleSampler(3, window_length=WINDOW, weights=DEFAULT_EDIT_TYPE_WEIGHTS, mix=DEFAULT_ROLLOUT_STEP_MIX)
    opt = build_adamw_optimizer(predictor=model.predictor, action_encoder=model.action_encoder, config=train)
    params = [p for g in opt.param_groups for p in g["params"]]
    with joined(job, backend="gloo", device="cpu", timeout_s=120) as group:
        slices = micro_batch_slices(BATCH, MICRO)
        mine = [slices[j] for j in shard_range(MICRO, group.size, group.rank)]
        trainer = TorchTrainer(
            predictor=model.predictor, action_encoder=model.action_encoder, optimizer=opt, config=train, total_steps=total, group=group
        )
        ddp = None
        if args.mode == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            ddp = DistributedDataParallel(_Pair(model.action_encoder, model.predictor))
        start = 0.0
        for step in range(1, total + 1):
            if step == args.warmup + 1:
                start = time.perf_counter()
            batch = sampler.draw(windows, BATCH)
            if ddp is None:
                shards = [encode_batch(model, take_rows(batch, rows), "cpu") for rows in mine]
                trainer.train_step(shards, step=step, action_count=int(batch.mask.sum()))
                continue
            local = encode_batch(model, take_rows(batch, slice(mine[0].start, mine[-1].stop)), "cpu")
            pred = ddp(local.state, local.actions)
            loss = masked_prediction_loss(pred, local.target, local.action_mask)
            loss = loss + train.kl_weight * gaussian_kl(pred, local.action_mask)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, train.grad_clip_norm)
            opt.step()
        seconds = (time.perf_counter() - start) / args.steps
        # the DDP wrapper's reducer holds the process group: freed after the group is destroyed, it hung the worker's
        # exit in about one run in eight, so it goes while the group is alive
        del ddp
        if group.rank == 0:
            if args.save:
                np.save(args.save, torch.cat([p.detach().reshape(-1) for p in params]).numpy())
            print(json.dumps({"seconds_per_step": seconds, "world_size": group.size, "mode": args.mode}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

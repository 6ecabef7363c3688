"""`build_loaders`: per-rank DataLoaders with seeded, resumable sampling."""
import math
from typing import Optional, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler

from data.errors import DataError


class EpochRandomSampler(RandomSampler):
    """RandomSampler whose order depends only on (seed, epoch), like DistributedSampler's."""

    def __init__(self, data_source: Dataset, seed: int):
        super().__init__(data_source, generator=torch.Generator().manual_seed(seed))
        self.seed = seed

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed + epoch)


def per_rank_batch(global_batch: int, dataset_size: int, world_size: int) -> int:
    """Split the global train batch over the ranks; it must fit each rank's share of the data."""
    batch = global_batch // world_size
    share = math.ceil(dataset_size / world_size)
    if batch < 1:
        raise DataError(f"--train_batch_size {global_batch} leaves no image per rank over {world_size} ranks; "
                        f"give at least {world_size}")
    if batch > share:
        raise DataError(f"batch size {batch} larger than the dataset ({dataset_size} images over {world_size} "
                        f"ranks); lower --train_batch_size to at most {share * world_size}")
    return batch


def build_loaders(config, train_set: Dataset, val_set: Dataset, distributed: bool, world_size: int,
                  rank: int, seed: int) -> Tuple[DataLoader, DataLoader, Sampler]:
    """(train_loader, val_loader, train_sampler); call train_sampler.set_epoch(epoch) every epoch."""
    batch = per_rank_batch(int(config.train_batch_size), len(train_set), world_size)
    eval_batch = max(1, int(config.eval_batch_size) // world_size)
    if distributed:
        train_sampler = DistributedSampler(train_set, world_size, rank, shuffle=True, seed=seed)
        val_sampler: Optional[Sampler] = DistributedSampler(val_set, world_size, rank, shuffle=False)
    else:
        train_sampler = EpochRandomSampler(train_set, seed)
        val_sampler = None  # sequential
    common = dict(num_workers=int(config.num_workers), pin_memory=bool(config.pin_mem),
                  persistent_workers=int(config.num_workers) > 0)
    # the generator seeds the workers' augmentation RNGs
    train_loader = DataLoader(train_set, batch, sampler=train_sampler, drop_last=True,
                              generator=torch.Generator().manual_seed(seed + rank), **common)
    val_loader = DataLoader(val_set, eval_batch, sampler=val_sampler, shuffle=False, **common)
    return train_loader, val_loader, train_sampler

"""`build_loaders`: per-rank DataLoaders with seeded, resumable sampling.

The training order of an epoch depends only on (seed, epoch, rank), and so do
the DataLoader workers' seeds: `train_sampler.set_epoch(epoch, skip)` fixes
both, and `skip` drops the samples a run already consumed before it was
stopped mid-epoch, so a resumed run sees exactly the batches it had not seen
(without loading the skipped ones). Workers are not persistent, so every
epoch's workers start from that epoch's seeds (exact with any --num_workers at
epoch boundaries; after a mid-epoch skip the order is exact and augmentation is
exact with --num_workers 0, re-seeded per epoch otherwise).
"""
import math
from typing import Iterator, Optional, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from data.errors import DataError


def _seed_workers(generator: Optional[torch.Generator], seed: int, epoch: int, rank: int) -> None:
    """The DataLoader draws its workers' base seed from `generator` at every iter()."""
    if generator is not None:
        generator.manual_seed((seed + rank) * 1_000_003 + epoch)


class EpochRandomSampler(Sampler[int]):
    """A random permutation that depends only on (seed, epoch), like DistributedSampler's.

    Args:
        data_source: the dataset (only its length is used).
        seed: the run's seed.
        worker_generator: the DataLoader's generator, re-seeded by set_epoch.
    """

    def __init__(self, data_source: Dataset, seed: int, worker_generator: Optional[torch.Generator] = None):
        self.num_samples = len(data_source)
        self.seed, self.worker_generator = seed, worker_generator
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Order of `epoch`, without its first `skip` samples (consumed before a mid-epoch stop)."""
        self.epoch, self.skip = epoch, skip
        _seed_workers(self.worker_generator, self.seed, epoch, 0)

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        return iter(order[self.skip:].tolist())

    def __len__(self) -> int:
        return max(self.num_samples - self.skip, 0)


class EpochDistributedSampler(DistributedSampler):
    """DistributedSampler with the same `set_epoch(epoch, skip)` as EpochRandomSampler."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int,
                 worker_generator: Optional[torch.Generator] = None):
        super().__init__(dataset, num_replicas, rank, shuffle=True, seed=seed)
        self.worker_generator, self.skip = worker_generator, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        super().set_epoch(epoch)
        self.skip = skip
        _seed_workers(self.worker_generator, self.seed, epoch, self.rank)

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.skip:])

    def __len__(self) -> int:
        return max(self.num_samples - self.skip, 0)


class ShardSampler(Sampler[int]):
    """Every `world_size`-th sample from `rank` on, in order, without padding: the ranks'
    shards add up to the data set exactly once (DistributedSampler repeats samples to even them)."""

    def __init__(self, data_source: Dataset, world_size: int, rank: int):
        self.indices = range(rank, len(data_source), world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def build_eval_loader(config, val_set: Dataset, world_size: int, rank: int) -> DataLoader:
    """This rank's shard of the validation set, --eval_batch_size per process."""
    pin = bool(config.pin_mem) and torch.cuda.is_available()
    return DataLoader(val_set, int(config.eval_batch_size),
                      sampler=ShardSampler(val_set, world_size, rank), num_workers=int(config.num_workers),
                      pin_memory=pin)


def check_batch_fits(batch: int, dataset_size: int, world_size: int) -> int:
    """The per-process train batch, refused if it exceeds one process's share of the data."""
    share = math.ceil(dataset_size / world_size)
    if batch > share:
        raise DataError(f"batch size {batch} larger than the dataset ({dataset_size} images, {share} per process "
                        f"over {world_size} process(es)); lower --train_batch_size (per process) to at most {share}")
    return batch


def build_loaders(config, train_set: Dataset, val_set: Dataset, distributed: bool, world_size: int,
                  rank: int, seed: int) -> Tuple[DataLoader, DataLoader, Sampler]:
    """(train_loader, val_loader, train_sampler); call train_sampler.set_epoch(epoch[, skip]) every epoch."""
    batch = check_batch_fits(int(config.train_batch_size), len(train_set), world_size)  # per process
    eval_batch = int(config.eval_batch_size)  # per process
    # the generator seeds the workers' augmentation RNGs; the sampler re-seeds it every epoch
    worker_generator = torch.Generator().manual_seed(seed + rank)
    if distributed:
        train_sampler = EpochDistributedSampler(train_set, world_size, rank, seed, worker_generator)
        val_sampler: Optional[Sampler] = DistributedSampler(val_set, world_size, rank, shuffle=False)
    else:
        train_sampler = EpochRandomSampler(train_set, seed, worker_generator)
        val_sampler = None  # sequential
    # not persistent: persistent workers carry their RNG over epochs, which a resumed run cannot restore
    pin = bool(config.pin_mem) and torch.cuda.is_available()  # pinned host memory only helps copies to a GPU
    common = dict(num_workers=int(config.num_workers), pin_memory=pin)
    train_loader = DataLoader(train_set, batch, sampler=train_sampler, drop_last=True,
                              generator=worker_generator, **common)
    val_loader = DataLoader(val_set, eval_batch, sampler=val_sampler, shuffle=False, **common)
    return train_loader, val_loader, train_sampler

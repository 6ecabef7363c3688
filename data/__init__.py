"""Data sets, loaders, mixup and the base criterion for UVC's two stages."""
from data.datasets import DATASETS, build_datasets, build_eval_dataset
from data.errors import DataError
from data.loaders import build_eval_loader, build_loaders
from data.mixup import build_criterion, build_mixup
from data.probe import probe_batch

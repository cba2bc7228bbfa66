"""Datasets (CIFAR-10/100, SVHN, Fashion-MNIST, .npz) and batched augmentation on tensors."""
from .augment import AUGMENT_PRESETS, Augment, cutout, random_crop, random_flip
from .array_dataset import ArrayDataset, DataError
from .datasets import (check_subsets, dataset_fingerprint, describe_fingerprint, list_datasets, load_dataset,
                       synthetic_dataset)
from .paths import data_search_dirs
from .loader import CandidateLoader, check_run_fits, test_batches

__all__ = ["ArrayDataset", "DataError", "load_dataset", "list_datasets", "data_search_dirs",
           "synthetic_dataset", "Augment", "AUGMENT_PRESETS", "random_crop", "random_flip", "cutout",
           "CandidateLoader", "test_batches", "check_run_fits", "check_subsets", "dataset_fingerprint",
           "describe_fingerprint"]

"""``sb-accel list-models``, ``list-engines`` and ``list-strategies``: print a registry's names."""
from __future__ import annotations

import argparse

from . import EXIT_OK

__all__ = ["cmd_list_models", "cmd_list_engines", "cmd_list_strategies"]


def cmd_list_models(args: argparse.Namespace) -> int:
    from ..models import list_models
    print("\n".join(list_models()))
    return EXIT_OK


def cmd_list_engines(args: argparse.Namespace) -> int:
    from ..engines import list_engines
    print("\n".join(list_engines()))
    return EXIT_OK


def cmd_list_strategies(args: argparse.Namespace) -> int:
    from ..selection import list_strategies, strategy_info
    for name in list_strategies():
        print(f"{name}\tprime_epochs={strategy_info(name).prime_epochs}")
    return EXIT_OK

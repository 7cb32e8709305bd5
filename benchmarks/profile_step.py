"""Where one training iteration's FLOPs and time go: by network, by pass, forward and backward apart.

Runs a recipe's trainer step (exactly the trainer's UnitStep: discriminator update, then encoder/generator
update) on a random batch per domain, as benchmarks/train_speed.py does, and charges every aten operation to

- the pass of the iteration that ran it, named as the code names it (``translate_both``, ``discriminator_loss``
  with its ``classify`` and ``feature`` parts, ``generator_losses`` with its ``fooling`` part, and each
  ``update``'s backward and optimizer step);
- the network block that ran it: each encoder's and generator's blocks and each discriminator's children,
  labelled by their network, or by both networks where sharing ties them (``E_a+E_b shared``); the classifier
  head by itself; everything else (losses, concatenations, the optimisers' arithmetic) is ``other``. A backward
  operation goes to the block whose forward created its autograd node;
- forward or backward.

FLOPs are exact: torch.utils.flop_counter.FlopCounterMode over one iteration (it counts matrix products and
convolutions only, so ``other`` has time but next to no FLOPs). Times are each operation's wall time, averaged
over the timed iterations (on a GPU the device is synchronised around each operation); their sum is printed
beside the iteration's time without instrumentation.

    python benchmarks/profile_step.py                                      # recipes/mnist2usps.toml
    OMP_NUM_THREADS=1 python benchmarks/profile_step.py recipes/usps2mnist.toml --threads 1 --warmup 1 \\
        --timed 2 --set train.precision=fp32 --set train.channels_last=false
    python benchmarks/profile_step.py --set model.discriminator.width=32 --warmup 0 --timed 0   # FLOPs only
    python benchmarks/profile_step.py --json                               # JSON lines instead of tables
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial, wraps
from unittest import mock

import torch
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode
from train_speed import random_batch_step

import unitkit.objective
import unitkit.train
from unitkit.errors import UnitkitError
from unitkit.model import DOMAINS, UNIT
from unitkit.train import UnitStep

OTHER = "other"
#: The passes of one iteration in the order they run, with what each computes.
PASSES = {
    "translate_both": "E, G forward, once for both updates",
    "discriminator_loss": "D on real + detached fakes (GAN)",
    "discriminator_loss: classify": "classifier head on real A",
    "discriminator_loss: feature": "D trunk on fakes, dropout off",
    "update(discriminator): backward": "",
    "update(discriminator): optimizer step": "",
    "generator_losses": "KL, reconstruction, cycle terms",
    "generator_losses: fooling": "frozen D on the fakes (GAN)",
    "update(generator): backward": "through D into G and E",
    "update(generator): optimizer step": "",
    "UnitStep": "zero_grad, schedulers, batch to device",
}
DIRECTIONS = ("forward", "backward")  # backward: inside autograd's backward; forward: everything else
NETWORKS = [f"{x}_{d}" for x in "EGD" for d in ("a", "b", f"a+{x}_b shared")] + ["classifier", OTHER]
RANK = {name: i for i, name in enumerate([*PASSES, *NETWORKS, *DIRECTIONS])}


@dataclass
class Cost:
    flop: int = 0
    seconds: float = 0.0


def called_children(module: nn.Module) -> Iterator[nn.Module]:
    """The module's children, with the members of a ModuleList or ModuleDict (which is never called) in its place."""
    for child in module.children():
        if isinstance(child, nn.ModuleList | nn.ModuleDict):
            yield from called_children(child)
        else:
            yield child


def block_labels(model: UNIT) -> dict[nn.Module, str]:
    """Each encoder's and generator's blocks and each discriminator's children, labelled by the network that runs
    them, or by both networks where sharing ties them; the classifier head by itself."""
    owners: dict[nn.Module, list[str]] = defaultdict(list)
    for letter in "EGD":
        for domain in DOMAINS:
            network = getattr(model, {"E": "encoder", "G": "generator", "D": "discriminator"}[letter])(domain)
            for block in called_children(network):
                owners[block].append(f"{letter}_{domain}")
    labels = {block: names[0] if len(names) == 1 else "+".join(names) + " shared" for block, names in owners.items()}
    for domain in DOMAINS:
        dis = model.discriminator(domain)
        if dis.classifier_path:
            labels[dis.get_submodule(dis.classifier_path)] = "classifier"
    return labels


class Ledger(TorchDispatchMode):
    """Charges each aten operation's wall time, and its FLOPs when a FlopCounterMode was entered before this mode,
    to (pass, network block, direction)."""

    def __init__(self, labels: dict[nn.Module, str], device: torch.device, counter: FlopCounterMode | None) -> None:
        super().__init__()
        self.labels, self.counter = labels, counter
        self.synchronize = partial(torch.cuda.synchronize, device) if device.type == "cuda" else lambda: None
        self.costs: dict[tuple[str, str, str], Cost] = defaultdict(Cost)
        self.passes = ["UnitStep"]
        self.running: list[str] = []  # the blocks whose forward is running, innermost last
        self.created: dict[int, str] = {}  # autograd node (sequence number) -> the block whose forward created it

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if torch._C._current_graph_task_id() == -1:
            direction, block = "forward", self.running[-1] if self.running else OTHER
        else:
            node = torch._C._current_autograd_node()  # the backward function this operation belongs to
            direction, block = "backward", self.created.get(node._sequence_nr(), OTHER) if node else OTHER
        flop = self.counter.get_total_flops() if self.counter else 0
        self.synchronize()
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        self.synchronize()
        cost = self.costs[self.passes[-1], block, direction]
        cost.seconds += time.perf_counter() - start
        cost.flop += self.counter.get_total_flops() - flop if self.counter else 0
        return out

    @contextmanager
    def within(self, name: str) -> Iterator[None]:
        """Charge what runs inside to the pass ``name``."""
        self.passes.append(name)
        try:
            yield
        finally:
            self.passes.pop()

    def pass_of(self, name: str, function: Callable) -> Callable:
        """``function``, charging what it runs to the pass ``name``."""

        @wraps(function)
        def charged(*args, **kwargs):
            with self.within(name):
                return function(*args, **kwargs)

        return charged

    def block_starts(self, label: str, block: nn.Module, args: tuple) -> None:
        self.running.append(label)

    def block_ends(self, block: nn.Module, args: tuple, output: object) -> None:
        """Record the autograd nodes the block's forward created (those between its outputs and its inputs), so
        that their backward is charged to the block."""
        label = self.running.pop()
        inputs = {t.grad_fn._sequence_nr() for t in tree_leaves(args) if isinstance(t, torch.Tensor) and t.grad_fn}
        nodes = [t.grad_fn for t in tree_leaves(output) if isinstance(t, torch.Tensor) and t.grad_fn]
        while nodes:
            node = nodes.pop()
            number = node._sequence_nr()
            if node.next_functions and number not in inputs and number not in self.created:  # not a leaf's
                self.created[number] = label
                nodes.extend(next_node for next_node, _ in node.next_functions if next_node is not None)


@contextmanager
def ledger_of(step: UnitStep, counter: FlopCounterMode | None = None) -> Iterator[Ledger]:
    """A Ledger over the step's iterations inside the block: the passes are marked by wrapping the functions the
    step calls (in this process only; unitkit's code is unchanged) and the blocks by forward hooks."""
    ledger = Ledger(block_labels(step.model), step.device, counter)
    model, original_dropout_off = step.model, unitkit.objective.dropout_off

    @contextmanager
    def feature_pass(*modules: nn.Module) -> Iterator[None]:  # the feature term alone runs without dropout
        with ledger.within("discriminator_loss: feature"), original_dropout_off(*modules):
            yield

    def update(name: str, loss: torch.Tensor) -> bool:
        with ledger.within(f"update({name}): backward"):
            return UnitStep.update(step, name, loss)

    with ExitStack() as stack:
        patches = [
            (step, "generator_pass", ledger.pass_of("translate_both", step.generator_pass)),
            (step, "discriminator_pass", ledger.pass_of("discriminator_loss", step.discriminator_pass)),
            (step, "update", update),
            (unitkit.train, "generator_losses", ledger.pass_of("generator_losses", unitkit.train.generator_losses)),
            (unitkit.objective, "fooling", ledger.pass_of("generator_losses: fooling", unitkit.objective.fooling)),
            (unitkit.objective, "dropout_off", feature_pass),
            *((dis, "classify", ledger.pass_of("discriminator_loss: classify", dis.classify))
              for dis in (model.dis_a, model.dis_b)),
            *((optimizer, "step", ledger.pass_of(f"update({name}): optimizer step", optimizer.step))
              for name, optimizer in step.optimizers.items()),
        ]  # fmt: skip
        for target, name, replacement in patches:
            stack.enter_context(mock.patch.object(target, name, replacement))
        for block, label in ledger.labels.items():
            stack.enter_context(block.register_forward_pre_hook(partial(ledger.block_starts, label)))
            stack.enter_context(block.register_forward_hook(ledger.block_ends))
        with ledger:
            yield ledger


def wall_time(iteration: Callable[[], None]) -> float:
    start = time.perf_counter()
    iteration()
    return time.perf_counter() - start


def profile(recipe_file: str, overrides: list[str], threads: int, warmup: int, timed: int, device: str) -> dict:
    """Build the step; time ``timed`` iterations plain and as many charged to the ledger, alternately (so that other
    work on the host slows both alike); then count one iteration's FLOPs."""
    torch.set_num_threads(threads)
    recipe, step, iteration = random_batch_step(recipe_file, overrides, None, device)
    for _ in range(warmup):
        iteration()
    plain, instrumented, cells = [], [], defaultdict(Cost)
    for _ in range(timed):
        plain.append(wall_time(iteration))
        with ledger_of(step) as timing:
            instrumented.append(wall_time(iteration))
        for key, cost in timing.costs.items():
            cells[key].seconds += cost.seconds / timed
    with FlopCounterMode(display=False) as counter, ledger_of(step, counter) as counting:
        iteration()
    for key, cost in counting.costs.items():
        cells[key].flop = cost.flop
    if sum(c.flop for c in cells.values()) != counter.get_total_flops():
        raise RuntimeError("the ledger lost FLOPs that FlopCounterMode counted")
    return {
        "recipe": str(recipe_file),
        "overrides": overrides,
        "device": str(step.device),
        "threads": threads,
        "batch_size": recipe.train.batch_size,
        "image_size": recipe.data.settings["image_size"],
        "gflop_per_iter": round(counter.get_total_flops() / 1e9, 1),
        "sec_per_iter_plain_median": round(statistics.median(plain), 3) if plain else None,
        "sec_per_iter_instrumented_median": round(statistics.median(instrumented), 3) if plain else None,
        "sec_per_iter_in_operations": round(sum(c.seconds for c in cells.values()), 3) if timed else None,
        "timed_iterations": timed,
        "cells": cells,
    }


def running_order(names: tuple[str, ...]) -> list[tuple[int, str]]:
    """Sort key: passes in the order they run; encoders, generators, discriminators, classifier, other."""
    return [(RANK.get(name, len(RANK)), name) for name in names]


def table(
    title: str, heads: list[str], cells: dict[tuple[str, str, str], Cost], row: Callable[[str, str], tuple[str, ...]]
) -> Table:
    """The cells summed into rows (``row(pass, network)`` names a cell's row): GFLOP and seconds (when timed)
    forward, backward and together, with their shares of the totals."""
    rows: dict[tuple[str, ...], dict[str, Cost]] = defaultdict(lambda: {d: Cost() for d in DIRECTIONS})
    for (name, network, direction), cost in cells.items():
        total = rows[row(name, network)][direction]
        total.flop, total.seconds = total.flop + cost.flop, total.seconds + cost.seconds
    flop, sec = sum(c.flop for c in cells.values()), sum(c.seconds for c in cells.values())
    columns = ["GFLOP fwd", "GFLOP bwd", "GFLOP", "% FLOP", *(["s fwd", "s bwd", "s", "% time"] if sec else [])]
    out = Table(*heads, *columns, title=title, title_justify="left")
    for names in sorted(rows, key=running_order):
        gflop = [rows[names][d].flop / 1e9 for d in DIRECTIONS]
        seconds = [rows[names][d].seconds for d in DIRECTIONS]
        flop_share, time_share = sum(gflop) * 1e9 / max(flop, 1), sum(seconds) / sec if sec else 0.0
        numbers = [f"{g:,.1f}" for g in (*gflop, sum(gflop))] + [f"{flop_share:.1%}"]
        if sec:
            numbers += [f"{s:.3f}" for s in (*seconds, sum(seconds))] + [f"{time_share:.1%}"]
        out.add_row(*names, *numbers)
    return out


def report(figures: dict, as_json: bool) -> None:
    """Tables by network, by pass and by both; or JSON lines: the figures, then one line per cell."""
    cells: dict[tuple[str, str, str], Cost] = figures.pop("cells")
    if as_json:
        print(json.dumps(figures), flush=True)
        for (name, network, direction), cost in sorted(cells.items(), key=lambda item: running_order(item[0])):
            line = {"pass": name, "network": network, "direction": direction, "gflop": round(cost.flop / 1e9, 3)}
            print(json.dumps({**line, "seconds": round(cost.seconds, 4)}), flush=True)
        return
    console = Console()
    if not console.is_terminal:  # rich would fit the tables to 80 columns
        console.width = 170
    console.print(json.dumps(figures))
    console.print(table("By network", ["network"], cells, lambda name, network: (network,)))
    console.print(table("By pass", ["pass", "what"], cells, lambda name, network: (name, PASSES.get(name, ""))))
    console.print(table("By pass and network", ["pass", "network"], cells, lambda name, network: (name, network)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", nargs="?", default="mnist2usps", help="a recipe file or a shipped recipe's name")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--timed", type=int, default=2, help="iterations timed plain and timed instrumented")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="JSON lines: the figures, then one line per cell")
    args = parser.parse_args()
    try:
        figures = profile(args.recipe, args.overrides, args.threads, args.warmup, args.timed, args.device)
    except UnitkitError as error:  # a recipe or device problem: its one-line message says the fix
        raise SystemExit(f"profile_step: {error}") from None
    report(figures, args.json)


if __name__ == "__main__":
    main()

"""Named scalar statistics gathered during training and averaged across ranks.

Code anywhere calls `report(name, values)`; the training loop calls `default_collector.update()`
once per tick, which sums count, sum and sum of squares over all ranks (one all-reduce), and then
reads `mean(name)`, `std(name)` and `num(name)`."""

import re

import torch

from . import distributed

_counters = {}


def report(name, value):
    """Adds the elements of `value` (tensor, number or list) to the statistic `name`; returns
    `value` unchanged so it can wrap an expression. The sums stay on the tensor's device until
    `Collector.update()`, so reporting never waits for the GPU."""
    elems = torch.as_tensor(value).detach().flatten().to(torch.float64)
    if elems.numel():
        moments = torch.stack([elems.new_full([], elems.numel()), elems.sum(), elems.square().sum()])
        _counters[name] = _counters[name] + moments if name in _counters else moments
    return value


class Collector:
    """Reads the statistics reported since the previous `update()`, summed over all ranks.

    `regex` selects which names to collect. Every rank must call `update()` together, and names
    appear in sorted order so that all ranks reduce the same tensor."""

    def __init__(self, regex='.*', keep_previous=False):
        self._regex = re.compile(regex)
        self._keep_previous = keep_previous
        self._moments = {}
        self._seen = set()

    def names(self):
        return sorted(n for n in self._seen if self._regex.fullmatch(n))

    def update(self):
        """Takes everything reported since the last call on every rank and sums it."""
        local = {name: _counters.pop(name).cpu() for name in list(_counters) if self._regex.fullmatch(name)}
        names = set(local) | self._seen
        names = sorted(set().union(*distributed.all_gather_object(sorted(names))))
        self._seen.update(names)
        if not names:
            return
        stacked = torch.stack([local.get(name, torch.zeros(3, dtype=torch.float64)) for name in names])
        distributed.all_reduce_sum(stacked)
        fresh = {}
        for name, moments in zip(names, stacked):
            if moments[0] > 0:
                fresh[name] = moments
            elif self._keep_previous and name in self._moments:
                fresh[name] = self._moments[name]
        self._moments = fresh

    def num(self, name):
        moments = self._moments.get(name)
        return int(moments[0]) if moments is not None else 0

    def mean(self, name):
        moments = self._moments.get(name)
        if moments is None or moments[0] == 0:
            return float('nan')
        return float(moments[1] / moments[0])

    def std(self, name):
        moments = self._moments.get(name)
        if moments is None or moments[0] == 0:
            return float('nan')
        mean = moments[1] / moments[0]
        return float((moments[2] / moments[0] - mean.square()).clamp(min=0).sqrt())

    def as_dict(self):
        """{name: {num, mean, std}} for the names collected at the last update."""
        return {name: dict(num=self.num(name), mean=self.mean(name), std=self.std(name)) for name in sorted(self._moments)}

    def __getitem__(self, name):
        return self.mean(name)


default_collector = Collector()

"""`UnitWeight`: a weight matrix of an MLP with one row or column per unit, and how to see it by unit (used by
every structure module, `reviveformer.gpt2` and `reviveformer.llama`, and by revival)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn


@dataclass(frozen=True)
class UnitWeight:
    """A weight matrix of an MLP with one row (`units_first`) or one column per unit."""

    param: nn.Parameter
    units_first: bool
    """True: the parameter is (units, other), as nn.Linear's incoming weight; False: (other, units)."""

    def by_unit(self, like: Tensor) -> Tensor:
        """`like` (shaped like the parameter: a mask, a gradient) as (units, other): a view, writes through."""
        return like if self.units_first else like.t()

    @property
    def view(self) -> Tensor:
        """The parameter as (units, other): row j is unit j's entries (writes through)."""
        return self.by_unit(self.param)

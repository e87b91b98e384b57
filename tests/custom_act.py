"""User-style custom activations for the `package.module:attr` tests (imported by name, not by pytest)."""

import torch
from torch import nn


class Cube(nn.Module):
    """An nn.Module class: instantiated with no arguments."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x * x


def squareplus(x: torch.Tensor) -> torch.Tensor:
    """A plain tensor -> tensor function: wrapped in a module."""
    return 0.5 * (x + torch.sqrt(x * x + 4.0))


def make_tanh() -> nn.Module:
    """A zero-argument factory returning a module."""
    return nn.Tanh()


def make_nothing() -> int:
    """A zero-argument factory that returns no module (an error)."""
    return 3


NOT_CALLABLE = 3


class NanOnFifthTrainingCall(nn.Module):
    """ReLU that returns NaN on its fifth call in training mode: a fault injected through the real model."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
            if self.calls == 5:
                return x * float("nan")
        return torch.relu(x)


class LearnedSlopeTanh(nn.Module):
    """A user's activation with parameters: a * tanh(x) + b * x, one learned a and b (and a buffer)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(1.0))
        self.b = nn.Parameter(torch.tensor(0.0))
        self.register_buffer("calls_seen", torch.zeros((), dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * torch.tanh(x) + self.b * x


class _ReluNanGrad(torch.autograd.Function):
    """ReLU forward, NaN backward: a finite loss whose gradient is not."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad * float("nan")


class _ReluInfGrad(_ReluNanGrad):
    """ReLU forward, +inf backward."""

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad + float("inf")


class NanGradOnFifthTrainingCall(nn.Module):
    """ReLU whose gradient is NaN on its fifth call in training mode (the loss stays finite)."""

    bad_grad = _ReluNanGrad

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
            if self.calls == 5:
                return self.bad_grad.apply(x)
        return torch.relu(x)


class InfGradOnFifthTrainingCall(NanGradOnFifthTrainingCall):
    """ReLU whose gradient is +inf on its fifth call in training mode (the loss stays finite)."""

    bad_grad = _ReluInfGrad


def halve_width(x: torch.Tensor) -> torch.Tensor:
    """Returns half the units: the wrong shape (an error)."""
    return torch.relu(x[..., : x.shape[-1] // 2])


def fires(x: torch.Tensor) -> torch.Tensor:
    """Returns a bool tensor: not a floating dtype (an error)."""
    return x > 0


def pair(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns a tuple, not a tensor (an error)."""
    return x, x


def needs_4d(x: torch.Tensor) -> torch.Tensor:
    """Raises on an MLP's 3-d input (an error)."""
    return torch.nn.functional.relu(x.permute(0, 1, 2, 3))

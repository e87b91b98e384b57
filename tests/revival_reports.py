"""Typed liveness reports for the revival tests, built by hand (the fields a Reviver reads, consistent with
docs/design.md's definitions: frequency = fire_count / tokens, dormant = score <= tau)."""

from __future__ import annotations

from reviveformer.liveness import LayerLiveness, LivenessReport

TOKENS = 48


def report_with_dead(
    dead: dict[int, list[int]],
    units: int = 64,
    dormancy: dict[int, list[float]] | None = None,
    tokens: int = TOKENS,
    tau: float = 0.1,
) -> LivenessReport:
    """A report at mlp_post over `tokens` tokens in which exactly `dead[i]` are dead in layer i (they never fire,
    the others fire on every token), with ReDo scores `dormancy[i]` (1.0 for every unit where not given)."""
    layers = []
    for i in sorted(dead):
        scores = list(dormancy[i]) if dormancy is not None else [1.0] * units
        fires = [0 if j in dead[i] else tokens for j in range(units)]
        dormant = [j for j, s in enumerate(scores) if s <= tau]
        layers.append(
            LayerLiveness(
                layer=i,
                units=units,
                fire_count=fires,
                frequency=[f / tokens if tokens else 0.0 for f in fires],
                dead_ratio=len(dead[i]) / units,
                dead_units=sorted(dead[i]),
                dormant_ratio=len(dormant) / units,
                dormancy=scores,
                dormant_units=dormant,
            )
        )
    return LivenessReport(
        tokens=tokens,
        threshold=1e-3,
        criterion="abs",
        dead_frequency=1e-3,
        tau=tau,
        sites={"mlp_post": layers},
    )


# A report of a measurement that saw nothing (no site, no tokens): GraMa decides from gradients alone.
NO_REPORT = LivenessReport(tokens=0, threshold=1e-3, criterion="abs", dead_frequency=1e-3, tau=0.1, sites={})

"""Accuracy-aware mixed precision: keep the INT8 layers that cost the most accuracy in float.

What NNCF's accuracy control does for OpenVINO, done for TFLite:

1. calibrate once (``diagnose.Calibrated``): each variant is then a quick
   re-quantization, not a new conversion;
2. rank every quantized tensor by *measured* sensitivity: how far the model's
   probabilities move back towards Keras, on up to ``RANKING_IMAGES`` validation
   images, when that tensor leaves INT8 (its producer and its consumers run in
   float: ``diagnose.with_consumers``). The debugger's per-layer error
   judges each layer in isolation, but an error early in the network is
   amplified by everything after it: on flowers128 (alpha 0.35, 128 px) the
   three stem layers recover more agreement than the twenty of blocks 13-16,
   which the per-layer error ranks first;
3. return those groups to float in that order, one at a time, until ``judge``
   (``budget.Estimate.meets`` on the decision images: the validation split plus
   training images) accepts the model. A group stays in float only if it brings
   the probabilities on all decision images closer to Keras's than before it
   (once earlier groups are in float, a later one can stop helping); groups
   that do not help are never kept in float;
4. when the ranking runs out first, rank the remaining groups again with the
   chosen ones in float (``RANKING_PASSES``): a group whose error is masked by
   louder ones ranks at or below zero in the first pass. On flowers128 fold 0
   the first pass ran out at agreement 0.964 with 17 ops in float.

The test split stays untouched by every choice here, for the figures
``edgetl validate`` reports afterwards.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edge.bench import invoke_latency
from edge.classifier import Classifier, probabilities_of
from edge.modelfile import embed_metadata

RANKING_IMAGES = 300  # NNCF's default ranking subset size
RANKING_PASSES = 4  # the first ranking, then up to three re-rankings once it runs out


@dataclass
class Step:
    """One candidate on the way: what it keeps in float and what that costs."""

    float_layers: List[str]
    figures: Dict[str, Any]  # what ``judge`` measured on the decision images
    level: int  # ``judge``'s verdict: 2 within budget with headroom, 1 within budget, 0 not
    size_bytes: int
    invoke_p50_ms: float
    kept: bool = True  # False: it moved no closer to Keras, so the group went back to INT8
    accepted: bool = False  # the step whose model the repair returns

    def json(self) -> Dict[str, Any]:
        flat = asdict(self)
        return {**flat.pop("figures"), **flat}


@dataclass
class Outcome:
    flatbuffer: Optional[bytes]  # the accepted model, None when the budget was not met
    float_tensors: List[str]
    steps: List[Step]
    ranking: List[Dict[str, Any]]
    seconds: float


def ranking_subset(count: int, limit: int = RANKING_IMAGES) -> np.ndarray:
    """Evenly spaced indices, so every part of the (seeded) split is represented."""
    return np.unique(np.linspace(0, count - 1, min(count, limit)).round().astype(int))


def divergence(probs: np.ndarray, reference: np.ndarray) -> float:
    """Mean absolute probability difference: smooth, unlike top-1, so small gains rank."""
    return float(np.abs(probs - reference).mean())


def repair(
    quantize: Callable[[Sequence[str]], bytes],
    groups: Dict[str, List[str]],
    predict: Callable[[bytes, np.ndarray], np.ndarray],
    latency_ms: Callable[[bytes], float],
    pixels: np.ndarray,
    keras_probs: np.ndarray,
    judge: Callable[[np.ndarray], Tuple[int, Dict[str, Any]]],
    max_layers: int,
    name: Callable[[str], str] = lambda tensor: tensor,
    log: Callable[[str], None] = lambda message: None,
) -> Outcome:
    """Rank ``groups`` (a tensor -> the ops to keep in float to take it out of INT8)
    by sensitivity, then keep them in float one group at a time.

    ``quantize`` maps a list of float tensors to a flatbuffer; ``predict`` runs a
    flatbuffer on pixels; ``judge`` turns a candidate's probabilities on ``pixels``
    into (level, figures): 2 stops the search (within budget with headroom), 1 is
    within budget and is kept as the answer should no step reach 2 before the cap.
    All are parameters so this loop is plain Python over measured numbers.
    """
    start = time.perf_counter()
    subset = ranking_subset(len(pixels))
    reference = keras_probs[subset]

    def rank(chosen: List[str]) -> List[Dict[str, Any]]:
        """Each group's gain with ``chosen`` already in float, best first."""
        base = divergence(predict(quantize(chosen), pixels[subset]), reference)
        rows = []
        for tensor, members in groups.items():
            added = [m for m in members if m not in chosen]
            if not added or len(chosen) + len(added) > max_layers:
                continue  # in float already, or past the cap: not worth a conversion
            gain = base - divergence(predict(quantize(chosen + added), pixels[subset]), reference)
            rows.append({"tensor": tensor, "layer": name(tensor), "gain": gain})
        rows.sort(key=lambda r: -r["gain"])
        return rows

    def measure(chosen: List[str]) -> Tuple[bytes, Step]:
        flatbuffer = quantize(chosen)
        probs = predict(flatbuffer, pixels)
        level, figures = judge(probs)
        return flatbuffer, Step(
            float_layers=[name(t) for t in chosen],
            figures={**figures, "divergence": round(divergence(probs, keras_probs), 6)},
            level=int(level),
            size_bytes=len(flatbuffer),
            invoke_p50_ms=round(latency_ms(flatbuffer), 3),
        )

    def done(flatbuffer: Optional[bytes], chosen: List[str], step: Optional[Step]) -> Outcome:
        if step is not None:
            step.accepted = True
        return Outcome(
            flatbuffer,
            chosen if flatbuffer is not None else [],
            steps,
            _public(ranking, groups, name),
            time.perf_counter() - start,
        )

    steps: List[Step] = [measure([])[1]]  # step 0: full INT8, what every step is priced against
    chosen: List[str] = []
    settle: Optional[Tuple[bytes, List[str], Step]] = None  # the latest step within budget
    best = steps[0].figures["divergence"]
    ranking: List[Dict[str, Any]] = []
    for rerank in range(RANKING_PASSES):
        order = rank(chosen)
        if rerank == 0:
            ranking = order
        log(
            f"fallback: {'ranked' if rerank == 0 else 're-ranked'} {len(order)} INT8 tensors "
            f"by measured sensitivity on {len(subset)} decision images"
            + (f" with {len(chosen)} op(s) in float" if chosen else "")
            + f" ({time.perf_counter() - start:.1f}s so far); most sensitive: "
            + ", ".join(f"{r['layer']} {r['gain']:.4f}" for r in order[:5])
        )
        kept_before = len(chosen)
        for entry in (r for r in order if r["gain"] > 0):
            added = [m for m in groups[entry["tensor"]] if m not in chosen]
            if not added or len(chosen) + len(added) > max_layers:
                continue  # a smaller group further down may still fit under the cap
            flatbuffer, step = measure(chosen + added)
            # Kept only if the whole decision set moves closer to Keras: the ranking was
            # measured on a subset with the then-chosen groups in float, and a group that
            # helped there can stop helping once the groups before it are in float.
            step.kept = step.figures["divergence"] < best
            steps.append(step)
            log(
                f"fallback: +{entry['layer']} -> {len(chosen) + len(added)} float op(s), "
                + ", ".join(f"{k} {v}" for k, v in step.figures.items())
                + f", {step.size_bytes / 1024:.0f} KiB, invoke p50 {step.invoke_p50_ms:.2f} ms"
                + ("" if step.kept else "; no closer to Keras: back to INT8")
            )
            if not step.kept:
                continue
            chosen, best = chosen + added, step.figures["divergence"]
            if step.level >= 1:
                settle = (flatbuffer, list(chosen), step)
            if step.level >= 2:
                return done(flatbuffer, chosen, step)
        # The ranking ran out before the budget's headroom was reached. Gains measured
        # with every other tensor in INT8 understate groups whose error only shows once
        # the louder ones are gone, so rank again from where the search stands.
        if len(chosen) == kept_before or len(chosen) >= max_layers:
            break
    if settle is not None:  # the cap came first: the closest-to-Keras mix within budget
        return done(*settle)
    return done(None, [], None)


def _public(
    ranking: List[Dict[str, Any]], groups: Dict[str, List[str]], name
) -> List[Dict[str, Any]]:
    return [
        {
            "layer": r["layer"],
            "ops": [name(m) for m in groups[r["tensor"]]],
            "gain": round(r["gain"], 6),
        }
        for r in ranking
    ]


def interpreter_callbacks(
    scratch: Path, card: Dict[str, Any]
) -> Tuple[Callable[[bytes, np.ndarray], np.ndarray], Callable[[bytes], float]]:
    """``predict`` and ``latency_ms`` for ``repair``, on the edge runner's own interpreter."""

    def load(flatbuffer: bytes) -> Classifier:
        scratch.write_bytes(embed_metadata(flatbuffer, card, card["labels"]))
        return Classifier(scratch)

    def predict(flatbuffer: bytes, pixels: np.ndarray) -> np.ndarray:
        return probabilities_of(load(flatbuffer), pixels)

    def latency_ms(flatbuffer: bytes) -> float:
        return float(invoke_latency(load(flatbuffer), runs=30)["p50_ms"])

    return predict, latency_ms

// The device's answer, as edge/answer.py decides it (a test runs both on the same
// scores): the best trained class, unless the model's own "unknown" output comes
// first or, with a floor above 0, the best class scores under it.
export function decide(scores, labels, unknownIndex, floor) {
  let best = -1, top = 0;  // the best trained class; the first highest output overall
  for (let i = 0; i < scores.length; i++) {
    if (scores[i] > scores[top]) top = i;
    if (i !== unknownIndex && (best < 0 || scores[i] > scores[best])) best = i;
  }
  const flagged = unknownIndex !== null && top === unknownIndex;
  const answered = floor <= 0 || (!flagged && scores[best] >= floor);
  return { answer: answered ? labels[best] : "unknown", best, score: scores[best], flagged };
}

// The card's unknown output and answer floor, read as edge/answer.py reads them.
export function cardRule(card, outputs) {
  const index = card?.unknown?.index;
  const unknownIndex = Number.isInteger(index) && index >= 0 && index < outputs ? index : null;
  const floor = card?.answer?.floor;
  const usable = typeof floor === "number" && !Number.isNaN(floor);
  return { unknownIndex, floor: usable ? Math.min(Math.max(floor, 0), 1.000001) : 0 };
}

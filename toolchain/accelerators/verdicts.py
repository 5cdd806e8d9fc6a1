"""What each accelerator's check says of one exported INT8 file, and when a target fails on it.

Every accelerator export records the checks in its report entry
(``"accelerators"``): the Edge TPU's documented rules (``edge.edgetpu_check``, no
compiler needed), Coral's compiler where installed (``edgetpu``), and Arm Vela's
compilation (``ethos_u``, where installed). The generic ``--target accelerator``
only records them; ``--target edgetpu`` fails when a rule is broken or the compiler
leaves an operator on the CPU, and ``--target ethos-u`` when Vela leaves any
operator on the CPU (or cannot run), because a user who names the accelerator is
told it runs there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

from edge import edgetpu_check
from edge.errors import MissingEnvironment
from edge.runtime import load_interpreter
from toolchain.accelerators import edgetpu, ethos_u
from toolchain.core.progress import Log


def verdicts(model: Path, target: str, log: Log) -> Dict[str, Any]:
    """Every check of ``model``; a compiler that is missing or fails is an error only
    for the target that names it (recorded as not checked otherwise)."""
    interpreter, _ = load_interpreter(str(model), threads=1)
    rules = edgetpu_check.check(interpreter)
    log(edgetpu_check.summary(rules))
    tpu: Dict[str, Any]
    try:
        compiler = edgetpu.find_compiler()
        if compiler is None:
            tpu = {
                "not_checked": "edgetpu_compiler is not on the PATH (Coral's apt repository "
                "has it); the documented rules are the check here"
            }
        else:
            tpu = edgetpu.compile_model(compiler, model, rules["min_edgetpu_runtime"])
            log(edgetpu.verdict_line(tpu))
    except MissingEnvironment as error:
        if target == "edgetpu":
            raise
        tpu = {"not_checked": str(error)}
        log(f"Edge TPU compiler: not checked ({error})")
    vela: Dict[str, Any]
    try:
        vela = ethos_u.check_file(model)
        log(ethos_u.verdict_line(vela))
    except MissingEnvironment as error:  # not installed, or it failed (CompilerFailed)
        if target == "ethos-u":
            raise
        vela = {"not_checked": str(error)}
        log(f"Ethos-U: not checked ({error})")
    return {"edgetpu_rules": rules, "edgetpu_compiler": tpu, "ethos_u": vela}


def target_miss(found: Dict[str, Any], target: str) -> Optional[str]:
    """Why the named accelerator would not run every op, or None. Where Coral's
    compiler ran, its verdict decides (the static rules are its stand-in)."""
    if target == "edgetpu":
        compiled = found["edgetpu_compiler"]
        if "n_ops" in compiled:
            return edgetpu.verdict_line(compiled) if compiled["cpu_ops"] else None
        if not found["edgetpu_rules"]["ok"]:
            return edgetpu_check.summary(found["edgetpu_rules"])
    if target == "ethos-u" and found["ethos_u"]["cpu_ops"]:
        return ethos_u.verdict_line(found["ethos_u"])
    return None

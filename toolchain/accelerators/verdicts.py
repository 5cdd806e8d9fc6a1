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
from edge.errors import BadInput, MissingEnvironment
from edge.runtime import load_interpreter
from toolchain.accelerators import edgetpu, ethos_u
from toolchain.core.progress import Log


def verdicts(model: Path, target: str, log: Log) -> Dict[str, Any]:
    """Both checks of ``model``; a missing Vela is an error only for ``ethos-u``."""
    interpreter, _ = load_interpreter(str(model), threads=1)
    rules = edgetpu_check.check(interpreter)
    log(edgetpu_check.summary(rules))
    compiler = edgetpu.find_compiler()
    if compiler is None:
        tpu: Dict[str, Any] = {
            "not_checked": "edgetpu_compiler is not on the PATH (Coral's apt repository has "
            "it); the documented rules are the check here"
        }
    else:
        try:
            tpu = edgetpu.compile_model(compiler, model, rules["min_edgetpu_runtime"])
            log(edgetpu.verdict_line(tpu))
        except BadInput as error:
            tpu = {"refused": str(error)}
            log(f"Edge TPU: {error}")
    try:
        vela: Dict[str, Any] = ethos_u.check_file(model)
        log(ethos_u.verdict_line(vela))
    except MissingEnvironment as error:
        if target == "ethos-u":
            raise
        vela = {"not_checked": str(error)}
        log(f"Ethos-U: not checked ({error})")
    except BadInput as error:  # Vela ran and refused the file
        vela = {"refused": str(error)}
        log(f"Ethos-U: {error}")
    return {"edgetpu_rules": rules, "edgetpu_compiler": tpu, "ethos_u": vela}


def target_miss(found: Dict[str, Any], target: str) -> Optional[str]:
    """Why the named accelerator would not run the file, or None."""
    if target == "edgetpu":
        if not found["edgetpu_rules"]["ok"]:
            return edgetpu_check.summary(found["edgetpu_rules"])
        compiled = found["edgetpu_compiler"]
        if "refused" in compiled:
            return compiled["refused"]
        if compiled.get("cpu_ops"):
            return edgetpu.verdict_line(compiled)
    vela = found["ethos_u"]
    if target == "ethos-u":
        if "refused" in vela:
            return vela["refused"]
        if vela["cpu_ops"]:
            return ethos_u.verdict_line(vela)
    return None

"""`edgetl export --target imx500`: the Raspberry Pi AI Camera. convert.py runs the steps,
verdict.py holds the result to the budget and commits it."""

"""One module per preflight subject; each defines a check with `probe()` and `assess(facts)`."""

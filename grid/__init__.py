"""The paper's grid above training and evaluation: plan it (plan.py), run its units here or on a Prefect work
pool's workers (run.py, pool.py, runs.py, claim.py), and tabulate it (tables.py, learned.py). flows/paper.py is a
thin Prefect wrapper over it; avsed/cli.py's `paper` command calls it."""

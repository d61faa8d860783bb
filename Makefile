# The project's commands (../shared/CONTRACTS.md). Each sets itself up in .venv on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test ui benchmark clean

# pip takes torch 2.14.1 / torchvision 0.29.1 from this machine's wheel store when it has one.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/mushroom-pipeline demo

# dg (dagster-dg-cli) loads the code location from [tool.dg] first: every definition under defs/
test: install
	$(BIN)/dg check defs
	$(BIN)/dg list defs --json > /dev/null
	$(BIN)/python -m pytest

# Dagster's storage created and migrated once (repaired if a concurrent start broke it), then
# the webserver and daemon, which find it ready
ui: install
	$(BIN)/mushroom-pipeline db repair-storage
	$(BIN)/mushroom-pipeline ui

benchmark: install
	$(BIN)/python benchmarks/env_daily_stats.py
	$(BIN)/python benchmarks/backfill_year.py
	$(BIN)/python benchmarks/setpoint_change_events.py
	$(BIN)/python benchmarks/hourly_setpoints.py
	$(BIN)/python benchmarks/clip_embeddings.py
	$(BIN)/python benchmarks/vector_search.py
	$(BIN)/python benchmarks/binary_copy.py
	$(BIN)/python benchmarks/new_images_tick.py
	$(BIN)/python benchmarks/image_embeddings_memory.py

clean:
	-$(BIN)/mushroom-pipeline db stop
	rm -rf .mushroom

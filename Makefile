# volsynth: `make demo` and `make test` create .venv when it is missing.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NIIVUE := src/volsynth/studio/static/vendor/niivue.js

.PHONY: setup demo test clean

setup: $(STAMP) $(NIIVUE)

# torch==2.13.0 (a CPU build on this disk) goes first: a requirement that admits a newer
# torch, asked for before it, would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The studio's viewer, NiiVue, from npm at the version pinned in studio-web/package-lock.json, copied into the
# package (git-ignored; the page loads it from the studio's own server, never from a CDN). Without npm the rest
# installs, and volsynth studio says how to get the viewer.
$(NIIVUE): studio-web/package-lock.json
	@if ! command -v npm >/dev/null 2>&1; then \
		echo "npm not found: volsynth studio has no 3D viewer until Node.js/npm is installed and make setup is rerun"; \
	elif npm ci --prefix studio-web --no-audit --no-fund --silent && mkdir -p $(dir $(NIIVUE)); then \
		cp studio-web/node_modules/@niivue/niivue/dist/index.js $(NIIVUE); \
	else echo "npm ci failed (offline?): volsynth studio has no 3D viewer until make setup is rerun online"; fi

demo: setup
	$(BIN)/volsynth demo --out demo-output

test: setup
	$(BIN)/ruff check src tests benchmarks research docs
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) demo-output .pytest_cache studio-web/node_modules $(NIIVUE)

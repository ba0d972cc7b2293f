# fer-lab: every target installs what it needs into .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fer-lab-installed
DATA ?=
PARAMS ?= $(if $(DATA),params/default.yaml,params/ci.yaml)
export NO_ALBUMENTATIONS_UPDATE := 1
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: setup lock demo test test-all lab ui bench clean postgres server server-stop

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The locked versions first, then fer-lab itself without letting pip re-resolve anything.
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e ".[dev]"
	# face-recognition's metadata asks for `dlib` (a long source build); dlib-bin above provides it prebuilt.
	$(BIN)/python -m pip install --quiet --no-deps "face-recognition==1.3.0"
	# MediaPipe (the `mediapipe` face detector, its model inside the wheel) pins numpy<2 and protobuf<5, which
	# TensorFlow 2.21 cannot share; it runs with the versions installed above, so it comes without its pins.
	$(BIN)/python -m pip install --quiet --no-deps "mediapipe==0.10.21"
	$(BIN)/python -m ipykernel install --sys-prefix --name fer-lab --display-name "fer-lab (Python 3.11)" >/dev/null
	touch $(STAMP)

lock: setup  ## rewrite requirements.lock from the installed environment (after changing pyproject.toml)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	{ sed -n '1,3p' requirements.lock; $(BIN)/python -m pip freeze --all --exclude-editable | grep -viE '^(face.recognition|fer-lab|mediapipe|pip)=='; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

demo: setup  ## the whole notebook pipeline on the embedded sample, or DATA=path on a real dataset
	$(BIN)/fer-lab run $(if $(DATA),--data $(DATA)) --params $(PARAMS)

test: setup postgres  ## the suite CI runs (under 15 minutes): everything but the tests marked extended
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-all: setup postgres  ## every test, the extended ones too (a Ray experiment, a killed sweep, all notebooks without papermill...)
	$(BIN)/python -m pytest -q -m "" $(PYTEST_ARGS)

lab: setup
	$(BIN)/jupyter lab --ip 127.0.0.1 --no-browser notebooks

ui: setup
	$(BIN)/fer-lab ui --port 5000

postgres:  ## Debian's PostgreSQL programs for `make server` and its tests (installed when missing, as root)
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } || \
	  echo "postgresql is not installed (apt-get install postgresql): make server and its tests cannot run"

server: setup postgres  ## the team tracking server: mlflow server on PostgreSQL, kept under services/
	$(BIN)/fer-lab server start $(if $(PORT),--port $(PORT)) $(if $(HOST),--host $(HOST)) $(if $(ARTIFACTS),--artifacts $(ARTIFACTS))

server-stop: setup
	$(BIN)/fer-lab server stop

bench: setup  ## speed benchmarks; DATA=path to a real dataset (default ../shared/data/fer2013)
	$(BIN)/python benchmarks/bench_faces.py --data $(or $(DATA),../shared/data/fer2013)
	$(BIN)/python benchmarks/bench_train.py --data $(or $(DATA),../shared/data/fer2013)
	$(BIN)/python benchmarks/bench_video.py --data $(or $(DATA),../shared/data/fer2013)

clean:
	rm -rf reports data/work .pytest_cache
